"""Publish checked drafts for editors, and bring their approvals back.

Targets (publishing.target):
  - "google": one Google Doc per draft in publishing.google.folder_id, shared
    only with the configured editors (role "writer": they must be able to edit
    the text and move the file into the approved folder; "commenter" could do
    neither). Never link sharing, never "anyone".
  - "local": Markdown + HTML files in the outbox folder (pipeline/services/outbox.py).

Only drafts in state `checked` are published. A draft becomes `published`
together with its publication row being marked `written`, in one transaction.
Anything that fails leaves the draft `checked`, with the reason in the
StageReport and in drafts.state_reason, and the next run tries again.

Idempotence and crash recovery for Google: before creating a file the ledger
records a publication row in state `creating`; the Drive file carries the
draft id in appProperties (newsdeskDraftId) and description. Whenever the
ledger has no doc id for a draft, Drive is searched for that marker first, so
a run that died between files.create and writing the ledger adopts the
existing document instead of making a second one. A known doc id is updated in
place by one batchUpdate that rewrites the paragraphs that changed (so comment
anchors on the others survive) and reconciles our fact-check comments and the
status chip (pipeline/services/doc_review.py); sources and the fact-check
report go to a second tab, "Sources & fact-check" (a second write when the tab
is new, since Google names it).

Document writes are never replayed blindly. A batchUpdate is not idempotent:
when Google applies it and the answer is lost (5xx, timeout), sending the same
requests again writes the article a second time. So every attempt of
`GoogleClient.write_document` reads the document afresh, builds its requests
from what the document holds now, and sends them with
writeControl.requiredRevisionId set to the revision it read: a retry after a
lost answer rebuilds over the text already written (replacing it, not
appending), and a write that raced an editor's edit is refused by Google and
rebuilt from the newer revision instead of landing on shifted indices.

Google calls go through `GoogleClient._call`: 429 and 5xx answers and
connection failures are retried with exponential backoff (tenacity; the wait
is injectable), and writes pass a per-minute rate limiter sized to the Docs
write quota (60 writes per minute per user).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.text.editdiff import article_text, edit_rate
from pipeline.services.doc_review import (
    READ_PARAMS,
    STATUS_PREFIX,
    chip_requests,
    chip_status,
    comment_requests,
    editor_notes,
    flagged_keys,
    status_block,
    wanted_comments,
)
from pipeline.services.gdocs import (
    Block,
    article_from_blocks,
    clean_text,
    content_requests,
    SOURCES_TAB,
    first_tab,
    layout_draft,
    split_for_tabs,
    parse_document,
    tab_text,
    tab_titled,
    text_edits,
    utf16_len,
)
from pipeline.core.corrections import learn_house_rules, record_corrections
from pipeline.core.ledger import Ledger, stable_hash, utcnow
from pipeline.core.models import Article, Draft, DraftState, FactCheckReport, PublishMeta, ResearchPack, StageReport
from pipeline.services.outbox import APPROVED_DIR, file_stem, parse_markdown, render_html, render_markdown, write_atomic
from pipeline.text.templates import TemplateError, load_templates
from pipeline.text.metadata import build_meta, is_header_line, meta_from_lines, validate_meta

log = logging.getLogger("newsdesk.publisher")

SCOPES = ["https://www.googleapis.com/auth/documents", "https://www.googleapis.com/auth/drive"]
DOC_MIME = "application/vnd.google-apps.document"
MARKER_KEY = "newsdeskDraftId"
ORIGIN_KEY, ORIGIN_VALUE = "newsdesk", "draft"
EDITOR_ROLE = "writer"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DOCS_WRITES_PER_MINUTE = 60


class PublishError(Exception):
    """One draft could not be published or synced; the message says why."""


class CredentialsError(PublishError):
    """Google credentials are missing or were rejected. Nothing can be published to Google until fixed."""


class GoogleUnavailable(PublishError):
    """Google kept failing (5xx, 429, network) after retries: try again on a later run."""


# --- drafts from the ledger --------------------------------------------------------


def _draft_from_row(row: Any) -> tuple[Draft, FactCheckReport | None]:
    draft = Draft(
        id=row.id,
        story_key=row.story_key,
        template=row.template,
        writer_model=row.writer_model,
        method=row.method,
        prompt_versions=row.prompt_versions or {},
        article=Article.model_validate(row.article),
        violations=row.violations or [],
        state=DraftState(row.state),
        created=row.created,
        meta=PublishMeta.model_validate(row.meta) if row.meta else None,
    )
    report = FactCheckReport.model_validate(row.factcheck) if row.factcheck else None
    return draft, report


def _load_drafts(ledger: Ledger, state: DraftState) -> Iterator[tuple[Any, Draft | None, FactCheckReport | None, str]]:
    """Every draft row in `state`; a row that does not parse comes back with its error instead."""
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.drafts).where(schema.drafts.c.state == state.value).order_by(schema.drafts.c.created)
        ).all()
    for row in rows:
        try:
            draft, report = _draft_from_row(row)
        except (ValueError, TypeError) as exc:
            yield row, None, None, f"draft {row.id}: stored article or fact-check is not valid: {_first_line(exc)}"
            continue
        yield row, draft, report, ""


def _publication(ledger: Ledger, draft_id: str) -> Any:
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.publications).where(schema.publications.c.draft_id == draft_id)).first()


def _save_publication(ledger: Ledger, draft_id: str, **values: Any) -> None:
    now = utcnow()
    with ledger.begin() as connection:
        table = schema.publications
        changed = connection.execute(update(table).where(table.c.draft_id == draft_id).values(updated=now, **values)).rowcount
        if not changed:
            connection.execute(insert(table).values(draft_id=draft_id, created=now, updated=now, **values))


def _mark_published(ledger: Ledger, draft_id: str, target: str, doc_id: str, url: str, content_hash: str) -> None:
    """Publication written and draft published land together, or neither does."""
    now = utcnow()
    with ledger.begin() as connection:
        table = schema.publications
        values = dict(target=target, doc_id=doc_id, url=url, state="written", content_hash=content_hash, updated=now)
        if not connection.execute(update(table).where(table.c.draft_id == draft_id).values(**values)).rowcount:
            connection.execute(insert(table).values(draft_id=draft_id, created=now, **values))
        connection.execute(
            update(schema.drafts)
            .where(schema.drafts.c.id == draft_id, schema.drafts.c.state == DraftState.checked.value)
            .values(state=DraftState.published.value, state_reason=None, updated=now)
        )


def _note_failure(ledger: Ledger, draft_id: str, reason: str) -> None:
    """The draft stays where it was; the reason shows in status until a later run succeeds.

    Best effort: when the ledger cannot take even this (a full disk), the draft is
    still where it was and the reason is in the stage report and the log."""
    try:
        with ledger.begin() as connection:
            connection.execute(
                update(schema.drafts).where(schema.drafts.c.id == draft_id).values(state_reason=reason[:2000], updated=utcnow())
            )
    except SQLAlchemyError as exc:
        log.error("draft %s: %s; the reason could not be recorded in the ledger: %s", draft_id, reason, _first_line(exc))


def _store_approval(ledger: Ledger, draft: Draft, doc_id: str, article: Article, rate: float, approved_by: str,
                    meta: PublishMeta | None = None, meta_problems: Sequence[str] = ()) -> None:
    """The approval row and the draft's move to `approved`, in one transaction.

    A draft approved before, then republished and approved again, keeps one
    row: the latest approval replaces the earlier one.
    """
    now = utcnow()
    values = dict(doc_id=doc_id, article=article.model_dump(mode="json"), edit_rate=rate,
                  writer_model=draft.writer_model, approved_at=now, approved_by=approved_by,
                  meta=meta.model_dump(mode="json") if meta else None)
    # Approved all the same (the editor decides), but status shows what the CMS would refuse.
    reason = f"approved; the edited metadata breaks the template: {'; '.join(meta_problems)}"[:2000] if meta_problems else None
    with ledger.begin() as connection:
        table = schema.approvals
        if not connection.execute(update(table).where(table.c.draft_id == draft.id).values(**values)).rowcount:
            connection.execute(insert(table).values(draft_id=draft.id, **values))
        connection.execute(
            update(schema.drafts)
            .where(schema.drafts.c.id == draft.id, schema.drafts.c.state == DraftState.published.value)
            .values(state=DraftState.approved.value, state_reason=reason, updated=now)
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _local_day(config: Config, draft: Draft) -> date:
    try:
        zone = ZoneInfo(config.newsroom.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    created = draft.created if draft.created.tzinfo else draft.created.replace(tzinfo=ZoneInfo("UTC"))
    return created.astimezone(zone).date()


def document_name(config: Config, draft: Draft) -> str:
    """`YYYY-MM-DD · <template> · <headline>`, the day in the newsroom's timezone."""
    headline = clean_text(draft.article.headline)[:200] or "(untitled draft)"
    return f"{_local_day(config, draft).isoformat()} · {draft.template} · {headline}"


