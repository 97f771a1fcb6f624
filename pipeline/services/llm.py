"""The LLM gateway: every model call in Newsdesk goes through `Gateway.call`.

One call renders nothing and decides nothing editorial. It takes a rendered
`Prompt` and a pydantic schema and returns a validated object of that schema,
or raises one of the typed `LLMError`s below. Around the provider it adds:

* structured output: a strict `json_schema` response format built from the
  schema, falling back to `json_object` (with the schema in the prompt) when
  config says so or the provider rejects `response_format`;
* repair: output that breaks the schema or a caller's validator is sent back
  with the exact errors, at most `llm.repair_rounds` times;
* retries (tenacity) for 429/408/409/5xx, timeouts and connection errors,
  honouring Retry-After; never for other 4xx;
* a run-level circuit breaker, a concurrency cap, a per-run cost budget;
* a request cache in the ledger and a ledger row for every call and hit.

The provider is a `Backend`. `OpenAIBackend` speaks the chat.completions API
through the official SDK (OpenAI or any compatible server); tests plug in
`pipeline.services.testing.TestModel` and everything above still runs.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Literal, Protocol, Sequence, TypeVar

from pydantic import BaseModel, RootModel, ValidationError
from sqlalchemy import delete, func, insert, select
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from pipeline.core import schema as tables
from pipeline.core.config import Config, read_secret
from pipeline.core.ledger import Ledger, conflict_insert, stable_hash, utcnow
from pipeline.core.prompts import Prompt
from pipeline.core.tokens import count_messages, count_tokens
from pipeline.core.logs import redact as redact_registered
from pipeline.core.slots import SharedSlots

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Validator = Callable[[Any], list[str]]
Outcome = Literal["ok", "invalid", "truncated", "refused", "error", "budget", "circuit_open"]
Mode = Literal["json_schema", "json_object"]

# Tests set this to False (tests/conftest.py): a real provider request then fails loudly.
# pipeline.services.testing.TestModel ignores it, it never leaves the process.
ALLOW_MODEL_REQUESTS = True

RETRY_AFTER_CAP_S = 60.0
PLACEHOLDER_API_KEY = "no-key"  # local OpenAI-compatible servers ignore the key, the SDK wants one
RETRYABLE_STATUS = frozenset({408, 409, 429})


# --- errors ------------------------------------------------------------------------------


class LLMError(Exception):
    """Any failure of a model call. Messages are meant for stage reports and never hold secrets."""


class NoModelConfigured(LLMError):
    """Neither an API key nor a base_url: stages take their offline path."""


class UnsupportedSchema(LLMError):
    """A response schema that cannot be expressed as strict structured output."""


class InvalidOutput(LLMError):
    """The output still broke the schema or a validator after every repair round."""

    def __init__(self, message: str, errors: list[str], output: BaseModel | None = None, raw: str | None = None):
        super().__init__(message)
        self.errors = errors
        self.output = output  # the last schema-valid object, if the schema held and only validators failed
        self.raw = raw


class OutputTruncated(LLMError):
    """The model hit its token limit (finish_reason "length") before finishing the JSON."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


class Refused(LLMError):
    """The model declined to answer (message.refusal)."""

    def __init__(self, message: str, refusal: str):
        super().__init__(message)
        self.refusal = refusal


class ProviderError(LLMError):
    """The provider did not give an answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ProviderUnavailable(ProviderError):
    """A transient failure (429, 5xx, timeout, connection): retried, raised once retries are spent."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


class RequestRejected(ProviderError):
    """The provider refused the request itself (400/401/403/404/422): never retried."""


class CircuitOpen(LLMError):
    """Too many consecutive failed calls this run; no more calls are made."""


class BudgetExceeded(LLMError):
    """The run's LLM budget (llm.run_budget_usd) is spent."""


class ModelRequestsBlocked(RuntimeError):
    """A real provider request while pipeline.services.llm.ALLOW_MODEL_REQUESTS is False.

    Deliberately not an LLMError: stages catch LLMError to fall back to their
    offline path, and this must fail the test instead of being absorbed.
    """


def first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (possibly nested) exception groups: the one that says what went wrong."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


