"""Newsdesk configuration: `config.toml` loaded into strict pydantic models.

Every section forbids unknown keys, so a typo stops the run before anything
happens, with one message that names the key, what was wrong and what is
allowed. Relative paths resolve against the config file's folder. Secrets are
never config values: config names the environment variable or file that holds
them.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pipeline.core.language_tags import check_tag

DEFAULT_CONFIG = "config.toml"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(Exception):
    """A config file that cannot be used. The message is meant for the operator."""


def check_http_url(value: str) -> str:
    """An http(s) URL with a host and, if it names one, a port from 1 to 65535; the message says what is wrong."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https"):
        got = f"{parts.scheme}://" if "://" in value else "no http:// or https:// in front"
        raise ValueError(f"must be an http:// or https:// URL, got {got}")
    host_port = parts.netloc.rpartition("@")[2]
    if not parts.hostname:
        raise ValueError("the URL has no host name")
    port = host_port.rpartition("]")[2].partition(":")[2] if host_port.startswith("[") else host_port.partition(":")[2]
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, got {port}")
    return value.strip()


def _optional_http_url(value: str | None) -> str | None:
    return None if value is None else check_http_url(value)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Newsroom(Section):
    name: str = "Newsdesk"
    data_dir: Path = Path("data")
    timezone: str = "UTC"
    # BCP 47 tag ("en", "de", "pt-BR"): every draft is written in it, whatever the sources' languages.
    language: str = "en"
    # Content leads may keep their own copies; the defaults are the ones shipped with Newsdesk.
    prompts_dir: Path | None = None
    templates_dir: Path | None = None
    # House rules given to the writer and reviser (Markdown, one "- " line per rule); sync appends corrections
    # editors made on house_rule_after drafts or more (pipeline/core/corrections.py).
    house_rules: Path = Path("house_rules.md")
    house_rule_after: int = Field(default=3, ge=2, le=100)

    @field_validator("language")
    @classmethod
    def _language_tag(cls, value: str) -> str:
        return check_tag(value)


class Feed(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(min_length=1, description="http(s) URL, or a path to a local feed file")
    topics: list[str] = []
    weight: float = Field(default=1.0, ge=0, le=10)
    # auto: use the feed's full content when long enough, else fetch the page;
    # feed: never fetch pages; page: always fetch and extract the page.
    full_text: Literal["auto", "feed", "page"] = "auto"
    enabled: bool = True

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("http://", "https://", "file://")):
            raise ValueError(f"only http(s) URLs or local file paths are allowed, got {value.split('://')[0]}://")
        if value.startswith(("http://", "https://")):
            return check_http_url(value)
        return value


class Topic(Section):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9_\-]+$")
    description: str = Field(min_length=1)
    keywords: list[str] = []
    weight: float = Field(default=1.0, ge=0, le=10)


class Job(Section):
    cron: str = Field(description="five-field cron expression")
    stages: list[Literal["fetch", "classify", "draft", "check", "publish", "sync"]]

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {value!r}")
        return value


class Schedule(Section):
    timezone: str = "UTC"
    misfire_grace_time: int = Field(default=300, ge=1)
    jobs: dict[str, Job] = {
        "ingest": Job(cron="*/15 * * * *", stages=["fetch", "classify"]),
        "write": Job(cron="0 7,12,17 * * *", stages=["draft", "check", "publish"]),
        "sync": Job(cron="*/30 * * * *", stages=["sync"]),
    }


class Price(Section):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    training: float = Field(default=0.0, ge=0)


Role = Literal["classifier", "writer", "reviser", "judge"]