def _content_hash(name: str, blocks: list[Block]) -> str:
    return stable_hash(name, [asdict(b) for b in blocks])


# --- Google: credentials, services, calls ---------------------------------------------


def load_credentials(config: Config):
    """Service-account or authorized-user credentials named by config (or GOOGLE_APPLICATION_CREDENTIALS).

    Raises CredentialsError with the file and the problem. The key is only
    checked by Google on the first call; a rejection then also raises
    CredentialsError.
    """
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    google = config.publishing.google
    if google.credentials_file is not None:
        path, origin = config.path(google.credentials_file), "publishing.google.credentials_file"
    elif google.token_file is not None:
        path, origin = config.path(google.token_file), "publishing.google.token_file"
    elif os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        path, origin = Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]), "GOOGLE_APPLICATION_CREDENTIALS"
    else:
        raise CredentialsError(
            "no Google credentials: set publishing.google.credentials_file (a service-account JSON key) or "
            "publishing.google.token_file (an authorized-user token), or GOOGLE_APPLICATION_CREDENTIALS; "
            "or set publishing.target = \"local\" to publish to the outbox folder"
        )
    if not path.is_file():
        raise CredentialsError(f"Google credentials file {path} (from {origin}) does not exist")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CredentialsError(f"Google credentials file {path} is not readable JSON: {_first_line(exc)}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)
    except (ValueError, KeyError) as exc:
        raise CredentialsError(f"Google credentials file {path} is incomplete: {_first_line(exc)}") from None
    raise CredentialsError(
        f"Google credentials file {path} has type {kind!r}; expected a service-account key "
        "(\"service_account\") or an authorized-user token (\"authorized_user\")"
    )


def build_services(config: Config, credentials, timeout_s: float = 30.0) -> tuple[Any, Any]:
    """Docs v1 and Drive v3 clients from the discovery documents shipped with the library (no network)."""
    import google_auth_httplib2
    import httplib2
    from googleapiclient.discovery import build

    google = config.publishing.google
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=timeout_s))
    docs_options = {"api_endpoint": google.api_endpoint} if google.api_endpoint else None
    drive_options = {"api_endpoint": _drive_root(google.drive_endpoint)} if google.drive_endpoint else None
    docs = build("docs", "v1", http=http, static_discovery=True, cache_discovery=False, client_options=docs_options)
    drive = build("drive", "v3", http=http, static_discovery=True, cache_discovery=False, client_options=drive_options)
    return docs, drive


