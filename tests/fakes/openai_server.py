"""A local OpenAI-compatible server for tests and benchmarks.

It speaks POST /v1/chat/completions over real HTTP on 127.0.0.1, so the code
under test goes through the real openai SDK via `base_url`. Each request is
answered by the next scripted entry, else by the `reply` function, else by a
value generated from the request's json_schema. Entries:

* `Reply(...)`: content (str or JSON-able), finish_reason, refusal, usage, delay
* `Fault(...)`: an HTTP error status with headers (Retry-After) and body
* `Garbage(...)`: a 200 whose body is not valid JSON
* a str or dict: shorthand for Reply(content=...)
* a function of the request body returning any of the above

Requests are recorded (`server.requests`). It is a ThreadingHTTPServer, so
concurrent clients are served in parallel (bench/pipeline.py relies on it
with a 2 s delay per call).

    with FakeOpenAIServer(script=[Fault(429, retry_after="3"), {"label": "ok"}]) as server:
        config.llm.base_url = server.base_url
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from pipeline.services.testing import sample_json
from pipeline.core.tokens import count_messages, count_tokens
from tests.fakes.loopback import LoopbackHTTPServer


@dataclass
class Reply:
    content: Any = None  # str as is; anything else is sent as JSON text
    finish_reason: str = "stop"
    refusal: str | None = None
    prompt_tokens: int | None = None  # None: counted from the request
    completion_tokens: int | None = None
    delay: float | None = None  # seconds before answering; None: the server default


@dataclass
class Fault:
    status: int
    message: str = "fault injected by the fake server"
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body instead of the OpenAI error JSON
    delay: float | None = None


@dataclass
class Garbage:
    body: str = '{"id": "chatcmpl-broken", "choices": [{"mess'
    delay: float | None = None


Entry = Any
ReplyFunction = Callable[[dict[str, Any]], Entry]


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names in lowercase
    body: dict[str, Any]
    received: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def response_format(self) -> dict[str, Any] | None:
        return self.body.get("response_format")


class FakeOpenAIServer:
    def __init__(
        self,
        script: list[Entry] | None = None,
        reply: ReplyFunction | None = None,
        delay: float = 0.0,
        model: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script: list[Entry] = list(script or [])
        self.reply = reply
        self.delay = delay
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = LoopbackHTTPServer((host, port), _handler_for(self))
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping through a delay
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def add(self, *entries: Entry) -> None:
        with self._lock:
            self.script.extend(entries)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- answering ---------------------------------------------------------------------------

    def _next_entry(self, body: dict[str, Any]) -> Entry:
        with self._lock:
            entry = self.script.pop(0) if self.script else None
        if entry is None and self.reply is not None:
            entry = self.reply(body)
        if callable(entry) and not isinstance(entry, (Reply, Fault, Garbage)):
            entry = entry(body)
        if entry is None:
            entry = Reply(content=_generated_content(body))
        if isinstance(entry, (str, dict, list)):
            entry = Reply(content=entry)
        return entry

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        content = reply.content
        if content is not None and not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if reply.refusal is not None:
            content = None
        model = self.model or body.get("model", "fake-model")
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = count_messages(body.get("messages", []), model)
        completion_tokens = reply.completion_tokens
        if completion_tokens is None:
            completion_tokens = count_tokens(content or reply.refusal or "", model)
        with self._lock:
            number = len(self.requests)
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": reply.finish_reason,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _generated_content(body: dict[str, Any]) -> str:
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    return json.dumps(sample_json(schema) if schema else {}, ensure_ascii=False)


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._read_body()
            self._send_json(404, {"error": {"message": f"no route GET {self.path}", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            raw = self._read_body()
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            record = RecordedRequest(self.path, headers, body, time.monotonic())
            with server._lock:
                server.requests.append(record)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send_json(404, {"error": {"message": f"no route POST {self.path}", "type": "invalid_request_error"}})
                return
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                entry = server._next_entry(body)
                delay = entry.delay if entry.delay is not None else server.delay
                if delay and server._stopping.wait(delay):
                    return
                self._answer(body, entry)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test); nothing to answer
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _answer(self, body: dict[str, Any], entry: Any) -> None:
            if isinstance(entry, Fault):
                headers = dict(entry.headers)
                if entry.retry_after is not None:
                    headers["retry-after"] = entry.retry_after
                payload = entry.body if entry.body is not None else json.dumps(
                    {"error": {"message": entry.message, "type": "fake_fault", "param": None, "code": None}}
                )
                self._send(entry.status, payload.encode(), headers)
            elif isinstance(entry, Garbage):
                self._send(200, entry.body.encode(), {})
            else:
                self._send_json(200, server._completion(body, entry))

        def _read_body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), {})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
