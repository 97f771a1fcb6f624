"""A local fake of the Google Docs v1 and Drive v3 APIs, for the real client libraries to talk to.

It is a real HTTP server (ThreadingHTTPServer in a thread). Routes, parameters
and request bodies are checked against the discovery documents that
google-api-python-client ships, so a request the real API would reject for an
unknown field, a wrong type or an unknown query parameter is rejected here too,
with the API's error shape {"error": {"code", "message", "status"}}.

The document model (tests/fakes/google_docs_model.py) is small but keeps the
API's rules: UTF-16 indices, the undeletable final newline, requests applied in
order and all or nothing; it has tabs, anchored comment threads and dropdown
chips. documents.get honours includeTabsContent, commentsViewMode and
suggestionsViewMode with the constraints the discovery document states.

Auth is real too: /token issues access tokens for service-account JWTs signed
by a trusted key (RS256, verified) or for known refresh tokens; every API call
must carry one of the issued tokens.

Tests steer it with `fail(method_id, status, times, apply=False)` (a queue of
faults per method: 429/500..., optionally after applying the change, as when a
response is lost), `down = True` (every API call answers 503), act as an
editor in the Docs UI with `editor_comment`, `editor_reply` and
`documents[id].select_option`, and read `calls`, `files`, `documents`,
`permissions`. Posts are authored by who the access token speaks for (the
service account's email), so `author.me` is true only for the caller's own.
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
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.fakes.loopback import LoopbackHTTPServer
from tests.fakes.google_docs_model import DISCOVERY, ApiError, Context, FakeDocument, u16  # noqa: F401  (re-exported)

DOC_MIME = "application/vnd.google-apps.document"
FOLDER_MIME = "application/vnd.google-apps.folder"
SERVICE_PRINCIPAL = "newsdesk-service"   # who a token from a refresh or a written token file speaks for
_COMMENT_REQUESTS = frozenset({"insertComment", "addCommentReply", "updateCommentPost", "deleteComment", "deleteCommentReply"})
STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


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
        self.principals: dict[str, str] = {}          # access token -> who it speaks for (post authors)
        self.down = False
        self._last_principal = SERVICE_PRINCIPAL
        self._ids = itertools.count(1)
        self.httpd: LoopbackHTTPServer | None = None
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

        self.httpd = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
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
        auth = handler.headers.get("Authorization", "")
        principal = self.principals.get(auth[7:], SERVICE_PRINCIPAL)
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
                payload = implementation(params, query, body or {}, principal)
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
        self._last_principal = SERVICE_PRINCIPAL
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
        self.principals[token] = self._last_principal
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
            self._last_principal = claims.get("iss", SERVICE_PRINCIPAL)
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

    def _drive_files_create(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
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

    def _drive_files_get(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
        return select(self._get_file(params["fileId"]), self._fields(query, "kind,id,name,mimeType"))

    def _drive_files_list(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
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

    def _drive_files_update(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
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

    def _drive_files_delete(self, params, query, body, principal=SERVICE_PRINCIPAL) -> None:
        self._get_file(params["fileId"])
        del self.files[params["fileId"]]
        self.documents.pop(params["fileId"], None)
        self.permissions.pop(params["fileId"], None)
        return None

    def _drive_permissions_create(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
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

    def _drive_permissions_list(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
        self._get_file(params["fileId"])
        result = {"kind": "drive#permissionList", "permissions": self.permissions[params["fileId"]]}
        return select(result, self._fields(query, "kind,permissions(kind,id,type,role)"))

    # -- Docs
    def _document(self, document_id: str) -> FakeDocument:
        if document_id not in self.documents or document_id not in self.files:
            raise ApiError(404, "Requested entity was not found.")
        return self.documents[document_id]

    def _docs_documents_create(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
        file_id = f"doc{next(self._ids):04d}" + "x" * 20
        self.files[file_id] = self._file(file_id, body.get("title", "Untitled document"), DOC_MIME, [], {})
        self.documents[file_id] = FakeDocument(file_id, self.files[file_id]["name"])
        return self.documents[file_id].to_json()

    def _docs_documents_get(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
        include_tabs = query.get("includeTabsContent") == "true"
        comments_mode = query.get("commentsViewMode")
        # The rules the discovery document states for these parameters.
        if comments_mode and not include_tabs:
            raise ApiError(400, "commentsViewMode requires includeTabsContent=true.")
        if comments_mode == "COMMENTS_VIEW_MODE_INCLUDED" and query.get("suggestionsViewMode") != "SUGGESTIONS_INLINE":
            raise ApiError(400, "commentsViewMode COMMENTS_VIEW_MODE_INCLUDED requires suggestionsViewMode=SUGGESTIONS_INLINE.")
        included = comments_mode in ("COMMENTS_VIEW_MODE_INCLUDED", "COMMENTS_VIEW_MODE_DEFAULT_FOR_CURRENT_ACCESS")
        return self._document(params["documentId"]).to_json(include_tabs=include_tabs, comments=included, viewer=principal)

    def _docs_documents_batchUpdate(self, params, query, body, principal=SERVICE_PRINCIPAL) -> dict[str, Any]:
        document = self._document(params["documentId"])
        requests = body.get("requests") or []
        if not requests:
            raise ApiError(400, "Must specify at least one request.")
        required = body.get("writeControl", {}).get("requiredRevisionId")
        if required and required != f"rev{document.revision}":
            raise ApiError(400, "The document was modified since the required revision.")
        # All or nothing, as the API does: apply to a copy, keep it only if every request succeeds.
        working = copy.deepcopy(document)
        context = Context(principal, frozenset(self._users_with_access(document.id)))
        replies = [working.apply(request, f"requests[{index}]", context) for index, request in enumerate(requests)]
        working.revision += 1
        self.documents[document.id] = working
        commented = any(next(iter(r)) in _COMMENT_REQUESTS for r in requests)
        return {"documentId": document.id, "replies": replies,
                "commentUpdateState": "ALL_SAVED" if commented else "NO_UPDATES_REQUESTED",
                "writeControl": {"requiredRevisionId": f"rev{working.revision}"}}

    def _users_with_access(self, file_id: str) -> list[str]:
        return [p.get("emailAddress", "").lower() for p in self.permissions[file_id]
                if p.get("role") in ("owner", "organizer", "fileOrganizer", "writer", "commenter")]

    # -- what editors do in the Docs editor (test controls, not API methods)
    def editor_comment(self, document_id: str, author: str, content: str, quote: str | None = None,
                       tab: int = 0) -> str:
        """An editor comments on the first occurrence of `quote` (or the whole first paragraph); returns the comment id."""
        with self.lock:
            document = self.documents[document_id]
            text = document.text(tab)
            start = text.index(quote) if quote else 0
            end = start + len(quote) if quote else text.index("\n")
            begin = 1 + u16(text[:start])
            reply = document.apply({"insertComment": {"range": {"startIndex": begin, "endIndex": begin + u16(text[start:end]),
                                                                "tabId": document.tabs[tab].id}, "content": content}},
                                   "editor", Context(author))
            document.revision += 1
            return reply["insertComment"]["commentThread"]["commentId"]

    def editor_reply(self, document_id: str, comment_id: str, author: str, content: str = "",
                     action: str | None = None) -> None:
        """An editor replies to a thread, or resolves / reopens it (action RESOLVE / REOPEN)."""
        post: dict[str, Any] = {"content": content} if content else {}
        if action:
            post["commentAction"] = action
        with self.lock:
            document = self.documents[document_id]
            document.apply({"addCommentReply": {"commentId": comment_id, "post": post}}, "editor", Context(author))
            document.revision += 1


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