def _drive_root(endpoint: str) -> str:
    """Drive's service path appended to a configured host, unless it is already there."""
    root = endpoint.rstrip("/")
    return root + "/" if root.endswith("/drive/v3") else root + "/drive/v3/"


class WriteRateLimiter:
    """At most `per_minute` writes in any 60-second window; waits (with the injected sleep) when full."""

    def __init__(self, per_minute: int = DOCS_WRITES_PER_MINUTE, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute, self.clock, self.sleep = per_minute, clock, sleep
        self.recent: deque[float] = deque()
        self.waited_s = 0.0

    def acquire(self) -> None:
        now = self.clock()
        while self.recent and now - self.recent[0] >= 60.0:
            self.recent.popleft()
        if len(self.recent) >= self.per_minute:
            pause = 60.0 - (now - self.recent[0])
            self.waited_s += pause
            self.sleep(pause)
            now = self.clock()
            self.recent.popleft()
        self.recent.append(now)


def _is_transient(exc: BaseException) -> bool:
    import httplib2
    from google.auth.exceptions import TransportError
    from googleapiclient.errors import HttpError

    if isinstance(exc, RevisionMoved):
        return True
    if isinstance(exc, HttpError):
        return exc.status_code in RETRY_STATUSES
    return isinstance(exc, (OSError, TimeoutError, httplib2.HttpLib2Error, TransportError))


class RevisionMoved(Exception):
    """The document changed between our read and our write (Google refused the required revision): read again."""


def _is_revision_conflict(exc: BaseException) -> bool:
    from googleapiclient.errors import HttpError

    # Google answers a stale requiredRevisionId with 400 and a message about the revision.
    return isinstance(exc, HttpError) and exc.status_code == 400 and "revision" in _reason(exc).lower()


class GoogleClient:
    """The few Docs and Drive operations the publisher needs, each retried and rate limited."""

    def __init__(self, docs, drive, *, retry_wait=None, attempts: int = 5, limiter: WriteRateLimiter | None = None,
                 credentials_origin: str = "the configured credentials") -> None:
        from tenacity import wait_exponential_jitter

        self.docs, self.drive = docs, drive
        self.wait = retry_wait if retry_wait is not None else wait_exponential_jitter(initial=1, max=30)
        self.attempts = attempts
        self.limiter = limiter or WriteRateLimiter()
        self.origin = credentials_origin
        self.counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config, **kwargs) -> GoogleClient:
        credentials = load_credentials(config)
        docs, drive = build_services(config, credentials)
        return cls(docs, drive, **kwargs)

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        from google.auth.exceptions import RefreshError
        from googleapiclient.errors import HttpError
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt

        try:
            for attempt in Retrying(
                retry=retry_if_exception(_is_transient), stop=stop_after_attempt(self.attempts), wait=self.wait, reraise=False
            ):
                with attempt:
                    return fn()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if isinstance(last, RevisionMoved):
                raise GoogleUnavailable(
                    f"the document kept changing while {what} was written ({self.attempts} attempts, each from a "
                    "fresh read); try again on a later run"
                ) from None
            status = f"HTTP {last.status_code}" if isinstance(last, HttpError) else _first_line(last)
            raise GoogleUnavailable(f"Google unavailable for {what} after {self.attempts} attempts ({status})") from None
        except RefreshError as exc:
            raise CredentialsError(f"Google rejected the credentials ({self.origin}): {_first_line(exc)}") from None
        except HttpError as exc:
            if exc.status_code == 401:
                raise CredentialsError(f"Google rejected the credentials ({self.origin}) for {what}") from None
            raise PublishError(f"Google refused {what}: HTTP {exc.status_code} {_reason(exc)}") from exc

    def _call(self, request_factory: Callable[[], Any], what: str, *, write: bool = False, retry: bool = True) -> Any:
        def once() -> Any:
            if write:
                self.limiter.acquire()
            self.counts[what] = self.counts.get(what, 0) + 1
            return request_factory().execute(num_retries=0)

        if retry:
            return self._retrying(once, what)
        return once()

    # -- Drive
    def find_by_marker(self, draft_id: str) -> list[dict[str, Any]]:
        query = f"appProperties has {{ key='{MARKER_KEY}' and value='{_q(draft_id)}' }} and trashed = false"
        return self.list_files(query, "files(id,name,webViewLink,createdTime)")

    def list_files(self, query: str, fields: str) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._call(
                lambda: self.drive.files().list(
                    q=query, fields=f"nextPageToken,{fields}", pageSize=100, pageToken=token,
                    supportsAllDrives=True, includeItemsFromAllDrives=True, corpora="allDrives",
                ),
                "files.list",
            )
            files += page.get("files", [])
            token = page.get("nextPageToken")
            if not token:
                return files

    def create_document(self, name: str, folder_id: str | None, draft_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "mimeType": DOC_MIME,
            "appProperties": {MARKER_KEY: draft_id, ORIGIN_KEY: ORIGIN_VALUE},
            "description": f"Newsdesk draft {draft_id}",
        }
        if folder_id:
            body["parents"] = [folder_id]
        # Not retried on its own: a retry after a lost response would make a second file.
        # find_or_create retries the lookup-then-create pair instead.
        return self._call(
            lambda: self.drive.files().create(body=body, fields="id,name,webViewLink", supportsAllDrives=True),
            "files.create", write=True, retry=False,
        )

    def find_or_create(self, name: str, folder_id: str | None, draft_id: str,
                       after_create: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], bool]:
        """(file, created): the draft's existing file if Drive has one with its marker, else a new one."""
        def once() -> tuple[dict[str, Any], bool]:
            found = self.find_by_marker(draft_id)
            if found:
                return sorted(found, key=lambda f: (f.get("createdTime", ""), f["id"]))[0], False
            created = self.create_document(name, folder_id, draft_id)
            if after_create is not None:
                after_create(created)
            return created, True

        return self._retrying(once, "files.create")

    def rename(self, file_id: str, name: str) -> None:
        self._call(
            lambda: self.drive.files().update(fileId=file_id, body={"name": name}, fields="id", supportsAllDrives=True),
            "files.update", write=True,
        )

    def shared_with(self, file_id: str) -> set[str]:
        result = self._call(
            lambda: self.drive.permissions().list(
                fileId=file_id, fields="permissions(id,type,role,emailAddress)", supportsAllDrives=True
            ),
            "permissions.list",
        )
        return {p.get("emailAddress", "").lower() for p in result.get("permissions", []) if p.get("type") == "user"}

    def share(self, file_id: str, emails: list[str], notify: bool, already: set[str] = frozenset()) -> list[str]:
        """Give each editor writer access; only named users, never a link or "anyone"."""
        added = []
        for email in emails:
            if email.lower() in already:
                continue
            permission = {"type": "user", "role": EDITOR_ROLE, "emailAddress": email}
            self._call(
                lambda: self.drive.permissions().create(
                    fileId=file_id, body=permission, sendNotificationEmail=notify, supportsAllDrives=True, fields="id"
                ),
                "permissions.create", write=True,
            )
            added.append(email)
        return added

    # -- Docs
    def get_document(self, document_id: str, retry: bool = True, **params: Any) -> dict[str, Any]:
        return self._call(lambda: self.docs.documents().get(documentId=document_id, **params), "documents.get",
                          retry=retry)

    def batch_update(self, document_id: str, requests: list[dict[str, Any]], revision_id: str | None) -> dict[str, Any]:
        """One batchUpdate, sent once: not retried here, because a retry after a lost answer would apply it twice.

        `revision_id` (the revision the requests were built from) makes Google refuse the batch when the
        document moved on since; use `write_document` to get reads, rebuilds and retries."""
        body: dict[str, Any] = {"requests": requests}
        if revision_id:
            body["writeControl"] = {"requiredRevisionId": revision_id}
        from googleapiclient.errors import HttpError

        try:
            return self._call(
                lambda: self.docs.documents().batchUpdate(documentId=document_id, body=body),
                "documents.batchUpdate", write=True, retry=False,
            )
        except HttpError as exc:
            if _is_revision_conflict(exc):
                raise RevisionMoved(_reason(exc)) from exc
            raise

    def write_document(self, document_id: str, build: Callable[[dict[str, Any]], list[dict[str, Any]]],
                       **read_params: Any) -> dict[str, Any]:
        """Read, build, write with requiredRevisionId; on a transient failure or a moved revision, all three again.

        `build(document)` returns the requests that take the document as read to the wanted state (an empty
        list: nothing to write). Because every attempt starts from a fresh read, a batch Google applied
        but whose answer was lost is never replayed on top of itself. `read_params` go to documents.get.
        Returns the document as last read.
        """
        def once() -> dict[str, Any]:
            document = self.get_document(document_id, retry=False, **read_params)
            requests = build(document)
            if requests:
                self.batch_update(document_id, requests, document.get("revisionId"))
            return document

        return self._retrying(once, "documents.batchUpdate")