# --- the backend interface ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelRequest:
    role: str
    model: str
    messages: list[dict[str, str]]
    schema: type[BaseModel]
    json_schema: dict[str, Any]  # the strict schema sent in json_schema mode, or the plain one in the prompt
    mode: Mode
    max_tokens: int | None = None

    @property
    def schema_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.schema.__name__)[:64]


@dataclass
class ModelReply:
    content: str | None = None
    finish_reason: str | None = "stop"
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None


class Backend(Protocol):
    """Where requests go. Raise ProviderUnavailable (retried) or RequestRejected (not retried)."""

    async def complete(self, request: ModelRequest) -> ModelReply: ...


# --- the OpenAI client ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    api_key: str | None
    base_url: str | None

    @property
    def configured(self) -> bool:
        return bool(self.api_key or self.base_url)


def resolve_endpoint(config: Config) -> Endpoint:
    """Key and base URL from config, then the SDK's own environment variables. Config wins."""
    llm = config.llm
    key_file = config.path(llm.api_key_file) if llm.api_key_file else None
    key = read_secret(llm.api_key_env, key_file) or read_secret("OPENAI_API_KEY")
    base_url = llm.base_url or os.environ.get("OPENAI_BASE_URL") or None
    return Endpoint(api_key=key, base_url=base_url)


def make_client(config: Config, http_client: Any = None):
    """The one place an AsyncOpenAI client is built.

    `http_client` may be an `httpx.AsyncClient` (the SDK accepts legacy httpx
    clients beside its own httpx2; respx intercepts only those) or an
    `httpx2.AsyncClient`. The SDK's retries are off: the gateway retries.
    """
    from openai import AsyncOpenAI

    endpoint = resolve_endpoint(config)
    if not endpoint.configured:
        raise NoModelConfigured(NO_MODEL_MESSAGE)
    return AsyncOpenAI(
        api_key=endpoint.api_key or PLACEHOLDER_API_KEY,
        base_url=endpoint.base_url,
        organization=config.llm.organization,
        timeout=config.llm.timeout,
        max_retries=0,
        http_client=http_client,
    )


NO_MODEL_MESSAGE = (
    "no model configured: set OPENAI_API_KEY (or the variable named by llm.api_key_env, or llm.api_key_file) "
    "for OpenAI, or llm.base_url for an OpenAI-compatible server"
)