class LLM(Section):
    # true: never call a model, every stage takes its offline path (the demo's default).
    offline: bool = False
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: Path | None = None
    organization: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=10)
    concurrency: int = Field(default=8, ge=1, le=64)
    repair_rounds: int = Field(default=1, ge=0, le=5)
    structured_output: Literal["auto", "json_schema", "json_object"] = "auto"
    run_budget_usd: float = Field(default=5.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    # Failed model attempts on one item before the classifier takes its offline path for it, for good.
    max_classify_attempts: int = Field(default=2, ge=1, le=10)
    models: dict[Role, str] = {
        "classifier": "gpt-4o-mini",
        "writer": "gpt-4o-mini",
        "reviser": "gpt-4o-mini",
        "judge": "gpt-4o-mini",
    }
    context_windows: dict[str, int] = {"gpt-4o-mini": 128_000, "gpt-4o": 128_000}
    default_context_window: int = Field(default=8192, ge=1024)
    prices: dict[str, Price] = {
        "gpt-4o-mini": Price(input=0.15, output=0.60, training=3.0),
        "gpt-4o": Price(input=2.50, output=10.0, training=25.0),
    }
    cache_disabled_roles: list[Role] = []

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return _optional_http_url(value)

    @field_validator("models", mode="before")
    @classmethod
    def _roles_default_to_base(cls, value: Any) -> Any:
        # Naming only the writer (say, a fine-tuned model) keeps the defaults for the other roles.
        if isinstance(value, dict):
            return {**cls.model_fields["models"].default, **value}
        return value

    def context_window(self, model: str) -> int:
        return self.context_windows.get(model, self.default_context_window)


class Embedding(Section):
    provider: Literal["local", "openai"] = "local"
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(default=32, ge=1, le=1024)


class Store(Section):
    path: Path = Path("data/chroma")
    host: str | None = Field(default=None, description="host name of a Chroma server; the port and TLS are separate keys")

    @field_validator("host")
    @classmethod
    def _host_only(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or value.count(":") == 1 or not value.strip()):
            raise ValueError("give only the Chroma server's host name; its port and TLS are store.port and store.ssl")
        return value
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    collection: str = Field(default="newsdesk_chunks", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{1,61}[A-Za-z0-9]$")
    chunk_tokens: int = Field(default=250, ge=50, le=2000)


class Ledger(Section):
    url: str = "sqlite:///data/ledger.sqlite"
    busy_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError) as exc:
            # A port that is not a number fails here; the message quotes the URL, which may hold a password.
            raise ValueError("not a database URL such as sqlite:///data/ledger.sqlite or postgresql+psycopg://user@host/db"
                             + (": the port must be a number from 1 to 65535" if "port" in str(exc).lower() else "")) from None
        if url.port is not None and not 1 <= url.port <= 65535:
            raise ValueError(f"the port must be a number from 1 to 65535, got {url.port}")
        return value


class Google(Section):
    credentials_file: Path | None = None
    token_file: Path | None = None
    folder_id: str | None = None
    approved_folder_id: str | None = None
    approved_title_prefix: str = "[APPROVED]"
    editors: list[str] = []
    notify_editors: bool = False
    # Who is assigned each fact-check comment: a topic's editor from topic_editors when the draft's story has
    # that topic, else the editor on duty that day ("rotation": editors in turn, one per day of the draft in
    # newsroom.timezone), or nobody ("none").
    on_duty: Literal["rotation", "none"] = "rotation"
    # Sources and the fact-check report in a second tab "Sources & fact-check" (the article tab reads clean);
    # false keeps them as the last sections of the one tab, for Docs that have no tabs.
    sources_tab: bool = True
    topic_editors: dict[str, str] = {}
    # Where the Google APIs are reached (default: Google's own). For a proxy, a private endpoint or a local fake in tests.
    api_endpoint: str | None = Field(default=None, description="Docs API root URL, e.g. https://docs.googleapis.com/")
    drive_endpoint: str | None = Field(default=None, description="Drive host URL; /drive/v3/ is appended unless present")

    @field_validator("api_endpoint", "drive_endpoint")
    @classmethod
    def _endpoints(cls, value: str | None) -> str | None:
        return _optional_http_url(value)

    @model_validator(mode="after")
    def _assignees(self) -> Google:
        # An assignee must be able to open the document, and only `editors` are given access.
        shared = {e.strip().lower() for e in self.editors}
        for topic, email in self.topic_editors.items():
            if email.strip().lower() not in shared:
                raise ValueError(
                    f"topic_editors[{topic!r}] = {email!r} is not in publishing.google.editors "
                    f"(documents are shared only with those): add it there or pick one of {sorted(shared) or 'none'}"
                )
        return self


class Publishing(Section):
    target: Literal["local", "google"] = "local"
    outbox: Path = Path("outbox")
    google: Google = Google()


class Stories(Section):
    window_hours: float = Field(default=48, gt=0)
    similarity_threshold: float = Field(default=0.62, ge=0, le=1)
    entity_overlap_min: int = Field(default=1, ge=0)
    max_per_run: int = Field(default=5, ge=1)
    min_newsworthiness: float = Field(default=0.0, ge=0, le=1)


class Research(Section):
    background_days: float = Field(default=30, gt=0)
    background_k: int = Field(default=8, ge=0, le=100)
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)
    min_similarity: float = Field(default=0.45, ge=-1, le=1, description="background below this cosine similarity is unrelated")
    near_duplicate: float = Field(default=0.95, ge=0, le=1)
    output_reserve_tokens: int = Field(default=2000, ge=100)
    max_context_tokens: int | None = Field(default=None, ge=500, description="cap below the model window")