def _q(value: str) -> str:
    """A string literal for a Drive query."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _reason(exc) -> str:
    try:
        return json.loads(exc.content.decode("utf-8"))["error"]["message"][:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return _first_line(exc)


def _is_not_found(exc: BaseException) -> bool:
    from googleapiclient.errors import HttpError

    cause = exc.__cause__
    return isinstance(exc, PublishError) and isinstance(cause, HttpError) and cause.status_code == 404


def _valid_editors(config: Config) -> list[str]:
    editors = [e.strip() for e in config.publishing.google.editors if e.strip()]
    bad = [e for e in editors if "@" not in e or any(c.isspace() for c in e)]
    if bad:
        raise PublishError(f"publishing.google.editors has entries that are not email addresses: {bad}")
    return list(dict.fromkeys(editors))


# --- publishing --------------------------------------------------------------------------


@dataclass
class Published:
    draft_id: str
    headline: str
    location: str          # doc URL or the HTML file's path
    created: bool


def publish_to_google(config: Config, ledger: Ledger, client: GoogleClient, draft: Draft,
                      report: FactCheckReport | None) -> Published:
    google = config.publishing.google
    editors = _valid_editors(config)
    blocks = [status_block(), *layout_draft(draft, report)]
    name = document_name(config, draft)
    content_hash = _content_hash(name, blocks)
    headline = blocks[1].text

    publication = _publication(ledger, draft.id)
    known = publication if publication is not None and publication.target == "google" else None
    doc_id, url = (known.doc_id, known.url) if known is not None else (None, None)
    if known is None:
        _save_publication(ledger, draft.id, target="google", doc_id=None, url=None, state="creating", content_hash=None)
    elif known.state == "written" and known.content_hash == content_hash and doc_id:
        _mark_published(ledger, draft.id, "google", doc_id, url, content_hash)
        return Published(draft.id, headline, url, created=False)

    created = False
    already: set[str] = set()
    if doc_id:
        try:
            already = client.shared_with(doc_id)
        except PublishError as exc:
            if not _is_not_found(exc):
                raise
            doc_id = None   # deleted by someone: make it anew (the marker search below finds no live copy)
    if not doc_id:
        def remember(file: dict[str, Any]) -> None:
            _save_publication(ledger, draft.id, doc_id=file["id"], url=_doc_url(file), state="creating")

        file, created = client.find_or_create(name, google.folder_id, draft.id, after_create=remember)
        doc_id, url = file["id"], _doc_url(file)
        _save_publication(ledger, draft.id, doc_id=doc_id, url=url, state="creating")
        already = set() if created else client.shared_with(doc_id)
    # Shared before the write: a comment can only be assigned to someone who can open the document.
    client.share(doc_id, editors, google.notify_editors, already)
    article, checking = split_for_tabs(blocks) if google.sources_tab else (blocks, [])
    wanted = wanted_comments(article, report, assignee_for(config, ledger, draft, editors))
    flagged = flagged_keys(report)
    text = "\n".join(b.text for b in article)

    def build(current: dict[str, Any]) -> list[dict[str, Any]]:
        # Built from a fresh read on every attempt (text, comments, chip, tabs): a retry after a lost answer
        # finds what the lost write did and adds nothing twice.
        tab = first_tab(current)
        old = tab_text(tab)
        _, moved = text_edits(old, text)
        requests = (
            content_requests(article, existing_text=old)
            + comment_requests(current, tab, wanted, flagged, moved)
            # After the comments: the chip shifts what follows it by one index, and anchors move with their text.
            + chip_requests(tab, 1 + utf16_len(STATUS_PREFIX), chip_status(tab) or "draft")
        )
        return requests + build_checking(current, add_tab=True)

    def build_checking(current: dict[str, Any], add_tab: bool = False) -> list[dict[str, Any]]:
        if not checking:
            return []
        second = tab_titled(current, SOURCES_TAB)
        if second is None:
            # Its id comes back from Google: the tab's text goes in with the next write.
            return [{"addDocumentTab": {"tabProperties": {"title": SOURCES_TAB}}}] if add_tab else []
        tab_id = second["tabProperties"]["tabId"]
        return content_requests(checking, existing_text=tab_text(second["documentTab"]), tab_id=tab_id)

    document = client.write_document(doc_id, build, **READ_PARAMS)
    if checking and tab_titled(document, SOURCES_TAB) is None:
        client.write_document(doc_id, build_checking, **READ_PARAMS)   # the tab made by the write above
    if document.get("title") != name:
        client.rename(doc_id, name)
    _mark_published(ledger, draft.id, "google", doc_id, url, content_hash)
    return Published(draft.id, headline, url, created=created)


def assignee_for(config: Config, ledger: Ledger, draft: Draft, editors: list[str]) -> str | None:
    """Who gets the draft's fact-check comments: its topic's editor, else the editor on duty on the draft's day."""
    google = config.publishing.google
    if google.topic_editors:
        with ledger.engine.connect() as connection:
            topics = connection.execute(
                select(schema.stories.c.topics).where(schema.stories.c.key == draft.story_key)
            ).scalar()
        for topic in topics or []:
            if topic in google.topic_editors:
                return google.topic_editors[topic].strip()
    if google.on_duty == "none" or not editors:
        return None
    # In turn, one editor per day: the same draft always goes to the same editor, whatever the clock says.
    return editors[_local_day(config, draft).toordinal() % len(editors)]


