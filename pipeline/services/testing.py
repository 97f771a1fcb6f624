"""Test helpers: a schema-driven model and guards against real network use.

`TestModel` is a gateway backend that answers any request with output that
fits the requested pydantic schema, without HTTP, so agent tests exercise the
gateway's validation, repair, cache and accounting for real:

    gateway = Gateway(config, ledger, backend=TestModel())
    gateway = Gateway(config, ledger, backend=TestModel(responses={Verdict: [bad, good]}))

Generated values are deterministic: strings name their field ("headline 1"),
numbers sit at the low end of their range, lists have their minimum length
(at least one item), every optional field is filled. Scripted responses
replace them per schema, in order, or through a function of the request.

`allow_model_requests()` and `NetworkGuard` back tests/conftest.py: by default
no test may call a real provider or open a non-loopback connection.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections import defaultdict, deque
from typing import Any, Callable, Iterator, Mapping

from pydantic import BaseModel, ValidationError

import pipeline.services.llm as llm
from pipeline.services.llm import ModelReply, ModelRequest
from pipeline.core.tokens import count_messages, count_tokens

# What a scripted response may be: an object or dict (sent as JSON), a raw string (sent as is,
# e.g. broken JSON), a ModelReply (finish_reason, refusal), an exception to raise
# (llm.ProviderUnavailable(...)), or a function of the ModelRequest returning any of these.
Response = Any


class TestModelError(Exception):
    """TestModel cannot produce valid output for a schema without help."""

    __test__ = False


class TestModel:
    """A gateway backend producing schema-valid output, deterministically, without HTTP."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        responses: Mapping[type[BaseModel], Response] | None = None,
        function: Callable[[ModelRequest], Response | None] | None = None,
        overrides: Mapping[type[BaseModel], Mapping[str, Any]] | None = None,
    ) -> None:
        """`responses`: per schema, one response (used every time) or a list (used in order,
        then generated output). `function`: asked first for every request; None means "generate".
        `overrides`: per schema, field values merged into the generated output."""
        self._fixed: dict[type, Response] = {}
        self._queues: dict[type, deque] = defaultdict(deque)
        for schema, response in (responses or {}).items():
            if isinstance(response, (list, tuple)):
                self._queues[schema].extend(response)
            else:
                self._fixed[schema] = response
        self.function = function
        self.overrides = dict(overrides or {})
        self.requests: list[ModelRequest] = []
        self._lock = threading.Lock()

    async def complete(self, request: ModelRequest) -> ModelReply:
        with self._lock:
            self.requests.append(request)
            response = self.function(request) if self.function else None
            if response is None and self._queues.get(request.schema):
                response = self._queues[request.schema].popleft()
            if response is None:
                response = self._fixed.get(request.schema)
        if callable(response) and not isinstance(response, (BaseModel, type)):
            response = response(request)
        if response is None:
            response = sample(request.schema, self.overrides.get(request.schema))
        if isinstance(response, BaseException):
            raise response
        if isinstance(response, ModelReply):
            reply = response
        else:
            reply = ModelReply(content=_as_text(response))
        if not reply.prompt_tokens:
            reply.prompt_tokens = count_messages(request.messages, request.model)
        if not reply.completion_tokens:
            reply.completion_tokens = count_tokens(reply.content or reply.refusal or "", request.model)
        reply.model = reply.model or request.model
        return reply

    @property
    def calls(self) -> int:
        return len(self.requests)


def _as_text(response: Response) -> str:
    if isinstance(response, BaseModel):
        return response.model_dump_json()
    if isinstance(response, str):
        return response
    return json.dumps(response, ensure_ascii=False, default=str)


# --- schema-driven values ---------------------------------------------------------------------