class OpenAIBackend:
    """chat.completions through the official SDK, errors mapped to the gateway's types."""

    def __init__(self, client: Any = None, client_factory: Callable[[], Any] | None = None, secrets: Sequence[str] = ()):
        if client is None and client_factory is None:
            raise ValueError("OpenAIBackend needs a client or a client_factory")
        self._client = client
        self._factory = client_factory
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._secrets = [s for s in secrets if s]
        self._token_param = "max_tokens"

    def _endpoint(self, client) -> str:
        """The server a request went to, without any credentials in the URL."""
        url = str(getattr(client, "base_url", "") or "the provider").rstrip("/")
        return self._redact(re.sub(r"//[^/@]*@", "//", url))

    def _client_for_loop(self):
        # An SDK client's connection pool belongs to one event loop; a factory-made client is
        # rebuilt when called from a new loop (asyncio.run per CLI stage, call_sync).
        loop = asyncio.get_running_loop()
        if self._factory is not None and (self._client is None or self._client_loop is not loop):
            self._client = self._factory()
            self._client_loop = loop
        return self._client

    async def complete(self, request: ModelRequest) -> ModelReply:
        if not ALLOW_MODEL_REQUESTS:
            raise ModelRequestsBlocked(
                f"real model request ({request.role} -> {request.model}) while pipeline.services.llm.ALLOW_MODEL_REQUESTS "
                "is False; use pipeline.services.testing.TestModel, or allow requests for this test"
            )
        import openai

        client = self._client_for_loop()
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "strict": True, "schema": request.json_schema},
            }
        else:
            kwargs["response_format"] = {"type": "json_object"}
        for _ in range(2):  # a second pass only to switch the max-tokens parameter name
            if request.max_tokens is not None:
                kwargs.pop("max_tokens", None)
                kwargs.pop("max_completion_tokens", None)
                kwargs[self._token_param] = request.max_tokens
            try:
                completion = await client.chat.completions.create(**kwargs)
                break
            except openai.APIStatusError as exc:
                error = self._status_error(exc)
                if (
                    request.max_tokens is not None
                    and self._token_param == "max_tokens"
                    and isinstance(error, RequestRejected)
                    and "max_completion_tokens" in str(error)
                ):
                    self._token_param = "max_completion_tokens"  # newer OpenAI models reject max_tokens
                    continue
                raise error from None
            except openai.APITimeoutError:
                raise ProviderUnavailable(f"request timed out after {client.timeout}s") from None
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                raise ProviderUnavailable(f"cannot reach the model server at {self._endpoint(client)}: {self._redact(str(cause))}") from None
            except ExceptionGroup as group:
                # The HTTP stack's task group (anyio's connect) can let errors out unwrapped by the SDK, e.g. a port
                # out of range: one line naming the endpoint; an address that can never work is not retried.
                leaf = first_leaf(group)
                message = f"cannot reach the model server at {self._endpoint(client)}: {type(leaf).__name__}: {self._redact(str(leaf))}"
                if isinstance(leaf, (OverflowError, ValueError, TypeError)):
                    raise RequestRejected(message) from None
                raise ProviderUnavailable(message) from None
            except (ValueError, openai.APIResponseValidationError) as exc:
                # A 200 whose body is not a chat completion (a proxy error page, a cut-off body).
                raise ProviderUnavailable(f"malformed response from the provider: {self._redact(str(exc))[:200]}") from None
        if not completion.choices:
            raise ProviderUnavailable("the provider returned no choices")
        choice = completion.choices[0]
        usage = completion.usage
        content = choice.message.content
        return ModelReply(
            content=content,
            finish_reason=choice.finish_reason,
            refusal=getattr(choice.message, "refusal", None),
            prompt_tokens=usage.prompt_tokens if usage else count_messages(request.messages, request.model),
            completion_tokens=usage.completion_tokens if usage else count_tokens(content or "", request.model),
            model=completion.model,
        )

    async def aclose(self) -> None:
        client, self._client = self._client, (None if self._factory else self._client)
        if client is None:
            return
        if self._factory is not None and self._client_loop is not asyncio.get_running_loop():
            return  # made on a loop that has ended; its connections went with it
        await client.close()

    def _status_error(self, exc) -> ProviderError:
        status = exc.status_code
        detail = self._redact(_error_detail(exc))
        message = f"provider answered HTTP {status}: {detail}"
        if status in RETRYABLE_STATUS or status >= 500:
            return ProviderUnavailable(message, status=status, retry_after=parse_retry_after(exc.response.headers))
        return RequestRejected(message, status=status)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


def _error_detail(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", exc))


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms / Retry-After (seconds or an HTTP date), capped."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value) if name == "retry-after" else None
            except (TypeError, ValueError):
                parsed = None
            if parsed is None:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            seconds = (parsed - datetime.now(timezone.utc)).total_seconds()
        if math.isnan(seconds):
            continue
        return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)
    return None


_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,})")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without the given secrets or anything shaped like an OpenAI key."""

    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    # Also every secret the CLI registered (Google keys, tokens) and credential shapes.
    return redact_registered(_KEY_LIKE.sub("sk-***", text))


# --- strict schemas ------------------------------------------------------------------------

