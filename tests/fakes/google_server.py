"""A local fake of the Google Docs v1 and Drive v3 APIs, for the real client libraries to talk to.

It is a real HTTP server (ThreadingHTTPServer in a thread). Routes, parameters
and request bodies are checked against the discovery documents that
google-api-python-client ships, so a request the real API would reject for an
unknown field, a wrong type or an unknown query parameter is rejected here too,
with the API's error shape {"error": {"code", "message", "status"}}.

The document model is small but keeps the API's rules: the body starts at
index 1 after a section break, every paragraph ends with "\\n", the body's
final newline cannot be deleted, positions count UTF-16 code units (an index
inside a surrogate pair is an error), batchUpdate requests apply in order.
Paragraph properties live on each paragraph's newline, so inserting "\\n"
splits a paragraph into two with the same style, as the API does.

Auth is real too: /token issues access tokens for service-account JWTs signed
by a trusted key (RS256, verified) or for known refresh tokens; every API call
must carry one of the issued tokens.

Tests steer it with `fail(method_id, status, times, apply=False)` (a queue of
faults per method: 429/500..., optionally after applying the change, as when a
response is lost), `down = True` (every API call answers 503), and read
`calls`, `files`, `documents`, `permissions`.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import googleapiclient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
DOC_MIME = "application/vnd.google-apps.document"
FOLDER_MIME = "application/vnd.google-apps.folder"
STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
# insertText strips these (the API documents it), and so does the fake.
_STRIPPED = re.compile("[\u0000-\u0008\u000c-\u001f\ue000-\uf8ff]")


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- discovery: routes and schema validation ---------------------------------------


@dataclass
class Method:
    id: str
    http_method: str
    pattern: re.Pattern
    spec: dict[str, Any]
    api: "Api"


class Api:
    def __init__(self, name: str, prefix: str) -> None:
        self.doc = json.loads((DISCOVERY / name).read_text(encoding="utf-8"))
        self.schemas = self.doc["schemas"]
        self.global_params = self.doc.get("parameters", {})
        self.methods: list[Method] = []
        for resource in self.doc["resources"].values():
            for spec in resource.get("methods", {}).values():
                path = re.escape(spec["path"])
                path = re.sub(r"\\\{(?:\\\+)?(\w+)\\\}", r"(?P<\1>[^/]+?)", path)
                pattern = re.compile("^" + re.escape(prefix) + path + "$")
                self.methods.append(Method(spec["id"], spec["httpMethod"], pattern, spec, self))

    def validate(self, value: Any, schema: dict[str, Any], where: str) -> None:
        if "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        kind = schema.get("type")
        if kind == "object":
            if not isinstance(value, dict):
                raise ApiError(400, f"Invalid value at '{where}': expected an object, got {type(value).__name__}.")
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if key in properties:
                    self.validate(item, properties[key], f"{where}.{key}" if where else key)
                elif extra is not None:
                    self.validate(item, extra, f"{where}[{key!r}]")
                else:
                    raise ApiError(
                        400, f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
                    )
        elif kind == "array":
            if not isinstance(value, list):
                raise ApiError(400, f"Invalid value at '{where}': expected a list.")
            for index, item in enumerate(value):
                self.validate(item, schema.get("items", {}), f"{where}[{index}]")
        elif kind == "string":
            if schema.get("format") == "int64" and isinstance(value, int) and not isinstance(value, bool):
                return
            if not isinstance(value, str):
                raise ApiError(400, f"Invalid value at '{where}' ({type(value).__name__}), expected a string.")
            if "enum" in schema and value not in schema["enum"]:
                raise ApiError(400, f"Invalid value at '{where}' ({value!r}): not one of the allowed values.")
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(400, f"Invalid value at '{where}' ({value!r}), expected an integer.")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(400, f"Invalid value at '{where}' ({value!r}), expected a number.")
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise ApiError(400, f"Invalid value at '{where}' ({value!r}), expected a boolean.")

    def validate_query(self, method: Method, query: dict[str, str]) -> None:
        allowed = {**self.global_params, **method.spec.get("parameters", {})}
        for name, value in query.items():
            spec = allowed.get(name)
            if spec is None or spec.get("location") == "path":
                raise ApiError(400, f"Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter.")
            if spec.get("type") == "boolean" and value not in ("true", "false"):
                raise ApiError(400, f"Invalid value for parameter {name}: {value!r}")
            if spec.get("type") == "integer" and not re.fullmatch(r"-?\d+", value):
                raise ApiError(400, f"Invalid value for parameter {name}: {value!r}")
            if "enum" in spec and value not in spec["enum"]:
                raise ApiError(400, f"Invalid value for parameter {name}: {value!r}")


# --- the document model --------------------------------------------------------------


@dataclass
class Char:
    c: str
    style: dict[str, Any] = field(default_factory=dict)
    para: dict[str, Any] | None = None   # only on "\n": {"namedStyleType": ..., "bullet": listId | None}


class FakeDocument:
    def __init__(self, document_id: str, title: str) -> None:
        self.id, self.title = document_id, title
        self.chars: list[Char] = [Char("\n", para={"namedStyleType": "NORMAL_TEXT", "bullet": None})]
        self.lists: dict[str, dict[str, Any]] = {}
        self.revision = 1
        self.lists_made = 0

    # -- indices
    def _starts(self) -> list[int]:
        starts, position = [], 1
        for ch in self.chars:
            starts.append(position)
            position += u16(ch.c)
        starts.append(position)
        return starts

    @property
    def end_index(self) -> int:
        return 1 + sum(u16(ch.c) for ch in self.chars)

    def _position(self, index: int, starts: list[int], what: str) -> int:
        # Binary search would do; documents in tests are small.
        for k, start in enumerate(starts):
            if start == index:
                return k
            if start > index:
                break
        raise ApiError(400, f"Invalid requests: {what} index {index} is inside a surrogate pair or out of bounds.")

    def _range(self, rng: dict[str, Any], where: str, allow_final_newline: bool) -> tuple[int, int]:
        if rng.get("segmentId") or rng.get("tabId"):
            raise ApiError(400, f"{where}: the fake supports the body segment only.")
        if "startIndex" not in rng or "endIndex" not in rng:
            raise ApiError(400, f"{where}: range must have startIndex and endIndex.")
        start, end = rng["startIndex"], rng["endIndex"]
        limit = self.end_index if allow_final_newline else self.end_index - 1
        if start < 1:
            raise ApiError(400, f"{where}: the range's startIndex {start} must be at least 1.")
        if start >= end:
            raise ApiError(400, f"{where}: the range cannot be empty (startIndex {start}, endIndex {end}).")
        if end > limit:
            raise ApiError(
                400, f"{where}: index {end} must be less than the end index of the referenced segment, {limit + 1}."
            )
        starts = self._starts()
        return self._position(start, starts, where), self._position(end, starts, where)

    def paragraphs(self) -> list[tuple[int, int]]:
        """(first char, newline char) positions of each paragraph."""
        out, first = [], 0
        for k, ch in enumerate(self.chars):
            if ch.c == "\n":
                out.append((first, k))
                first = k + 1
        return out

    def _overlapping(self, a: int, b: int) -> list[int]:
        return [nl for first, nl in self.paragraphs() if first < b and nl + 1 > a]

    # -- requests
    def apply(self, request: dict[str, Any], where: str) -> dict[str, Any]:
        if len(request) != 1:
            raise ApiError(400, f"{where}: a request must set exactly one kind, got {sorted(request)}.")
        kind, body = next(iter(request.items()))
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            raise ApiError(501, f"{where}: the fake does not implement {kind}.")
        return handler(body, f"{where}.{kind}") or {}

    def _do_insertText(self, body: dict[str, Any], where: str) -> None:
        text = _STRIPPED.sub("", body.get("text", ""))
        if "location" in body and "endOfSegmentLocation" in body:
            raise ApiError(400, f"{where}: set location or endOfSegmentLocation, not both.")
        if "endOfSegmentLocation" in body:
            k = len(self.chars) - 1
        else:
            location = body.get("location")
            if location is None or "index" not in location:
                raise ApiError(400, f"{where}: location.index is required.")
            index = location["index"]
            if index < 1 or index > self.end_index - 1:
                raise ApiError(
                    400, f"{where}: index {index} must be inside an existing paragraph (1..{self.end_index - 1})."
                )
            k = self._position(index, self._starts(), where)
        if not text:
            return
        # Text takes the style of the character before it in the same paragraph, else the one after.
        neighbour = self.chars[k - 1] if k > 0 and self.chars[k - 1].c != "\n" else self.chars[k]
        inherited = {key: v for key, v in neighbour.style.items() if key != "link"}
        paragraph_nl = next(j for j in range(k, len(self.chars)) if self.chars[j].c == "\n")
        para = self.chars[paragraph_nl].para
        new = [Char(c, dict(inherited), dict(para) if c == "\n" else None) for c in text]
        self.chars[k:k] = new

    def _do_deleteContentRange(self, body: dict[str, Any], where: str) -> None:
        a, b = self._range(body.get("range", {}), where, allow_final_newline=False)
        del self.chars[a:b]

    def _fields(self, fields: str | None, schema_name: str, where: str) -> list[str]:
        properties = DOCS.schemas[schema_name]["properties"]
        if not fields:
            raise ApiError(400, f"{where}: fields is required.")
        if fields.strip() == "*":
            return list(properties)
        names = [f.strip() for f in fields.split(",") if f.strip()]
        for name in names:
            if name.split(".")[0] not in properties:
                raise ApiError(400, f"{where}: invalid field mask {name!r} for {schema_name}.")
        return [n.split(".")[0] for n in names]

    def _do_updateTextStyle(self, body: dict[str, Any], where: str) -> None:
        a, b = self._range(body.get("range", {}), where, allow_final_newline=True)
        names = self._fields(body.get("fields"), "TextStyle", where)
        style = body.get("textStyle", {})
        for ch in self.chars[a:b]:
            for name in names:
                if name in style:
                    ch.style[name] = copy.deepcopy(style[name])
                else:
                    ch.style.pop(name, None)

    def _do_updateParagraphStyle(self, body: dict[str, Any], where: str) -> None:
        a, b = self._range(body.get("range", {}), where, allow_final_newline=True)
        names = self._fields(body.get("fields"), "ParagraphStyle", where)
        style = body.get("paragraphStyle", {})
        if "namedStyleType" not in names:
            return
        for nl in self._overlapping(a, b):
            self.chars[nl].para["namedStyleType"] = style.get("namedStyleType", "NORMAL_TEXT")

    def _do_createParagraphBullets(self, body: dict[str, Any], where: str) -> None:
        a, b = self._range(body.get("range", {}), where, allow_final_newline=True)
        preset = body.get("bulletPreset", "BULLET_GLYPH_PRESET_UNSPECIFIED")
        if preset == "BULLET_GLYPH_PRESET_UNSPECIFIED":
            raise ApiError(400, f"{where}: bulletPreset is required.")
        self.lists_made += 1
        list_id = f"kix.{self.id[:6]}.list{self.lists_made}"
        if preset.startswith("NUMBERED"):
            level = {"glyphType": "DECIMAL", "glyphFormat": "%0.", "startNumber": 1}
        else:
            level = {"glyphSymbol": "●", "glyphFormat": "%0"}
        self.lists[list_id] = {"listProperties": {"nestingLevels": [dict(level) for _ in range(9)]}}
        for nl in self._overlapping(a, b):
            self.chars[nl].para["bullet"] = list_id

    def _do_deleteParagraphBullets(self, body: dict[str, Any], where: str) -> None:
        a, b = self._range(body.get("range", {}), where, allow_final_newline=True)
        for nl in self._overlapping(a, b):
            self.chars[nl].para["bullet"] = None

    # -- reading
    def text(self) -> str:
        return "".join(ch.c for ch in self.chars)

    def to_json(self) -> dict[str, Any]:
        starts = self._starts()
        content: list[dict[str, Any]] = [
            {
                "endIndex": 1,
                "sectionBreak": {
                    "sectionStyle": {"columnSeparatorStyle": "NONE", "contentDirection": "LEFT_TO_RIGHT", "sectionType": "CONTINUOUS"}
                },
            }
        ]
        used_lists: set[str] = set()
        for first, nl in self.paragraphs():
            elements = []
            run_start = first
            for k in range(first, nl + 1):
                if k == nl or self.chars[k + 1].style != self.chars[run_start].style:
                    elements.append(
                        {
                            "startIndex": starts[run_start],
                            "endIndex": starts[k + 1],
                            "textRun": {
                                "content": "".join(ch.c for ch in self.chars[run_start : k + 1]),
                                "textStyle": copy.deepcopy(self.chars[run_start].style),
                            },
                        }
                    )
                    run_start = k + 1
            para = self.chars[nl].para
            paragraph: dict[str, Any] = {
                "elements": elements,
                "paragraphStyle": {"namedStyleType": para["namedStyleType"], "direction": "LEFT_TO_RIGHT"},
            }
            if para["bullet"]:
                paragraph["bullet"] = {"listId": para["bullet"], "textStyle": {}}
                used_lists.add(para["bullet"])
            content.append({"startIndex": starts[first], "endIndex": starts[nl + 1], "paragraph": paragraph})
        return {
            "documentId": self.id,
            "title": self.title,
            "revisionId": f"rev{self.revision}",
            "suggestionsViewMode": "SUGGESTIONS_INLINE",
            "body": {"content": content},
            "lists": {k: copy.deepcopy(v) for k, v in self.lists.items() if k in used_lists},
            "documentStyle": {"pageSize": {"height": {"magnitude": 792, "unit": "PT"}, "width": {"magnitude": 612, "unit": "PT"}}},
        }


DOCS = Api("docs.v1.json", "/")
DRIVE = Api("drive.v3.json", "/drive/v3/")


# --- Drive query language (the subset the publisher uses) ------------------------------

_TOKEN = re.compile(r"\s*('(?:\\.|[^'\\])*'|\{|\}|!=|=|\w+)")


def _tokens(q: str) -> list[str]:
    out, position = [], 0
    q = q.strip()
    while position < len(q):
        m = _TOKEN.match(q, position)
        if not m:
            raise ApiError(400, "Invalid Value", reason="invalid")
        out.append(m.group(1))
        position = m.end()
    return out


def _literal(token: str) -> str:
    if not (token.startswith("'") and token.endswith("'")):
        raise ApiError(400, "Invalid Value", reason="invalid")
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse_query(q: str):
    """A predicate over file dicts for clauses joined by 'and'."""
    tokens = _tokens(q)
    clauses = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("'") and tokens[i + 1 : i + 3] == ["in", "parents"]:
            parent = _literal(t)
            clauses.append(lambda f, p=parent: p in f.get("parents", []))
            i += 3
        elif t in ("trashed", "starred") and i + 2 < len(tokens) and tokens[i + 1] in ("=", "!="):
            want = tokens[i + 2] == "true"
            eq = tokens[i + 1] == "="
            clauses.append(lambda f, k=t, w=want, e=eq: (bool(f.get(k, False)) == w) == e)
            i += 3
        elif t in ("mimeType", "name") and i + 2 < len(tokens) and tokens[i + 1] in ("=", "!=", "contains"):
            op, value = tokens[i + 1], _literal(tokens[i + 2])
            if op == "contains" and t == "name":
                clauses.append(lambda f, v=value: v.lower() in f.get("name", "").lower())
            elif op == "contains":
                raise ApiError(400, "Invalid Value", reason="invalid")
            else:
                clauses.append(lambda f, k=t, v=value, eq=(op == "="): (f.get(k) == v) == eq)
            i += 3
        elif t == "appProperties" and tokens[i + 1 : i + 3] == ["has", "{"]:
            body = tokens[i + 3 : i + 11]   # key = '<k>' and value = '<v>' }
            if len(body) != 8 or body[0:2] != ["key", "="] or body[3:6] != ["and", "value", "="] or body[7] != "}":
                raise ApiError(400, "Invalid Value", reason="invalid")
            key, value = _literal(body[2]), _literal(body[6])
            clauses.append(lambda f, k=key, v=value: f.get("appProperties", {}).get(k) == v)
            i += 11
        else:
            raise ApiError(400, "Invalid Value", reason="invalid")
        if i < len(tokens):
            if tokens[i] != "and":
                raise ApiError(400, "Invalid Value", reason="invalid")
            i += 1
    return lambda f: all(c(f) for c in clauses)


def _field_tree(spec: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    i = 0

    def parse(level: dict[str, Any]) -> None:
        nonlocal i
        name = ""
        while i < len(spec):
            c = spec[i]
            i += 1
            if c == "(":
                level[name.strip()] = {}
                parse(level[name.strip()])
                name = ""
            elif c == ")":
                break
            elif c == ",":
                if name.strip():
                    level[name.strip()] = None
                name = ""
            else:
                name += c
        if name.strip():
            level[name.strip()] = None

    parse(tree)
    return tree


def select(obj: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, sub in tree.items():
        if key == "*":
            return obj
        if key not in obj:
            continue
        value = obj[key]
        if sub is None:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [select(v, sub) for v in value]
        else:
            out[key] = select(value, sub)
    return out


# --- the server -----------------------------------------------------------------------


@dataclass
class Fault:
    status: int
    apply: bool = False   # perform the change, then fail (a response lost on the way back)


@dataclass
class Call:
    method: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    status: int = 0


class FakeGoogle:
    """State and behaviour; `serve()` puts it behind a real HTTP server."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.documents: dict[str, FakeDocument] = {}
        self.permissions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.notifications: list[str] = []
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.calls: list[Call] = []
        self.token_requests: list[dict[str, str]] = []
        self.trusted_keys: dict[str, Any] = {}       # service-account email -> public key
        self.refresh_tokens: set[str] = set()
        self.tokens: set[str] = set()
        self.down = False
        self._ids = itertools.count(1)
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- test controls
    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail(self, method: str, status: int, times: int = 1, apply: bool = False) -> None:
        for _ in range(times):
            self.faults[method].append(Fault(status, apply))

    def trust_service_account(self, email: str, public_key) -> None:
        self.trusted_keys[email] = public_key

    def add_folder(self, folder_id: str, name: str = "folder") -> None:
        self.files[folder_id] = self._file(folder_id, name, FOLDER_MIME, [], {})

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and 200 <= c.status < 300]

    def docs_of_mime(self, mime: str = DOC_MIME) -> list[dict[str, Any]]:
        return [f for f in self.files.values() if f["mimeType"] == mime and not f.get("trashed")]

    def serve(self) -> FakeGoogle:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:   # quiet test output
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    # -- HTTP plumbing
    def _reply(self, handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, api: str, code: int, message: str, reason: str = "") -> dict[str, Any]:
        error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
        if api == "drive":
            error["errors"] = [{"message": message, "domain": "global", "reason": reason or STATUS_NAMES.get(code, "error")}]
        return {"error": error}

    def _handle(self, handler: BaseHTTPRequestHandler, verb: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if parts.path == "/token" and verb == "POST":
            status, payload = self._token(raw)
            return self._reply(handler, status, payload)
        method, params = self._route(verb, parts.path)
        api = "drive" if method is not None and method.api is DRIVE else "docs"
        if method is None:
            return self._reply(handler, 404, self._error(api, 404, f"No such method: {verb} {parts.path}"))
        call = Call(method.id, params, query, None)
        with self.lock:
            self.calls.append(call)
        try:
            auth = handler.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                raise ApiError(401, "Request had invalid authentication credentials.", "authError")
            if self.down:
                raise ApiError(503, "The service is currently unavailable.", "backendError")
            body = json.loads(raw) if raw else None
            call.body = body
            method.api.validate_query(method, query)
            request_schema = method.spec.get("request")
            if body is not None and request_schema is None:
                raise ApiError(400, f"{method.id} takes no request body.")
            if request_schema is not None:
                method.api.validate(body if body is not None else {}, request_schema, "")
            with self.lock:
                fault = self.faults[method.id].popleft() if self.faults[method.id] else None
                if fault is not None and not fault.apply:
                    raise ApiError(fault.status, "Injected fault.", "rateLimitExceeded" if fault.status == 429 else "backendError")
                implementation = getattr(self, "_" + method.id.replace(".", "_"), None)
                if implementation is None:
                    raise ApiError(501, f"The fake does not implement {method.id}.")
                payload = implementation(params, query, body or {})
                status = 204 if payload is None else 200
                if fault is not None:
                    raise ApiError(fault.status, "Injected fault after the change was applied.", "backendError")
        except ApiError as exc:
            status, payload = exc.code, self._error(api, exc.code, exc.message, exc.reason)
        except json.JSONDecodeError:
            status, payload = 400, self._error(api, 400, "Invalid JSON payload received.")
        call.status = status
        self._reply(handler, status, payload if status != 204 else None)

    def _route(self, verb: str, path: str) -> tuple[Method | None, dict[str, str]]:
        for api in (DOCS, DRIVE):
            for method in api.methods:
                m = method.pattern.match(path)
                if m and method.http_method == verb:
                    return method, {k: v for k, v in m.groupdict().items()}
        return None, {}

    # -- OAuth token endpoint
    def _token(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8")).items()}
        self.token_requests.append(form)
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            ok, why = self._check_jwt(form.get("assertion", ""))
        elif grant == "refresh_token":
            ok, why = form.get("refresh_token") in self.refresh_tokens, "Token has been expired or revoked."
        else:
            ok, why = False, f"unsupported grant_type {grant!r}"
        if not ok:
            return 400, {"error": "invalid_grant", "error_description": why}
        token = f"fake-access-{next(self._ids)}"
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _check_jwt(self, assertion: str) -> tuple[bool, str]:
        try:
            head, payload, signature = assertion.split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key = self.trusted_keys.get(claims.get("iss", ""))
            if key is None:
                return False, "Invalid grant: account not found"
            key.verify(
                base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                f"{head}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            if claims.get("exp", 0) < time.time():
                return False, "Invalid JWT: Token must be a short-lived token"
            return True, ""
        except (ValueError, InvalidSignature):
            return False, "Invalid JWT Signature."

    # -- Drive
    def _file(self, file_id: str, name: str, mime: str, parents: list[str], app_properties: dict[str, str]) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return {
            "kind": "drive#file",
            "id": file_id,
            "name": name,
            "mimeType": mime,
            "parents": parents,
            "appProperties": dict(app_properties),
            "trashed": False,
            "createdTime": now,
            "modifiedTime": now,
            "webViewLink": f"https://docs.google.com/document/d/{file_id}/edit?usp=drivesdk",
        }

    def _get_file(self, file_id: str) -> dict[str, Any]:
        if file_id not in self.files:
            raise ApiError(404, f"File not found: {file_id}.", "notFound")
        return self.files[file_id]

    @staticmethod
    def _fields(query: dict[str, str], default: str) -> dict[str, Any]:
        return _field_tree(query.get("fields") or default)

    def _drive_files_create(self, params, query, body) -> dict[str, Any]:
        parents = body.get("parents", [])
        if len(parents) > 1:
            raise ApiError(403, "Increasing the number of parents is not allowed.", "cannotAddParent")
        for parent in parents:
            self._get_file(parent)
        file_id = f"doc{next(self._ids):04d}" + "x" * 20
        mime = body.get("mimeType", "application/octet-stream")
        record = self._file(file_id, body.get("name", "Untitled"), mime, parents, body.get("appProperties", {}))
        if "description" in body:
            record["description"] = body["description"]
        self.files[file_id] = record
        if mime == DOC_MIME:
            self.documents[file_id] = FakeDocument(file_id, record["name"])
        return select(record, self._fields(query, "kind,id,name,mimeType"))

    def _drive_files_get(self, params, query, body) -> dict[str, Any]:
        return select(self._get_file(params["fileId"]), self._fields(query, "kind,id,name,mimeType"))

    def _drive_files_list(self, params, query, body) -> dict[str, Any]:
        matches = parse_query(query["q"]) if query.get("q") else (lambda f: True)
        found = [f for f in self.files.values() if matches(f)]
        found.sort(key=lambda f: (f["createdTime"], f["id"]))
        size = int(query.get("pageSize", 100))
        offset = int(query.get("pageToken") or 0)
        page = found[offset : offset + size]
        result: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False, "files": page}
        if offset + size < len(found):
            result["nextPageToken"] = str(offset + size)
        return select(result, self._fields(query, "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)"))

    def _drive_files_update(self, params, query, body) -> dict[str, Any]:
        record = self._get_file(params["fileId"])
        if "parents" in body:
            raise ApiError(
                403,
                "The parents field is not directly writable in update requests. Use the addParents and removeParents parameters instead.",
                "fieldNotWritable",
            )
        for parent in filter(None, query.get("addParents", "").split(",")):
            self._get_file(parent)
            record["parents"].append(parent)
        for parent in filter(None, query.get("removeParents", "").split(",")):
            if parent in record["parents"]:
                record["parents"].remove(parent)
        for key in ("name", "description", "trashed"):
            if key in body:
                record[key] = body[key]
        if "appProperties" in body:
            for key, value in body["appProperties"].items():
                if value is None:
                    record["appProperties"].pop(key, None)
                else:
                    record["appProperties"][key] = value
        if "name" in body and record["id"] in self.documents:
            self.documents[record["id"]].title = body["name"]
        return select(record, self._fields(query, "kind,id,name,mimeType"))

    def _drive_files_delete(self, params, query, body) -> None:
        self._get_file(params["fileId"])
        del self.files[params["fileId"]]
        self.documents.pop(params["fileId"], None)
        self.permissions.pop(params["fileId"], None)
        return None

    def _drive_permissions_create(self, params, query, body) -> dict[str, Any]:
        file_id = params["fileId"]
        self._get_file(file_id)
        kind, role = body.get("type"), body.get("role")
        if kind not in ("user", "group", "domain", "anyone"):
            raise ApiError(400, "The permission type field is required.", "required")
        if role not in ("owner", "organizer", "fileOrganizer", "writer", "commenter", "reader"):
            raise ApiError(400, "The permission role field is required.", "required")
        if kind in ("user", "group") and "@" not in body.get("emailAddress", ""):
            raise ApiError(400, "The permission emailAddress field is required for this type.", "required")
        existing = next(
            (p for p in self.permissions[file_id] if p["type"] == kind and p.get("emailAddress") == body.get("emailAddress")),
            None,
        )
        if existing is None:
            existing = {"kind": "drive#permission", "id": f"perm{next(self._ids)}", "type": kind}
            if "emailAddress" in body:
                existing["emailAddress"] = body["emailAddress"]
            self.permissions[file_id].append(existing)
        existing["role"] = role
        if query.get("sendNotificationEmail", "true") == "true" and kind in ("user", "group"):
            self.notifications.append(body["emailAddress"])
        return select(existing, self._fields(query, "kind,id,type,role"))

    def _drive_permissions_list(self, params, query, body) -> dict[str, Any]:
        self._get_file(params["fileId"])
        result = {"kind": "drive#permissionList", "permissions": self.permissions[params["fileId"]]}
        return select(result, self._fields(query, "kind,permissions(kind,id,type,role)"))

    # -- Docs
    def _document(self, document_id: str) -> FakeDocument:
        if document_id not in self.documents or document_id not in self.files:
            raise ApiError(404, "Requested entity was not found.")
        return self.documents[document_id]

    def _docs_documents_create(self, params, query, body) -> dict[str, Any]:
        file_id = f"doc{next(self._ids):04d}" + "x" * 20
        self.files[file_id] = self._file(file_id, body.get("title", "Untitled document"), DOC_MIME, [], {})
        self.documents[file_id] = FakeDocument(file_id, self.files[file_id]["name"])
        return self.documents[file_id].to_json()

    def _docs_documents_get(self, params, query, body) -> dict[str, Any]:
        return self._document(params["documentId"]).to_json()

    def _docs_documents_batchUpdate(self, params, query, body) -> dict[str, Any]:
        document = self._document(params["documentId"])
        requests = body.get("requests") or []
        if not requests:
            raise ApiError(400, "Must specify at least one request.")
        required = body.get("writeControl", {}).get("requiredRevisionId")
        if required and required != f"rev{document.revision}":
            raise ApiError(400, "The document was modified since the required revision.")
        # All or nothing, as the API does: apply to a copy, keep it only if every request succeeds.
        working = copy.deepcopy(document)
        replies = [working.apply(request, f"requests[{index}]") for index, request in enumerate(requests)]
        working.revision += 1
        self.documents[document.id] = working
        return {"documentId": document.id, "replies": replies, "writeControl": {"requiredRevisionId": f"rev{working.revision}"}}


# --- credentials for tests ----------------------------------------------------------------

_KEY_CACHE: list[Any] = []


def _private_key():
    # One RSA key per test session: generating one costs ~50 ms.
    if not _KEY_CACHE:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _KEY_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEY_CACHE[0]


def write_service_account(fake: FakeGoogle, path: Path, email: str = "newsdesk@test-project.iam.gserviceaccount.com",
                          trusted: bool = True) -> Path:
    """A service-account JSON key whose token_uri is the fake's /token; the real google-auth code signs with it."""
    key = _private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    if trusted:
        fake.trust_service_account(email, key.public_key())
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "fake-key-1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": f"{fake.url}/token",
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    path.chmod(0o600)
    return path


def write_authorized_user(fake: FakeGoogle, path: Path, refresh_token: str = "fake-refresh-1") -> Path:
    """An authorized-user token file as an OAuth consent flow saves it (Credentials.to_json()).

    It holds a live access token: google-auth always refreshes authorized-user
    credentials at Google's own token endpoint (it ignores token_uri in the
    file), so a test must not need a refresh.
    """
    fake.refresh_tokens.add(refresh_token)
    token = f"fake-user-access-{next(fake._ids)}"
    fake.tokens.add(token)
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    info = {
        "type": "authorized_user",
        "token": token,
        "expiry": expiry,
        "client_id": "fake-client.apps.googleusercontent.com",
        "client_secret": "fake-secret",
        "refresh_token": refresh_token,
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    path.chmod(0o600)
    return path
