"""A deliberately naive OpenAI-compatible server: it fills the request's JSON schema, nothing more.

It stands for a small local model behind vLLM or llama.cpp with grammar-constrained
output: every reply is valid against the `response_format` json_schema of the request
and carries no judgement at all. Whatever the schema lets through (a free string, an
enum value, an array length, a number in range) is picked at random, so anything the
project needs but the schema does not say will sooner or later come out wrong, the
way it does with a constrained decoder.

What it honours, read literally from the schema sent: `$ref`/`$defs`, `anyOf`/`oneOf`,
`enum`, `const`, `type` (one or a list, "null" for nullable), object `properties` with
`required` (optional properties are sometimes left out), array `items`, `minItems` and
`maxItems`, string `minLength`/`maxLength` and the strict-mode `format`s, number
`minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`/`multipleOf`. It ignores
descriptions (where a hint would be) and `pattern` (a string is then random letters).
In json_object mode, or with no schema, it answers `{}`.

Choices are random but seeded: the seed and the request body decide the reply, so the
same request gets the same answer whatever the order in which concurrent requests
arrive, and a repair round (a different body) gets a fresh one.

`fail_every=n` answers every n-th chat request with 429 (Retry-After: 0) instead, as a
rate-limited provider would; `answered` lists the requests that got a reply.

    with NaiveServer(seed=7) as server:
        config.llm.base_url = server.base_url
        ...
        server.chat_requests, server.repairs

Only stdlib: http.server in a daemon thread on 127.0.0.1, port 0 by default.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackHTTPServer

ARRAY_SPREAD = 3  # an array without maxItems gets up to minItems + this many items
STRING_LENGTH = (1, 12)  # random strings, when the schema does not bound them
NUMBER_SPREAD = 100.0  # a number unbounded on one side stays within this of its bound

_FORMATS = {
    "date-time": lambda rng: f"20{rng.randint(10, 39)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                             f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
    "date": lambda rng: f"20{rng.randint(10, 39)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    "time": lambda rng: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
    "duration": lambda rng: f"PT{rng.randint(1, 59)}M",
    "email": lambda rng: f"{_word(rng, 1, 8)}@example.com",
    "hostname": lambda rng: f"{_word(rng, 1, 8)}.example",
    "ipv4": lambda rng: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda rng: "2001:db8::" + format(rng.randint(1, 0xFFFF), "x"),
    "uuid": lambda rng: "%08x-%04x-4%03x-8%03x-%012x" % (
        rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12), rng.getrandbits(12), rng.getrandbits(48)),
}


class SchemaError(ValueError):
    """The schema asks for something no value can satisfy (or this server cannot read)."""


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(low, high))).strip() or "x"


def fill(schema: dict[str, Any], rng: random.Random) -> Any:
    """An arbitrary value valid against `schema` (the JSON Schema subset described above)."""
    return _Filler(schema, rng).value(schema, depth=0)


class _Filler:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise SchemaError(f"cannot follow $ref {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def value(self, node: dict[str, Any], depth: int) -> Any:
        if depth > 20:
            raise SchemaError("schema nests deeper than 20 levels")
        rng = self.rng
        if "$ref" in node:
            return self.value(self.resolve(node["$ref"]), depth + 1)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return rng.choice(node["enum"])
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self.value(rng.choice(node[key]), depth + 1)
        if "allOf" in node:
            merged: dict[str, Any] = {}
            for part in node["allOf"]:
                merged.update(self.resolve(part["$ref"]) if "$ref" in part else part)
            return self.value(merged, depth + 1)
        kind = node.get("type")
        if isinstance(kind, list):
            kind = rng.choice(kind)
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else "string"
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "object":
            required = set(node.get("required", []))
            return {
                name: self.value(sub, depth + 1)
                for name, sub in node.get("properties", {}).items()
                if name in required or rng.random() < 0.5
            }
        if kind == "array":
            low = node.get("minItems", 0)
            high = node.get("maxItems", low + ARRAY_SPREAD)
            if high < low:
                raise SchemaError(f"minItems {low} > maxItems {high}")
            return [self.value(node.get("items", {}), depth + 1) for _ in range(rng.randint(low, high))]
        if kind == "string":
            if node.get("format") in _FORMATS:
                return _FORMATS[node["format"]](rng)
            low = node.get("minLength", STRING_LENGTH[0])
            high = node.get("maxLength", max(low, STRING_LENGTH[1]))
            text = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(low, max(low, high))))
            return text
        if kind in ("number", "integer"):
            return self.number(node, integer=kind == "integer")
        raise SchemaError(f"unknown type {kind!r}")

    def number(self, node: dict[str, Any], integer: bool) -> float | int:
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if low is None and high is None:
            low, high = 0.0, NUMBER_SPREAD
        elif low is None:
            low = high - NUMBER_SPREAD
        elif high is None:
            high = low + NUMBER_SPREAD
        step = node.get("multipleOf")
        for _ in range(1000):
            if integer:
                value: float | int = self.rng.randint(math.ceil(low), math.floor(high)) if math.ceil(low) <= high else low
            else:
                value = self.rng.uniform(low, high)
            if step:
                value = round(value / step) * step
            if integer:
                value = int(value)
            if not low <= value <= high:
                continue
            if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
                continue
            if "exclusiveMaximum" in node and value >= node["exclusiveMaximum"]:
                continue
            return value
        raise SchemaError(f"no number satisfies {node}")


@dataclass
class NaiveRequest:
    path: str
    body: dict[str, Any]
    received: float
    status: int = 200   # what the server answered: 200, or 429 under fail_every, 400/404 for a bad request

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def schema(self) -> dict[str, Any] | None:
        response_format = self.body.get("response_format") or {}
        return (response_format.get("json_schema") or {}).get("schema")

    @property
    def schema_name(self) -> str | None:
        response_format = self.body.get("response_format") or {}
        return (response_format.get("json_schema") or {}).get("name")

    @property
    def is_repair(self) -> bool:
        """A repair round: the conversation already holds one of the model's replies."""
        return any(m.get("role") == "assistant" for m in self.messages)