# OpenAI strict structured output takes these constraint keywords, and a grammar-constrained
# server (vLLM, llama.cpp) enforces them while decoding: they stay in the schema itself. Only
# string formats on the provider's list stay; others (uri, …) would be rejected there.
_STRICT_KEYWORDS = {
    "string": ("pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "array": ("minItems", "maxItems"),
}
_STRICT_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
# Keywords strict mode does not take (or takes on another type than here); pydantic still enforces
# them after the reply, and they are kept as a hint in the description so the model aims for them.
_HINTED_KEYWORDS = (
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
)
_DROPPED_KEYWORDS = ("title", "default", "examples", "discriminator", "readOnly", "writeOnly", "deprecated")


def plain_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    _check_model(model)
    return model.model_json_schema()


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAI-strict form of a pydantic model's schema: every object closed
    (additionalProperties false) with all properties required (Optional fields stay
    nullable), unions as anyOf. Constraints strict mode accepts stay in the schema, so a
    constrained decoder enforces them (enums, patterns, supported formats, number bounds,
    item counts); the others (string lengths, uniqueItems, property counts) move into the
    description as a hint."""
    _check_model(model)
    return _strictify(model.model_json_schema(), path=model.__name__)


def _check_model(model: Any) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or issubclass(model, RootModel):
        raise UnsupportedSchema(f"response schema must be a pydantic BaseModel with fields, got {model!r}")


def _strictify(node: Any, path: str) -> Any:
    if isinstance(node, list):
        return [_strictify(item, f"{path}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    hints = []
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key in _HINTED_KEYWORDS and not _strict_accepts(node, key, value):
            hints.append(f"{key} {json.dumps(value)}")
            continue
        if key == "$defs":
            out[key] = {name: _strictify(sub, name) for name, sub in value.items()}
        elif key == "properties":
            out[key] = {name: _strictify(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("anyOf", "oneOf"):
            out["anyOf"] = [_strictify(sub, path) for sub in value]
        elif key == "allOf" and len(value) == 1:
            out.update(_strictify(value[0], path))
        elif key == "const":
            out["enum"] = [value]
        elif key in ("items", "additionalProperties", "prefixItems", "not"):
            out[key] = _strictify(value, f"{path}[]")
        else:
            out[key] = value
    if "$ref" in out:
        return {"$ref": out["$ref"]}  # strict mode takes no siblings next to $ref
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object:
        extra = out.get("additionalProperties")
        if isinstance(extra, dict) or not out.get("properties"):
            raise UnsupportedSchema(
                f"{path}: a free-form mapping (dict or untyped object) cannot be strict structured output; "
                "use a list of objects with named fields"
            )
        out["additionalProperties"] = False
        out["required"] = list(out["properties"])
    if not out and path and "$defs" not in node:
        raise UnsupportedSchema(f"{path}: an untyped value (Any) cannot be strict structured output")
    if hints:
        note = "Constraints: " + ", ".join(hints) + "."
        out["description"] = f"{out['description']} {note}" if out.get("description") else note
    return out


def _strict_accepts(node: dict[str, Any], key: str, value: Any) -> bool:
    """Whether strict mode takes `key` on this node: only on a node of one type that takes it."""
    kind = node.get("type")
    kinds = [k for k in kind if k != "null"] if isinstance(kind, list) else [kind]
    if len(kinds) != 1 or key not in _STRICT_KEYWORDS.get(kinds[0], ()):
        return False
    return key != "format" or value in _STRICT_FORMATS


# --- accounting -------------------------------------------------------------------------------


@dataclass
class RunTotals:
    """What the gateway spent this run, for stage reports."""

    calls: int = 0  # requests that reached the provider
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, outcome: str, prompt_tokens: int, completion_tokens: int, cost: float, call: bool, hit: bool) -> None:
        self.calls += int(call)
        self.cache_hits += int(hit)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> str:
        return (
            f"{self.calls} LLM call(s), {self.cache_hits} cache hit(s), {self.tokens} tokens "
            f"({self.prompt_tokens} in / {self.completion_tokens} out), ${self.cost_usd:.4f}"
        )


# --- the gateway --------------------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[None]]


class Gateway:
    """All model calls of one run. Create one per run; it is safe to share across tasks."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        run_id: str | None = None,
        client: Any = None,
        *,
        backend: Backend | None = None,
        http_client: Any = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.run_id = run_id
        self.llm = config.llm
        self._sleep = sleep or asyncio.sleep
        endpoint = resolve_endpoint(config)
        self._secrets = [endpoint.api_key] if endpoint.api_key else []
        if backend is not None:
            self.backend: Backend | None = backend
        elif client is not None:
            self.backend = OpenAIBackend(client=client, secrets=self._secrets)
        elif config.llm.offline:
            self.backend = None  # llm.offline: never call a model, even with a key in the environment
        elif endpoint.configured:
            self.backend = OpenAIBackend(
                client_factory=lambda: make_client(config, http_client=http_client), secrets=self._secrets
            )
        else:
            self.backend = None
        self.totals = RunTotals()
        self.totals_by_stage: dict[str, RunTotals] = {}  # keyed by the `stage` passed to call ("" if none)
        self._modes: dict[str, Mode] = {}  # per model, what structured output the provider takes
        self._consecutive_failures = 0
        self._circuit_reason: str | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._warned_prices: set[str] = set()
        self._spent_before = self._spent_in_ledger()
        # cluster.enabled: other workers work (and spend for) this same run; the concurrency cap and the
        # budget are the ledger's, shared by all of them (pipeline/core/slots.py).
        self._shared = config.cluster.enabled
        self._shared_slots = None

    # --- state --------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False when no model is configured: stages take their offline path."""
        return self.backend is not None

    @property
    def unavailable_reason(self) -> str | None:
        if self.available:
            return None
        return "llm.offline = true in config: every stage uses its offline path" if self.llm.offline else NO_MODEL_MESSAGE

    @property
    def circuit_open(self) -> bool:
        return self._circuit_reason is not None

    @property
    def spent_usd(self) -> float:
        return self._spent_before + self.totals.cost_usd

    def model_for(self, role: str) -> str:
        """The model for a role; the writer uses the active fine-tuned model when one is set."""
        if role == "writer":
            active = self.ledger.get_setting("writer_model")
            if isinstance(active, dict):
                active = active.get("model")
            if isinstance(active, str) and active.strip():
                return active.strip()
        try:
            return self.llm.models[role]
        except KeyError:
            raise LLMError(f"unknown LLM role {role!r}; roles in llm.models: {', '.join(self.llm.models)}") from None

    def price_for(self, model: str):
        """Config price of `model`: exact name, the base of a fine-tuned ft:... name, or a dated snapshot."""
        prices = self.llm.prices
        if model in prices:
            return prices[model]
        base = model.split(":")[1] if model.startswith("ft:") and ":" in model[3:] else model
        candidates = [name for name in prices if base == name or base.startswith(name + "-")]
        if candidates:
            return prices[max(candidates, key=len)]
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.price_for(model)
        if price is None:
            if model not in self._warned_prices:
                self._warned_prices.add(model)
                log.warning("no price for model %s in llm.prices; its calls are counted at $0", model)
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000

    # --- calls ----------------------------------------------------------------------

    async def call(
        self,
        role: str,
        prompt: Prompt,
        schema: type[T],
        validators: Sequence[Validator] = (),
        stage: str | None = None,
        max_tokens: int | None = None,
    ) -> T:
        """A validated `schema` object for `prompt`, or a typed LLMError."""
        if self.backend is None:
            raise NoModelConfigured(NO_MODEL_MESSAGE)
        model = self.model_for(role)
        mode = self._mode_for(model, schema)
        context = _CallContext(role=role, stage=stage, model=model, prompt=prompt)
        plain = plain_json_schema(schema)
        cache_key = stable_hash(model, prompt.messages, plain)
        use_cache = role not in self.llm.cache_disabled_roles

        if use_cache:
            cached = self._cache_get(cache_key)
            if cached is not None:
                obj, errors = self._validate(cached, schema, validators)
                if obj is not None and not errors:
                    self._record(context, cache_key, prompt.messages, cached, "ok", cache_hit=True)
                    return obj

        messages = [dict(m) for m in prompt.messages]
        last_errors: list[str] = []
        last_obj: BaseModel | None = None
        for round_number in range(self.llm.repair_rounds + 1):
            reply, mode, sent = await self._request(context, messages, schema, mode, max_tokens)
            request_hash = stable_hash(model, sent, plain)
            if reply.refusal:
                self._record(context, request_hash, sent, reply.refusal, "refused", reply=reply)
                raise Refused(f"{role} model refused: {reply.refusal[:300]}", reply.refusal)
            if reply.finish_reason == "length":
                self._record(context, request_hash, sent, reply.content, "truncated", reply=reply)
                limit = f"max_tokens={max_tokens}" if max_tokens else "the model's output limit"
                raise OutputTruncated(
                    f"{role} output was cut off at {reply.completion_tokens} tokens ({limit}); "
                    f"the {schema.__name__} JSON is incomplete",
                    raw=reply.content,
                )
            obj, errors = self._validate(reply.content or "", schema, validators)
            if obj is not None and not errors:
                # The call's row and its cache entry land together: a kill between them would pay twice.
                self._record(context, request_hash, sent, reply.content, "ok", reply=reply,
                             cache_key=cache_key if use_cache else None)
                return obj
            self._record(context, request_hash, sent, reply.content, "invalid", reply=reply, error="; ".join(errors))
            last_errors, last_obj = errors, obj if obj is not None else last_obj
            messages = messages + [
                {"role": "assistant", "content": reply.content or ""},
                {"role": "user", "content": repair_message(errors)},
            ]
        raise InvalidOutput(
            f"{role} output for {schema.__name__} still invalid after {self.llm.repair_rounds} repair round(s): "
            + "; ".join(last_errors[:5]),
            errors=last_errors,
            output=last_obj,
            raw=messages[-2]["content"] if len(messages) >= 2 else None,
        )

    def call_sync(self, role: str, prompt: Prompt, schema: type[T], **kwargs: Any) -> T:
        """`call` for synchronous code; runs on the gateway's own event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise LLMError("call_sync was used inside a running event loop; await gateway.call(...) instead")
        if self._sync_loop is None or self._sync_loop.is_closed():
            self._sync_loop = asyncio.new_event_loop()
        return self._sync_loop.run_until_complete(self.call(role, prompt, schema, **kwargs))

    async def aclose(self) -> None:
        """Close the provider client's connections (the gateway can still be asked for totals)."""
        closer = getattr(self.backend, "aclose", None)
        if closer is not None:
            await closer()

    def close(self) -> None:
        """For synchronous users: close the client on the loop call_sync used, then that loop."""
        if self._shared_slots is not None:
            self._shared_slots.close()
        if self._sync_loop is not None and not self._sync_loop.is_closed():
            self._sync_loop.run_until_complete(self.aclose())
            self._sync_loop.close()

    # --- one provider request, with budget, breaker, retries and the concurrency cap ---------

    async def _request(
        self, context: _CallContext, messages: list[dict[str, str]], schema: type[BaseModel], mode: Mode, max_tokens
    ) -> tuple[ModelReply, Mode, list[dict[str, str]]]:
        model = context.model
        while True:
            sent = with_schema_instructions(messages, schema) if mode == "json_object" else messages
            json_schema = strict_json_schema(schema) if mode == "json_schema" else plain_json_schema(schema)
            request = ModelRequest(context.role, model, sent, schema, json_schema, mode, max_tokens)
            request_hash = stable_hash(model, sent, plain_json_schema(schema))
            self._refuse_if_circuit_open(context, request_hash, sent)
            if self._shared and self.run_id is not None:  # every worker's spend on this run so far
                self._spent_before = self._spent_in_ledger() - self.totals.cost_usd
            if self.price_for(model) is not None and self.spent_usd >= self.llm.run_budget_usd:
                message = (
                    f"LLM budget for this run is spent: ${self.spent_usd:.4f} of ${self.llm.run_budget_usd:.2f} "
                    f"(llm.run_budget_usd) after {self.totals.calls} call(s); work done so far is kept"
                )
                self._record(context, request_hash, sent, None, "budget", error=message)
                raise BudgetExceeded(message)
            started = time.perf_counter()
            try:
                async with self._limiter():
                    self._refuse_if_circuit_open(context, request_hash, sent)  # it may have opened meanwhile
                    if self._shared:
                        async with self._ledger_slots().hold():
                            reply = await self._with_retries(request)
                    else:
                        reply = await self._with_retries(request)
            except ProviderError as exc:
                latency = (time.perf_counter() - started) * 1000
                if mode == "json_schema" and self.llm.structured_output == "auto" and _rejects_response_format(exc):
                    self._record(context, request_hash, sent, None, "error", error=str(exc), latency_ms=latency)
                    log.warning("%s rejects json_schema output (%s); using json_object for this run", model, exc)
                    self._modes[model] = mode = "json_object"
                    continue
                self._record(context, request_hash, sent, None, "error", error=str(exc), latency_ms=latency)
                self._note_failure(exc)
                raise
            self._consecutive_failures = 0
            context.latency_ms = (time.perf_counter() - started) * 1000
            return reply, mode, sent

    def _refuse_if_circuit_open(self, context: _CallContext, request_hash: str, sent: list[dict[str, str]]) -> None:
        if self._circuit_reason is not None:
            self._record(context, request_hash, sent, None, "circuit_open", error=self._circuit_reason)
            raise CircuitOpen(self._circuit_reason)

    async def _with_retries(self, request: ModelRequest) -> ModelReply:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.llm.max_retries + 1),
            retry=retry_if_exception_type(ProviderUnavailable),
            wait=_wait_for_retry,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                timeout = self.llm.timeout * 2 + 1  # the SDK times out first; this only stops a stuck backend
                try:
                    return await asyncio.wait_for(self.backend.complete(request), timeout)
                except asyncio.TimeoutError:
                    raise ProviderUnavailable(f"no answer within {timeout:.0f}s") from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _limiter(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.llm.concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    def _ledger_slots(self):
        """llm.concurrency slots in the ledger, shared by every worker (a dead worker's slot frees after its lease)."""
        if self._shared_slots is None:
            self._shared_slots = SharedSlots(self.ledger, "llm", self.llm.concurrency,
                                             lease=timedelta(seconds=self.config.cluster.lease_s))
        return self._shared_slots

    def _note_failure(self, exc: ProviderError) -> None:
        self._consecutive_failures += 1
        if exc.status == 401:
            self._circuit_reason = f"the provider rejected the API key (HTTP 401); no more LLM calls this run: {exc}"
        elif self._consecutive_failures >= self.llm.breaker_failures:
            self._circuit_reason = (
                f"LLM circuit open after {self._consecutive_failures} consecutive failed calls "
                f"(last: {exc}); no more LLM calls this run"
            )

    def _mode_for(self, model: str, schema: type[BaseModel]) -> Mode:
        if self.llm.structured_output == "json_object":
            return "json_object"
        if model in self._modes:
            return self._modes[model]
        try:
            strict_json_schema(schema)
        except UnsupportedSchema:
            if self.llm.structured_output == "json_schema":
                raise
            return "json_object"  # the schema itself cannot be strict; validate after instead
        return "json_schema"

    # --- validation -----------------------------------------------------------------------

    @staticmethod
    def _validate(content: str, schema: type[T], validators: Sequence[Validator]) -> tuple[T | None, list[str]]:
        text = strip_code_fence(content)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return None, [f"the reply is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        try:
            obj = schema.model_validate(data)
        except ValidationError as exc:
            return None, [_describe_error(error) for error in exc.errors(include_url=False)]
        problems: list[str] = []
        for validator in validators:
            problems.extend(str(p) for p in (validator(obj) or []))
        return obj, problems

    # --- ledger ------------------------------------------------------------------------------

    def _record(
        self,
        context: _CallContext,
        request_hash: str,
        messages: list[dict[str, str]],
        response: str | None,
        outcome: Outcome,
        *,
        reply: ModelReply | None = None,
        cache_hit: bool = False,
        error: str | None = None,
        latency_ms: float | None = None,
        cache_key: str | None = None,
    ) -> None:
        prompt_tokens = reply.prompt_tokens if reply else 0
        completion_tokens = reply.completion_tokens if reply else 0
        cost = self.cost(context.model, prompt_tokens, completion_tokens) if reply else 0.0
        reached_provider = (reply is not None or outcome == "error") and not cache_hit
        for totals in (self.totals, self.totals_by_stage.setdefault(context.stage or "", RunTotals())):
            totals.add(outcome, prompt_tokens, completion_tokens, cost, call=reached_provider, hit=cache_hit)
        if latency_ms is None:
            latency_ms = context.latency_ms if reply else 0.0
        row = {
            "run_id": self.run_id,
            "stage": context.stage,
            "role": context.role,
            "model": context.model,
            "prompt_template": context.prompt.name,
            "prompt_version": context.prompt.version,
            "prompt_hash": stable_hash(context.prompt.messages),
            "request_hash": request_hash,
            "prompt": redact(json.dumps(messages, ensure_ascii=False), self._secrets),
            "response": redact(response, self._secrets) if response is not None else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
            "latency_ms": latency_ms,
            "outcome": outcome,
            "error": redact(error, self._secrets) if error else None,
            "cache_hit": cache_hit,
            "created": utcnow(),
        }
        with self.ledger.begin() as connection:
            connection.execute(insert(tables.llm_calls).values(**row))
            if cache_key is not None and reply is not None:
                _cache_upsert(connection, cache_key, context.model, reply)

    def _spent_in_ledger(self) -> float:
        if self.run_id is None:
            return 0.0
        with self.ledger.engine.connect() as connection:
            spent = connection.execute(
                select(func.coalesce(func.sum(tables.llm_calls.c.cost_usd), 0.0)).where(
                    tables.llm_calls.c.run_id == self.run_id
                )
            ).scalar_one()
        return float(spent)

    def _cache_get(self, key: str) -> str | None:
        with self.ledger.engine.connect() as connection:
            row = connection.execute(
                select(tables.llm_cache.c.response).where(tables.llm_cache.c.request_hash == key)
            ).first()
        return None if row is None else row[0]


def _cache_upsert(connection, key: str, model: str, reply: ModelReply) -> None:
    """Insert or refresh a cache entry in one statement (the same request may finish twice concurrently)."""
    values = {
        "model": model,
        "response": reply.content or "",
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "created": utcnow(),
    }
    upsert = conflict_insert(connection, tables.llm_cache)
    if upsert is None:
        connection.execute(delete(tables.llm_cache).where(tables.llm_cache.c.request_hash == key))
        connection.execute(insert(tables.llm_cache).values(request_hash=key, **values))
        return
    statement = upsert.values(request_hash=key, **values)
    connection.execute(statement.on_conflict_do_update(index_elements=["request_hash"], set_=values))


@dataclass
class _CallContext:
    role: str
    stage: str | None
    model: str
    prompt: Prompt
    latency_ms: float = 0.0


# --- helpers -------------------------------------------------------------------------------------


def repair_message(errors: Sequence[str]) -> str:
    listed = "\n".join(f"- {error}" for error in errors)
    return (
        "Your previous reply did not meet the requirements:\n"
        f"{listed}\n"
        "Reply again with the complete, corrected JSON object only."
    )


def with_schema_instructions(messages: list[dict[str, str]], schema: type[BaseModel]) -> list[dict[str, str]]:
    """Messages for json_object mode: the schema goes into the system message (which must say JSON)."""
    instruction = (
        "Respond with a single JSON object only (no prose, no code fences) that conforms to this JSON schema:\n"
        + json.dumps(plain_json_schema(schema), ensure_ascii=False)
    )
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{instruction}"
    else:
        out.insert(0, {"role": "system", "content": instruction})
    return out


def _wait_for_retry(retry_state) -> float:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    return _backoff(retry_state)


_backoff = wait_random_exponential(multiplier=0.5, max=20)


def _rejects_response_format(exc: ProviderError) -> bool:
    if not isinstance(exc, RequestRejected) or exc.status not in (400, 422):
        return False
    text = str(exc).lower()
    return any(word in text for word in ("response_format", "json_schema", "structured output", "response format"))


def strip_code_fence(text: str) -> str:
    """A reply's JSON without the Markdown fence some models wrap it in."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = re.sub(r"^```[A-Za-z]*\s*", "", stripped)
        stripped = re.sub(r"\s*```$", "", stripped)
    return stripped


def _describe_error(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(the object)"
    message = error["msg"]
    given = error.get("input")
    if error["type"] == "missing":
        return f"{location}: field required"
    shown = json.dumps(given, ensure_ascii=False, default=str) if not isinstance(given, (dict, list)) else None
    if shown is not None and len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{location}: {message}" + (f" (got {shown})" if shown is not None else "")


__all__ = [
    "ALLOW_MODEL_REQUESTS",
    "Backend",
    "BudgetExceeded",
    "CircuitOpen",
    "Gateway",
    "InvalidOutput",
    "LLMError",
    "ModelReply",
    "ModelRequest",
    "ModelRequestsBlocked",
    "NoModelConfigured",
    "OpenAIBackend",
    "OutputTruncated",
    "ProviderError",
    "ProviderUnavailable",
    "Refused",
    "RequestRejected",
    "RunTotals",
    "UnsupportedSchema",
    "make_client",
    "parse_retry_after",
    "redact",
    "repair_message",
    "resolve_endpoint",
    "strict_json_schema",
]