def sample(schema: type[BaseModel], overrides: Mapping[str, Any] | None = None) -> BaseModel:
    """A valid instance of `schema` built from its JSON schema; `overrides` replace top-level fields."""
    overrides = dict(overrides or {})
    root = schema.model_json_schema()
    # Overridden fields are not generated: they may be ones TestModel cannot invent.
    pruned = {**root, "properties": {k: v for k, v in root.get("properties", {}).items() if k not in overrides}}
    data = {**sample_json(pruned), **overrides}
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise TestModelError(
            f"TestModel cannot build a valid {schema.__name__} on its own ({exc.error_count()} error(s): "
            f"{exc.errors(include_url=False)[0]['msg']}); script it with "
            f"TestModel(responses={{{schema.__name__}: ...}}) or overrides={{{schema.__name__}: {{...}}}}"
        ) from None


def sample_json(json_schema: dict[str, Any]) -> Any:
    """A JSON value satisfying `json_schema` (the subset pydantic emits)."""
    return _Sampler(json_schema).value(json_schema, "value")


class _Sampler:
    def __init__(self, root: dict[str, Any]) -> None:
        self.defs = root.get("$defs", {})
        self.depth = 0

    def value(self, node: dict[str, Any], name: str) -> Any:
        node = with_hinted_constraints(node)
        if "$ref" in node:
            target = self.defs[node["$ref"].rsplit("/", 1)[-1]]
            self.depth += 1
            try:
                if self.depth > 8:  # a recursive model: stop at an empty/None branch
                    return None
                return self.value(target, name)
            finally:
                self.depth -= 1
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return node["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in node:
                variants = [v for v in node[key] if v.get("type") != "null"] or node[key]
                return self.value(variants[0], name)
        if "allOf" in node:
            merged: dict[str, Any] = {}
            for part in node["allOf"]:
                merged.update(part)
            return self.value(merged, name)
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or "properties" in node:
            return self.object(node, name)
        if kind == "array":
            return self.array(node, name)
        if kind == "string":
            return self.string(node, name)
        if kind == "integer":
            return int(self.number(node, integer=True))
        if kind == "number":
            return self.number(node, integer=False)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return f"{name} 1"  # untyped (Any)

    def object(self, node: dict[str, Any], name: str) -> dict[str, Any]:
        out = {key: self.value(sub, key) for key, sub in node.get("properties", {}).items()}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and not node.get("properties"):
            for index in range(max(node.get("minProperties", 1), 1)):
                out[f"{name}_{index + 1}"] = self.value(extra, name)
        return out

    def array(self, node: dict[str, Any], name: str) -> list[Any]:
        prefix = node.get("prefixItems")
        if prefix:
            return [self.value(sub, name) for sub in prefix]
        count = max(node.get("minItems", 1), 1)
        if "maxItems" in node:
            count = min(count, node["maxItems"])
        item = node.get("items", {})
        singular = name[:-1] if name.endswith("s") and len(name) > 3 else name
        values = [self.value(item, f"{singular} {i + 1}") for i in range(count)]
        if node.get("uniqueItems") and isinstance(values and values[0], str):
            values = [f"{v} {i}" for i, v in enumerate(values)]
        return values

    def string(self, node: dict[str, Any], name: str) -> str:
        fmt = node.get("format")
        if fmt in _FORMATS:
            return _FORMATS[fmt]
        low, high = node.get("minLength", 1), node.get("maxLength")
        base = name.replace("_", " ").strip() or "text"
        if not base[-1].isdigit():
            base = f"{base} 1"
        candidates = [base]
        if "pattern" in node:
            candidates = [base, *_PATTERN_GUESSES]
        for text in candidates:
            while len(text) < low:
                text += " x" if len(text) + 2 <= (high or 10**9) else "x"
            if high is not None:
                text = text[:high]
            if "pattern" not in node or re.search(node["pattern"], text):
                return text
        raise TestModelError(
            f"TestModel cannot invent a string for {name!r} matching pattern {node['pattern']!r}; "
            "give the field a value with TestModel(overrides=...) or responses=..."
        )

    def number(self, node: dict[str, Any], integer: bool) -> float:
        """The low end of the allowed range (or 1 / 0.5 when unbounded), on the multipleOf grid."""
        if "minimum" in node:
            value = node["minimum"]
        elif "exclusiveMinimum" in node:
            low = node["exclusiveMinimum"]
            high = node.get("maximum", node.get("exclusiveMaximum"))
            step = 1 if integer else (min(1.0, (high - low) / 2) if high is not None else 1.0)
            value = low + step
        elif "maximum" in node:
            value = min(0, node["maximum"])
        elif "exclusiveMaximum" in node:
            value = min(0, node["exclusiveMaximum"] - 1)
        else:
            value = 1 if integer else 0.5
        step = node.get("multipleOf")
        if step:
            value = -(-value // step) * step  # round up onto the grid
        return value


def with_hinted_constraints(node: dict[str, Any]) -> dict[str, Any]:
    """`node` with the constraints that pipeline.services.llm.strict_json_schema moved into its description
    ("Constraints: minLength 3, maximum 1.") put back, so strict schemas sample validly too."""
    description = node.get("description")
    if not isinstance(description, str) or "Constraints: " not in description:
        return node
    text = description[description.rindex("Constraints: ") + len("Constraints: ") :]
    restored = dict(node)
    decoder = json.JSONDecoder()
    position = 0
    while True:
        match = re.compile(r"(\w+) ").match(text, position)
        if not match:
            break
        try:
            value, position = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            break
        restored.setdefault(match.group(1), value)
        if not text.startswith(", ", position):
            break
        position += 2
    return restored


_FORMATS = {
    "date-time": "2026-01-15T09:30:00Z",
    "date": "2026-01-15",
    "time": "09:30:00",
    "duration": "PT1H",
    "email": "editor@example.com",
    "uri": "https://example.com/story-1",
    "url": "https://example.com/story-1",
    "uuid": "00000000-0000-4000-8000-000000000001",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
_PATTERN_GUESSES = ["a", "A", "0", "abc", "ABC", "123", "a-1", "a_b", "2026-01-15", "https://example.com/1", "x" * 12]


# --- guards -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def allow_model_requests(allowed: bool = True) -> Iterator[None]:
    """Let real provider requests through (respx or the fake server catch them) inside the block."""
    previous = llm.ALLOW_MODEL_REQUESTS
    llm.ALLOW_MODEL_REQUESTS = allowed
    try:
        yield
    finally:
        llm.ALLOW_MODEL_REQUESTS = previous


class NetworkBlocked(ConnectionRefusedError):
    """A test tried to reach a host other than this machine."""


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: Any) -> bool:
    if host is None:
        return True  # bind/listen lookups
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").lower()
    return host in _LOOPBACK_NAMES or host.startswith("127.") or host in {"::1", "0.0.0.0", "::"}


class NetworkGuard:
    """Refuses non-loopback connections and name lookups while installed; remembers each attempt.

    Refusal is a ConnectionRefusedError, so code under test sees an ordinary network failure,
    and `attempts` lets the fixture fail the test even when that code swallowed the error.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> NetworkGuard:
        guard = self
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_getaddrinfo = socket.getaddrinfo

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
                guard.attempts.append(f"connect {address[0]}:{address[1]}")
                raise NetworkBlocked(f"network access blocked in tests: {address[0]}:{address[1]}")

        def connect(sock, address):
            check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            check(sock, address)
            return real_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            if not is_loopback(host) and not _is_ip_literal(host):
                guard.attempts.append(f"resolve {host}")
                raise NetworkBlocked(f"network access blocked in tests: name lookup for {host}")
            return real_getaddrinfo(host, *args, **kwargs)

        self._saved = [
            (socket.socket, "connect", real_connect),
            (socket.socket, "connect_ex", real_connect_ex),
            (socket, "getaddrinfo", real_getaddrinfo),
        ]
        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.getaddrinfo = getaddrinfo
        return self

    def uninstall(self) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)
        self._saved = []

    def __enter__(self) -> NetworkGuard:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()


def _is_ip_literal(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, str(host))
    except (OSError, ValueError):
        return False
    return True


__all__ = [
    "NetworkBlocked",
    "NetworkGuard",
    "TestModel",
    "TestModelError",
    "allow_model_requests",
    "is_loopback",
    "sample",
    "sample_json",
    "with_hinted_constraints",
]