def _doc_url(file: dict[str, Any]) -> str:
    return file.get("webViewLink") or f"https://docs.google.com/document/d/{file['id']}/edit"


def publish_to_outbox(config: Config, ledger: Ledger, draft: Draft, report: FactCheckReport | None) -> Published:
    outbox = config.path(config.publishing.outbox)
    blocks = layout_draft(draft, report)
    stem = file_stem(_local_day(config, draft), draft.story_key, blocks[0].text)
    html_path = outbox / f"{stem}.html"
    write_atomic(outbox / f"{stem}.md", render_markdown(blocks, draft.id))
    write_atomic(html_path, render_html(blocks))
    previous = _publication(ledger, draft.id)
    if previous is not None and previous.target == "local" and previous.doc_id and previous.doc_id != stem:
        # The headline changed: the old files would be a stale second copy.
        for suffix in (".md", ".html"):
            (outbox / f"{previous.doc_id}{suffix}").unlink(missing_ok=True)
    _mark_published(ledger, draft.id, "local", stem, html_path.as_uri(), _content_hash(stem, blocks))
    return Published(draft.id, blocks[0].text, str(html_path), created=previous is None)


def publish_ready(config: Config, ledger: Ledger, *, client: GoogleClient | None = None,
                  retry_wait=None, limiter: WriteRateLimiter | None = None) -> StageReport:
    """Publish every `checked` draft to the configured target.

    report.notes: "published", "created", "target", and one "link <draft id[:8]>"
    per published draft (doc URL or HTML path) for the CLI to print.
    """
    started = time.monotonic()
    target = config.publishing.target
    report = StageReport(stage="publish", notes={"target": target, "published": 0, "created": 0})
    ready = list(_load_drafts(ledger, DraftState.checked))
    report.items_in = len(ready)
    if not ready:
        return _finish(report, started)

    if target == "google" and not config.publishing.google.editors:
        report.notes["warning"] = "publishing.google.editors is empty: documents are shared with no one"
    if target == "google" and client is None:
        try:
            client = GoogleClient.from_config(config, retry_wait=retry_wait, limiter=limiter,
                                              credentials_origin=_credentials_origin(config))
        except CredentialsError as exc:
            report.errors.append(f"{exc}; {len(ready)} draft(s) stay ready to publish")
            for row, *_ in ready:
                _note_failure(ledger, row.id, f"not published: {exc}")
            return _finish(report, started)

    for position, (row, draft, fact_check, problem) in enumerate(ready):
        if draft is None:
            report.errors.append(problem)
            continue
        if draft.meta is None:
            draft = _with_stored_meta(config, ledger, row, draft)
        try:
            if target == "google":
                result = publish_to_google(config, ledger, client, draft, fact_check)
            else:
                result = publish_to_outbox(config, ledger, draft, fact_check)
        except (CredentialsError, GoogleUnavailable) as exc:
            # Every other draft would fail the same way; stop here and leave them all ready.
            left = len(ready) - position
            report.errors.append(f"draft {draft.id}: {exc}; {left} draft(s) stay ready for a later run")
            for later_row, *_ in ready[position:]:
                _note_failure(ledger, later_row.id, f"not published: {exc}")
            break
        except (PublishError, OSError, ValueError) as exc:
            report.errors.append(f"draft {draft.id}: {_first_line(exc)}")
            _note_failure(ledger, draft.id, f"not published: {_first_line(exc)}")
            continue
        report.items_out += 1
        report.notes["published"] = int(report.notes["published"]) + 1
        report.notes["created"] = int(report.notes["created"]) + int(result.created)
        report.notes[f"link {draft.id[:8]}"] = result.location
    if client is not None:
        for what, count in sorted(client.counts.items()):
            report.notes[f"calls {what}"] = count
    return _finish(report, started)