class NaiveServer:
    """POST /v1/chat/completions answered with `fill(schema)`; every request recorded."""

    def __init__(self, seed: int = 0, host: str = "127.0.0.1", port: int = 0, fail_every: int = 0) -> None:
        self.seed = seed
        self.fail_every = fail_every
        self.requests: list[NaiveRequest] = []
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer((host, port), _handler_for(self))
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> NaiveServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="naive-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> NaiveServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def chat_requests(self) -> list[NaiveRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    @property
    def answered(self) -> list[NaiveRequest]:
        """Chat requests that got a completion (not a 429 or an error)."""
        return [r for r in self.chat_requests if r.status == 200]

    @property
    def repairs(self) -> int:
        return sum(r.is_repair for r in self.chat_requests)

    def _fails(self) -> bool:
        """Whether the chat request just recorded is one fail_every turns away (under the lock)."""
        if not self.fail_every:
            return False
        chats = sum(1 for r in self.requests if r.path.rstrip("/").endswith("/chat/completions"))
        return chats % self.fail_every == 0

    def reply_for(self, body: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps([self.seed, body], sort_keys=True).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        schema = NaiveRequest("", body, 0.0).schema
        return json.dumps(fill(schema, rng) if schema else {}, ensure_ascii=False)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        content = self.reply_for(body)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
        with self._lock:
            number = len(self.requests)
        return {
            "id": f"chatcmpl-naive-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "naive-model"),
            "choices": [{
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def _handler_for(server: NaiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._read_body()
            self._send(404, {"error": {"message": f"no route GET {self.path}", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            raw = self._read_body()
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
                return
            request = NaiveRequest(self.path, body, time.monotonic())
            with server._lock:
                server.requests.append(request)
                failing = server._fails()
            if not self.path.rstrip("/").endswith("/chat/completions"):
                request.status = 404
                self._send(404, {"error": {"message": f"no route POST {self.path}", "type": "invalid_request_error"}})
                return
            if failing:
                request.status = 429
                self._send(429, {"error": {"message": "rate limited (fail_every)", "type": "rate_limit_error"}},
                           headers={"retry-after": "0"})
                return
            try:
                payload = server.completion(body)
            except SchemaError as exc:
                request.status = 400
                self._send(400, {"error": {"message": f"invalid json_schema: {exc}", "type": "invalid_request_error"}})
                return
            self._send(200, payload)

        def _read_body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up

    return Handler