class Classify(Section):
    batch_size: int = Field(default=12, ge=1, le=100)
    item_tokens: int = Field(default=400, ge=50)
    prefilter_threshold: float = Field(default=0.15, ge=-1, le=1)
    offline_threshold: float = Field(default=0.25, ge=-1, le=1)


class FactCheck(Section):
    # One check call per draft: claims and verdicts together, split only when the draft does not fit the judge's window.
    revise_rounds: int = Field(default=1, ge=0, le=5, description="reviser calls per draft after its check call, at most (0: the check never changes a draft, not even by the judge's own corrections, it only reports); a draft the rules flag for a dangling reference, another language or a citation or link no source has also gets one revision beside its check call; revised sentences are re-checked by the rules")
    # Judge and reviser requests per draft, repair rounds included, whatever the server answers: one check call, its
    # repair, one revision and its repair. Once spent, the draft's remaining statements are decided by the rules.
    max_calls_per_draft: int = Field(default=4, ge=1, le=100, description="judge + reviser model requests per draft, repairs included")
    window_sentences: int = Field(default=4, ge=3, le=5)
    output_tokens_per_sentence: int = Field(default=300, ge=50, le=4000, description="reply tokens kept free per checked sentence")
    max_output_tokens: int = Field(default=16_000, ge=500, description="the judge model's reply limit; a longer draft is split")
    max_context_tokens: int | None = Field(default=None, ge=1000, description="cap below the judge model's window")


class Finetune(Section):
    articles_dir: Path | None = None
    base_model: str = "gpt-4o-mini-2024-07-18"
    suffix: str = "house-style"
    epochs: int = Field(default=3, ge=1, le=50)
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    valid_fraction: float = Field(default=0.1, ge=0, lt=1)
    max_example_tokens: int = Field(default=16_000, ge=100)
    min_examples: int = Field(default=10, ge=1)


class Limits(Section):
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    fetch_deadline_s: float = Field(default=300.0, gt=0)
    fetch_concurrency: int = Field(default=8, ge=1, le=256)
    fetch_retries: int = Field(default=2, ge=0, le=10)
    max_response_bytes: int = Field(default=5_000_000, ge=1024)
    max_items_per_feed: int = Field(default=100, ge=1)
    max_title_chars: int = Field(default=500, ge=20)
    max_text_chars: int = Field(default=100_000, ge=1000)
    min_full_text_chars: int = Field(default=800, ge=0)
    allow_private_hosts: bool = False
    user_agent: str = "Newsdesk/0.1 (+https://example.invalid/newsdesk)"


StageName = Literal["fetch", "classify", "draft", "check", "publish", "sync"]


class Cluster(Section):
    """Several workers on one ledger (PostgreSQL) and one Chroma server; see pipeline/flow/worker.py."""

    # true: runs are queued in the ledger and their units claimed by `run.py worker` processes; `schedule` only
    # enqueues, `once` enqueues and works its own run. false: one process runs everything under the lock.
    enabled: bool = False
    lease_s: float = Field(default=60.0, gt=0, description="a dead worker's unit is taken over this long after its last renewal")
    poll_s: float = Field(default=2.0, gt=0, description="how often an idle worker looks for work")
    max_attempts: int = Field(default=3, ge=1, le=20, description="workers that may die on one unit before it is failed")
    # The stages this machine's workers take (`run.py worker --stages` overrides); default: all of them.
    stages: list[StageName] = ["fetch", "classify", "draft", "check", "publish", "sync"]