def _with_stored_meta(config: Config, ledger: Ledger, row: Any, draft: Draft) -> Draft:
    """A draft written before publishing metadata existed gets it now, from its stored research, and keeps it."""
    try:
        spec = load_templates(config.templates_dir).get(draft.template)
        pack = ResearchPack.model_validate(row.research) if row.research else None
    except (TemplateError, ValueError) as exc:
        log.warning("draft %s: no metadata made: %s", draft.id, _first_line(exc))
        return draft
    if spec is None or pack is None or not draft.article.headline.strip():
        return draft
    with ledger.engine.connect() as connection:
        topics = connection.execute(select(schema.stories.c.topics).where(schema.stories.c.key == draft.story_key)).scalar()
    meta = build_meta(draft.article, topics or [], pack.sources, spec.metadata, pack.language)
    with ledger.begin() as connection:
        connection.execute(update(schema.drafts).where(schema.drafts.c.id == draft.id).values(meta=meta.model_dump(mode="json")))
    return draft.model_copy(update={"meta": meta})


def _credentials_origin(config: Config) -> str:
    google = config.publishing.google
    if google.credentials_file is not None:
        return str(config.path(google.credentials_file))
    if google.token_file is not None:
        return str(config.path(google.token_file))
    return os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "no credentials")


def _finish(report: StageReport, started: float) -> StageReport:
    report.duration_s = round(time.monotonic() - started, 3)
    return report


# --- syncing approvals ------------------------------------------------------------------


def _approve(ledger: Ledger, draft: Draft, doc_id: str, blocks: list[Block], approved_by: str,
             config: Config | None = None) -> float:
    article = article_from_blocks(blocks, draft.article)
    if not article.headline or not (article.lead or article.body):
        raise PublishError("the approved document has no headline or no text to take back")
    rate = edit_rate(article_text(draft.article), article_text(article))
    meta, problems = _edited_meta(config, ledger, draft, blocks)
    _store_approval(ledger, draft, doc_id, article, rate, approved_by, meta, problems)
    return rate


def _store_spike(ledger: Ledger, draft: Draft) -> None:
    with ledger.begin() as connection:
        connection.execute(
            update(schema.drafts)
            .where(schema.drafts.c.id == draft.id, schema.drafts.c.state == DraftState.published.value)
            .values(state=DraftState.spiked.value, state_reason="spiked by an editor (the document's status chip)",
                    updated=utcnow())
        )


def _edited_meta(config: Config | None, ledger: Ledger, draft: Draft, blocks: list[Block]) -> tuple[PublishMeta | None, list[str]]:
    """The publishing metadata as the editor left it in the document's header, and what in it breaks the template."""
    meta = meta_from_lines([b.text for b in blocks if is_header_line(b.text)], draft.meta)
    if meta is None or config is None:
        return meta, []
    try:
        spec = load_templates(config.templates_dir).get(draft.template)
    except TemplateError as exc:
        return meta, [f"not checked: {_first_line(exc)}"]
    with ledger.engine.connect() as connection:
        research = connection.execute(select(schema.drafts.c.research).where(schema.drafts.c.id == draft.id)).scalar()
    sources = ResearchPack.model_validate(research).sources if research else []
    return meta, validate_meta(meta, spec.metadata, sources) if spec is not None else []


def sync_approvals(config: Config, ledger: Ledger, *, client: GoogleClient | None = None, retry_wait=None) -> StageReport:
    """Bring back drafts editors approved and what they wrote; store the edited article and its edit rate.

    Google: a document counts as approved when its status chip says Approved,
    it sits in publishing.google.approved_folder_id, or its name starts with
    approved_title_prefix; a chip set to Spiked marks the draft spiked. Every
    published document is read (with its comments) and each reply or comment
    an editor wrote is recorded once as a correction for its draft
    (pipeline/core/corrections.py); corrections made on several drafts become
    house rules. Local: the draft's .md file moved into <outbox>/approved/.
    report.notes holds "approved", one "edit_rate <draft id[:8]>" and one
    "approved_by <draft id[:8]>" (chip, folder, prefix, outbox) per approval,
    "corrections" (new ones), "spiked" and "house_rules" (rules learned).
    """
    started = time.monotonic()
    report = StageReport(stage="sync", notes={"target": config.publishing.target, "approved": 0})
    published = {draft.id: draft for _row, draft, _fc, _p in _load_drafts(ledger, DraftState.published) if draft}
    report.items_in = len(published)
    if not published:
        return _finish(report, started)
    if config.publishing.target == "google" or client is not None:
        _sync_google(config, ledger, published, report, client, retry_wait)
    _sync_local(config, ledger, published, report)
    if report.notes.get("corrections"):
        try:
            learned = learn_house_rules(ledger, config.house_rules_path, config.newsroom.house_rule_after)
        except OSError as exc:
            report.errors.append(f"house rules file {config.house_rules_path}: cannot write: {_first_line(exc)}")
            learned = []
        if learned:
            report.notes["house_rules"] = len(learned)
    return _finish(report, started)


def _record(report: StageReport, draft: Draft, rate: float, approved_by: str) -> None:
    report.items_out += 1
    report.notes["approved"] = int(report.notes["approved"]) + 1
    report.notes[f"edit_rate {draft.id[:8]}"] = round(rate, 4)
    report.notes[f"approved_by {draft.id[:8]}"] = approved_by