class Config(Section):
    newsroom: Newsroom = Newsroom()
    feeds: list[Feed] = []
    topics: list[Topic] = []
    schedule: Schedule = Schedule()
    llm: LLM = LLM()
    embedding: Embedding = Embedding()
    store: Store = Store()
    ledger: Ledger = Ledger()
    publishing: Publishing = Publishing()
    stories: Stories = Stories()
    research: Research = Research()
    classify: Classify = Classify()
    factcheck: FactCheck = FactCheck()
    finetune: Finetune = Finetune()
    limits: Limits = Limits()
    cluster: Cluster = Cluster()

    # Where the file lives; relative paths were resolved against it.
    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [f.name for f in self.feeds]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feed names must be unique; repeated: {', '.join(dupes)}")
        topic_names = {t.name for t in self.topics}
        for index, feed in enumerate(self.feeds):
            unknown = [t for t in feed.topics if t not in topic_names]
            if unknown:
                raise ValueError(
                    f"'feeds[{index}].topics' ({feed.name}) names unknown topic(s) {unknown}; "
                    f"defined topics: {sorted(topic_names) or 'none'}"
                )
        unknown = sorted(set(self.publishing.google.topic_editors) - topic_names)
        if unknown:
            raise ValueError(
                f"'publishing.google.topic_editors' names unknown topic(s) {unknown}; "
                f"defined topics: {sorted(topic_names) or 'none'}"
            )
        return self

    @property
    def topic_names(self) -> list[str]:
        return [t.name for t in self.topics]

    def path(self, value: Path) -> Path:
        """A config path made absolute against the config file's folder."""
        return value if value.is_absolute() else (self.root / value).resolve()

    @property
    def data_dir(self) -> Path:
        return self.path(self.newsroom.data_dir)

    @property
    def prompts_dir(self) -> Path:
        return self.path(self.newsroom.prompts_dir) if self.newsroom.prompts_dir else PACKAGE_ROOT / "prompts"

    @property
    def house_rules_path(self) -> Path:
        return self.path(self.newsroom.house_rules)

    @property
    def templates_dir(self) -> Path:
        return self.path(self.newsroom.templates_dir) if self.newsroom.templates_dir else PACKAGE_ROOT / "templates"

    @property
    def ledger_url(self) -> str:
        return resolve_sqlite_url(self.ledger.url, self.root)

    def feed_location(self, feed: Feed) -> str:
        """An http(s) URL as is, or the absolute path of a local feed file."""
        if feed.is_remote:
            return feed.url
        raw = feed.url.removeprefix("file://")
        return str(self.path(Path(raw)))


def resolve_sqlite_url(url: str, root: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str((root / url[len(prefix):]).resolve())
    return url


def load_config(path: str | Path = DEFAULT_CONFIG) -> Config:
    """Read and validate a config file; raise ConfigError with one clear message."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"config file not found: {path.absolute()} (pass --config PATH, or run from the folder that holds config.toml)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, root=path.resolve().parent, origin=str(path))


def parse_config(raw: dict[str, Any], root: Path, origin: str = "config") -> Config:
    try:
        config = Config.model_validate({**raw, "root": root})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
    _warn_on_open_credentials(config)
    return config


def format_validation_error(exc: ValidationError, origin: str) -> str:
    problems = [_describe(error) for error in exc.errors()]
    head = f"{origin}: {len(problems)} problem(s) in the config; nothing was run."
    return "\n".join([head, *(f"  - {p}" for p in problems)])


def _describe(error: dict[str, Any]) -> str:
    location = _dotted(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _section_model(error["loc"][:-1])
        allowed = sorted(parent.model_fields) if parent else []
        allowed = [a for a in allowed if a != "root"]
        guess = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        return f"'{location}' is not a known key.{hint} Allowed here: {', '.join(allowed)}"
    if not error["loc"]:
        return error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, str) and "://" in given and "@" in given:  # a URL with credentials: never echo a password
        given = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", given)
    shown = repr(given) if not isinstance(given, dict) else "a table"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{location}' = {shown}: {message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def read_secret(env_name: str | None, file: Path | None = None) -> str | None:
    """A secret from the environment or from a file named in config. Never from config values."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name].strip()
    if file is not None and file.exists():
        return file.read_text(encoding="utf-8").strip() or None
    return None


def _warn_on_open_credentials(config: Config) -> None:
    google = config.publishing.google
    # The publisher falls back to GOOGLE_APPLICATION_CREDENTIALS, so that key file is checked too.
    from_env = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
    for candidate in (config.llm.api_key_file, google.credentials_file, google.token_file, from_env and Path(from_env)):
        if candidate is None:
            continue
        resolved = config.path(candidate)
        if resolved.exists() and resolved.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(
                f"credentials file {resolved} is readable by other users; run: chmod 600 {resolved}",
                stacklevel=2,
            )