def _listed_signals(config: Config, client: GoogleClient, by_doc: dict[str, Draft],
                    published: dict[str, Draft]) -> dict[str, tuple[Draft, set[str]]]:
    """doc id -> (draft, {"folder", "prefix"}) from Drive listings; a copy carrying a draft's marker counts too."""
    google = config.publishing.google
    found: dict[str, tuple[Draft, set[str]]] = {}

    def note(file: dict[str, Any], signal: str) -> None:
        draft = by_doc.get(file["id"]) or published.get(file.get("appProperties", {}).get(MARKER_KEY, ""))
        if draft is not None:
            found.setdefault(file["id"], (draft, set()))[1].add(signal)

    if google.approved_folder_id:
        for file in client.list_files(
            f"'{_q(google.approved_folder_id)}' in parents and trashed = false", "files(id,name,appProperties)"
        ):
            note(file, "folder")
    prefix = google.approved_title_prefix.strip()
    if prefix:
        for file in client.list_files(
            f"appProperties has {{ key='{ORIGIN_KEY}' and value='{ORIGIN_VALUE}' }} and trashed = false",
            "files(id,name,parents,appProperties)",
        ):
            if file.get("name", "").strip().startswith(prefix):
                note(file, "prefix")
    return found


def _sync_google(config: Config, ledger: Ledger, published: dict[str, Draft], report: StageReport,
                 client: GoogleClient | None, retry_wait) -> None:
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.publications).where(
                schema.publications.c.target == "google", schema.publications.c.draft_id.in_(list(published))
            )
        ).all()
    by_doc = {row.doc_id: published[row.draft_id] for row in rows if row.doc_id}
    if not by_doc:
        return
    try:
        client = client or GoogleClient.from_config(config, retry_wait=retry_wait,
                                                    credentials_origin=_credentials_origin(config))
        listed = _listed_signals(config, client, by_doc, published)
    except PublishError as exc:
        report.errors.append(f"sync: {exc}; approvals stay pending")
        return
    report.notes["corrections"] = 0
    # Every document we published, plus any marked copy a listing says is approved.
    for doc_id in dict.fromkeys([*by_doc, *listed]):
        draft, signals = listed.get(doc_id) or (by_doc[doc_id], set())
        if draft.state != DraftState.published:
            continue   # two documents carry this draft's marker; the first approval wins
        try:
            document = client.get_document(doc_id, **READ_PARAMS)
        except (CredentialsError, GoogleUnavailable) as exc:
            report.errors.append(f"draft {draft.id}: {exc}; approvals stay pending")
            return
        except PublishError as exc:
            report.errors.append(f"draft {draft.id}: {exc}")
            continue
        report.notes["corrections"] += record_corrections(ledger, draft.id, doc_id, editor_notes(document))
        chip = chip_status(first_tab(document))
        if chip == "approved":
            signals = signals | {"chip"}
        if not signals:
            if chip == "spiked":
                _store_spike(ledger, draft)
                draft.state = DraftState.spiked
                report.notes["spiked"] = int(report.notes.get("spiked", 0)) + 1
            continue
        approved_by = "+".join(s for s in ("chip", "folder", "prefix") if s in signals)
        try:
            rate = _approve(ledger, draft, doc_id, parse_document(document), approved_by, config)
        except PublishError as exc:
            report.errors.append(f"draft {draft.id}: {exc}")
            continue
        draft.state = DraftState.approved
        _record(report, draft, rate, approved_by)


def _sync_local(config: Config, ledger: Ledger, published: dict[str, Draft], report: StageReport) -> None:
    folder = config.path(config.publishing.outbox) / APPROVED_DIR
    if not folder.is_dir():
        return
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.publications).where(
                schema.publications.c.target == "local", schema.publications.c.draft_id.in_(list(published))
            )
        ).all()
    by_stem = {row.doc_id: published[row.draft_id] for row in rows if row.doc_id}
    for path in sorted(folder.glob("*.md")):
        try:
            marker, blocks = parse_markdown(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            report.errors.append(f"{path.name}: cannot read: {_first_line(exc)}")
            continue
        draft = by_stem.get(path.stem) or (published.get(marker) if marker else None)
        if draft is None or draft.state != DraftState.published:
            continue   # already approved, or not one of ours
        try:
            rate = _approve(ledger, draft, f"{APPROVED_DIR}/{path.name}", blocks, "outbox", config)
        except PublishError as exc:
            report.errors.append(f"{path.name}: {exc}")
            continue
        draft.state = DraftState.approved
        _record(report, draft, rate, "outbox")


__all__ = [
    "CredentialsError", "GoogleClient", "GoogleUnavailable", "PublishError", "Published", "WriteRateLimiter",
    "build_services", "document_name", "load_credentials", "publish_ready", "publish_to_google",
    "publish_to_outbox", "sync_approvals",
]
