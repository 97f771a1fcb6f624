"""Fetch agent: enabled feeds -> new items in the ledger, state `fetched`.

All feeds are fetched concurrently (capped by limits.fetch_concurrency) and
each feed is handled on its own: a broken, slow or malformed feed is written
against its `sources` row and never stops the others. Each feed's new items
and its `sources` row land in one transaction, so a crash never leaves half
a feed behind.

Everything a feed says is untrusted: URLs go through the SSRF guard in
`pipeline.services.http`, text is reduced to plain text, lengths are capped.

Item identity: the id is derived from the canonical form of the feed's link,
so the next run recognises the entry before any page fetch. `canonical_url`
may be refined by the page's own canonical link (same site only).
"""

from __future__ import annotations

import asyncio
import calendar
import codecs
import multiprocessing
import os
import hashlib
import io
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import httpx
import lxml.html
from lxml import etree
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from tenacity.wait import wait_base

from pipeline.core import schema
from pipeline.core.config import Config, Feed
from pipeline.services.http import FetchError, Fetcher, make_client, read_local_file
from pipeline.core.ledger import Ledger, as_utc
from pipeline.text.language import UNDETERMINED, detect
from pipeline.core.logs import redact
from pipeline.core.models import FeedEntry, Item, ItemState, StageReport, utcnow
from pipeline.text.urls import Resolver, UrlError, canonicalize_url, same_site, stable_id, system_resolver, without_credentials

log = logging.getLogger(__name__)

FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
HTML_TYPES = {"text/html", "application/xhtml+xml", ""}
MAX_URL_CHARS = 2048
MAX_AUTHOR_CHARS = 200
MAX_OG_VALUE_CHARS = 1000
# Dates further ahead than this are typos or tricks to stay on top of "latest".
FUTURE_TOLERANCE = timedelta(days=1)


_extract_pool: ProcessPoolExecutor | None = None


def _extraction_pool() -> ProcessPoolExecutor:
    """Extraction is CPU-bound pure Python: worker processes use every core, threads would share one.

    forkserver, not fork: the parent holds threads (asyncio, onnxruntime) that a fork would copy mid-state.
    """
    global _extract_pool
    if _extract_pool is None:
        workers = max(1, min(4, os.cpu_count() or 1))
        _extract_pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                            initializer=_exit_with_owner, initargs=(os.getpid(),))
    return _extract_pool


def _exit_with_owner(owner: int, every_s: float = 1.0) -> None:
    """In each extraction process: exit once the process that made the pool is gone.

    A worker killed with SIGKILL cannot shut its pool down, and the pool's processes
    (children of the forkserver, not of the worker) would otherwise live on.
    """

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(owner, 0)
            except OSError:  # gone, or its pid now belongs to another user's process
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


async def extract_in_pool(content: bytes, url: str):
    from pipeline.text.extract import extract_article

    try:
        return await asyncio.get_running_loop().run_in_executor(_extraction_pool(), extract_article, content, url)
    except BrokenProcessPool:
        # A worker died (out of memory on a hostile page, say): extract this page here, rebuild the pool next time.
        global _extract_pool
        _extract_pool = None
        return await asyncio.to_thread(extract_article, content, url)


class FeedFailure(Exception):
    """This feed could not be used; the message is stored on its `sources` row."""


# --------------------------------------------------------------------------
# plain text from untrusted markup

_DROP_TAGS = ("script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "math",
              "head", "form", "button", "select", "textarea", "canvas", "audio", "video")
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
               "tr", "table", "section", "article", "header", "footer", "figure", "figcaption", "hr", "dd", "dt"}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_TAG_LIKE = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?\s*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ufffe\uffff]")
# Lone surrogates come from character references like "&#xD800;"; no database or
# encoder takes them, so one would sink the whole feed's transaction.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Vertical tab, form feed and the Unicode line separators break lines; dropped, they would glue words.
_LINE_BREAKS = str.maketrans({"\x0b": "\n", "\x0c": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"})
_PARSER = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
# Bound the parser's work on hostile input; nothing longer survives truncation anyway.
_MAX_MARKUP_CHARS = 2_000_000


def plain_text(markup: str | None, *, single_line: bool = False) -> str:
    """Text of an HTML fragment: tags and script/style gone, entities decoded.

    Markup escaped twice (``&lt;b&gt;`` inside an HTML field) is stripped on a
    second pass, so no tag survives into the ledger.
    """
    if not markup:
        return ""
    # Control characters and lone surrogates first: lxml refuses a string holding one.
    markup = _CONTROL.sub("", _SURROGATE.sub("\ufffd", markup[:_MAX_MARKUP_CHARS]).translate(_LINE_BREAKS))
    text = _strip_markup(markup)
    if _TAG_LIKE.search(text):
        text = _strip_markup(text)
    text = _SURROGATE.sub("\ufffd", text).translate(_LINE_BREAKS)
    text = _CONTROL.sub("", unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    if single_line:
        return " ".join(line for line in lines if line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _strip_markup(markup: str) -> str:
    if "<" not in markup and "&" not in markup:
        return markup
    try:
        root = lxml.html.document_fromstring(f"<html><body><div>{markup}</div></body></html>", parser=_PARSER)
    except (etree.ParserError, ValueError):
        return _TAG_LIKE.sub(" ", markup)
    for node in list(root.iter(*_DROP_TAGS)):
        node.drop_tree()
    # Text a reader never sees is not the story, and hidden blocks are where
    # injected instructions and keyword stuffing hide.
    for node in root.xpath("//*[@hidden or @style]"):
        if node.getparent() is not None and (node.get("hidden") is not None or _HIDDEN_STYLE.search(node.get("style") or "")):
            node.drop_tree()
    for node in root.iter(*_BLOCK_TAGS):
        # Blocks become paragraph breaks, so "<p>a</p><p>b</p>" is not "ab".
        if node.tag == "br":
            node.tail = "\n" + (node.tail or "")
            continue
        node.tail = "\n\n" + (node.tail or "")
        node.text = "\n" + (node.text or "")
    body = root.find("body")
    return (body if body is not None else root).text_content()


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a word break when one is near."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + "…"


def item_language(title: str, text: str) -> str:
    """The language of an item's headline and text (ISO 639 code), "und" when too short or unclear to tell.

    Detection never costs an item: if the detector itself fails, the item is stored as "und" (its sentences
    are still checked one by one when a draft is written from it) and the failure is logged."""
    try:
        return detect(f"{title}\n{text}").language
    except Exception as exc:  # noqa: BLE001 - a broken detector must not lose news
        log.warning("language detection failed, item stored as 'und': %s: %s", type(exc).__name__, exc)
        return UNDETERMINED


def content_hash(text: str) -> str:
    """Same text, same hash: case, Unicode form and whitespace do not matter."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# feed entries


def entry_published(entry: Any, fetched: datetime) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = entry.get(key)
        if parsed:
            try:
                when = datetime.fromtimestamp(calendar.timegm(parsed), tz=timezone.utc)
            except (OverflowError, ValueError, TypeError):
                continue
            return fetched if when > fetched + FUTURE_TOLERANCE else when
    return None


def entry_link(entry: Any, base: str | None) -> str | None:
    candidates = [entry.get("link")]
    candidates += [l.get("href") for l in entry.get("links", []) if l.get("rel", "alternate") == "alternate"]
    guid = entry.get("id")
    if guid and entry.get("guidislink", True):
        candidates.append(guid)
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            link = urljoin(base, candidate.strip()) if base else candidate.strip()
            if urlsplit(link).scheme.lower() in ("http", "https"):
                return link
    return None


def to_feed_entry(source: str, entry: Any, *, base: str | None, fetched: datetime, limits) -> FeedEntry | str:
    """A typed entry, or a short reason why the entry is unusable."""
    link = entry_link(entry, base)
    if link is None:
        return "no http(s) link"
    if len(link) > MAX_URL_CHARS:
        return f"link longer than {MAX_URL_CHARS} characters"
    try:
        canonical = canonicalize_url(link)
    except UrlError as exc:
        return str(exc)
    contents = [c.get("value", "") for c in entry.get("content", []) or []]
    content = plain_text(max(contents, key=len, default=""))
    summary = plain_text(entry.get("summary", ""))
    title = plain_text(entry.get("title", ""), single_line=True)
    author = plain_text(entry.get("author", ""), single_line=True) or None
    return FeedEntry(
        source=source,
        url=link,
        canonical_url=canonical,
        title=truncate(title, limits.max_title_chars),
        summary=truncate(summary, limits.max_text_chars),
        content=truncate(content, limits.max_text_chars),
        author=truncate(author, MAX_AUTHOR_CHARS) if author else None,
        published=entry_published(entry, fetched),
    )


# --------------------------------------------------------------------------
# hostile XML and broken encodings, before feedparser sees the bytes

# RSS and Atom nest a handful of levels (XHTML content a few dozen); anything
# deeper is built to make parsers slow or to exhaust their stacks.
MAX_XML_DEPTH = 100
# An internal DTD entity longer than this is a quadratic-blowup payload.
MAX_ENTITY_CHARS = 1000
_ENTITY_REF = re.compile(r"&[A-Za-z_:][\w.:-]*;")
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")


def xml_problem(data: bytes, max_depth: int = MAX_XML_DEPTH) -> str | None:
    """Why these bytes must not be parsed as a feed, or None.

    Refuses entity declarations that expand (an entity built from other
    entities: "billion laughs"), long ones (quadratic blowup) and external
    ones (XXE), and nesting deeper than `max_depth`. A streaming parse that
    keeps no tree: cheap even at the size cap. Bytes that are not XML at all
    are left to feedparser, which says so.
    """
    parser = etree.XMLPullParser(
        events=("start", "end"), recover=True, resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    depth = 0
    checked_dtd = False
    try:
        for offset in range(0, len(data), 65536):
            parser.feed(data[offset : offset + 65536])
            for event, element in parser.read_events():
                if event == "end":
                    depth -= 1
                    element.clear()
                    continue
                depth += 1
                if depth > max_depth:
                    return f"XML nested deeper than {max_depth} elements; refused (a parser-exhaustion feed looks like this)"
                if not checked_dtd:
                    checked_dtd = True
                    problem = _entity_problem(element.getroottree().docinfo.internalDTD)
                    if problem:
                        return problem
        if not checked_dtd:   # the whole document was a prolog: the DTD is all there is
            parser.close()
    except etree.XMLSyntaxError:
        return None
    return None


def _entity_problem(dtd: Any) -> str | None:
    if dtd is None:
        return None
    for entity in dtd.iterentities():
        content = entity.content or ""
        if entity.system_url or getattr(entity, "public_id", None):
            return f"the feed declares an external XML entity '{entity.name}' ({entity.system_url}); refused"
        if _ENTITY_REF.search(content) or len(content) > MAX_ENTITY_CHARS:
            return (
                f"the feed declares an expanding XML entity '{entity.name}'; refused "
                "(an entity-expansion bomb looks like this)"
            )
    return None


def _cp1252_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    bad = error.object[error.start : error.end]
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad), error.end


codecs.register_error("newsdesk-cp1252", _cp1252_fallback)


def repair_mixed_utf8(data: bytes, content_type: str = "") -> bytes:
    """A UTF-8 feed with stray Windows-1252 bytes (pasted from old CMS fields), made valid UTF-8.

    Only touches documents that claim UTF-8 (or claim nothing) and are not
    valid UTF-8; without this, one stray byte makes feedparser decode the
    whole document as Windows-1252 and every accented UTF-8 letter becomes
    mojibake.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return data
    charset = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type or "", re.I)
    if charset and charset.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        return data
    declared = _XML_ENCODING.match(data[:512])
    if declared and declared.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="newsdesk-cp1252").encode("utf-8")
    return data


_CHARREF = re.compile(rb"&#([xX][0-9a-fA-F]{1,8}|[0-9]{1,10});")


def _defuse_charref(match: re.Match[bytes]) -> bytes:
    raw = match.group(1)
    value = int(raw[1:], 16) if raw[:1] in b"xX" else int(raw)
    # A surrogate or out-of-range code point crashes feedparser's encoder and
    # the whole feed with it; U+FFFD says a character was there.
    if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
        return b"&#xFFFD;"
    return match.group(0)


def parse_feed(data: bytes, *, content_type: str, location: str) -> Any:
    data = _CHARREF.sub(_defuse_charref, repair_mixed_utf8(data, content_type))
    # A BytesIO, never raw bytes: feedparser treats a bytes/str argument as
    # a possible file name or URL and would open it.
    return feedparser.parse(
        io.BytesIO(data),
        response_headers={"content-type": content_type or "application/xml", "content-location": location},
    )


# --------------------------------------------------------------------------
# one stage run


@dataclass
class RunState:
    """What every feed of this run shares. Checks and claims happen without an
    await in between, so concurrent feeds cannot both take the same item."""

    claimed_urls: set[str] = field(default_factory=set)      # canonical URLs and ids
    claimed_hashes: dict[str, str] = field(default_factory=dict)   # content hash -> source


@dataclass
class FeedOutcome:
    name: str
    entries: int = 0
    stored: int = 0
    duplicates_url: int = 0
    duplicates_content: int = 0
    skipped: int = 0
    over_limit: int = 0
    not_modified: bool = False
    pages_fetched: int = 0
    pages_failed: int = 0
    updated: int = 0
    error: str | None = None


@dataclass
class Candidate:
    entry: FeedEntry
    item_id: str
    canonical_url: str
    title: str
    text: str
    text_origin: str = "feed"
    og: dict[str, str] = field(default_factory=dict)
    published: datetime | None = None
    state_reason: str | None = None


class FeedJob:
    def __init__(self, feed: Feed, config: Config, ledger: Ledger, fetcher: Fetcher, run: RunState) -> None:
        self.feed = feed
        self.config = config
        self.limits = config.limits
        self.ledger = ledger
        self.fetcher = fetcher
        self.run = run
        self.location = config.feed_location(feed)
        # What the ledger and messages show: a private feed's password or token stays in config.
        self.shown_location = without_credentials(self.location)
        self.outcome = FeedOutcome(feed.name)
        self._validators: tuple[str | None, str | None] | None = None
        self._revisits: list[FeedEntry] = []   # entries already in the ledger from an earlier run

    async def run_job(self) -> FeedOutcome:
        try:
            await self._process()
        except (FeedFailure, FetchError) as exc:
            self._record_failure(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a bug or a surprise in one feed must not stop the others
            log.exception("feed %s failed unexpectedly", self.feed.name)
            self._record_failure(f"unexpected {type(exc).__name__}: {exc}")
        return self.outcome

    # --- steps ----------------------------------------------------------------

    async def _process(self) -> None:
        fetched = utcnow()
        source_row = self._source_row()
        data, content_type, base = await self._load(source_row)
        if data is None:
            self.outcome.not_modified = True
            self._record_success(stored=[], validators=None, when=fetched)
            return
        unsafe = await asyncio.to_thread(xml_problem, data)
        if unsafe:
            raise FeedFailure(unsafe)
        parsed = await asyncio.to_thread(parse_feed, data, content_type=content_type, location=base or "")
        if parsed.get("bozo") and not parsed.entries:
            problem = parsed.get("bozo_exception") or "unreadable"
            raise FeedFailure(f"not a valid RSS/Atom feed: {str(problem)[:300]}")
        entries = parsed.entries[: self.limits.max_items_per_feed]
        self.outcome.entries = len(entries)
        self.outcome.over_limit = max(0, len(parsed.entries) - len(entries))
        fresh = self._drop_known_urls(self._typed_entries(entries, base, fetched))
        candidates = await asyncio.gather(*(self._full_text(entry) for entry in fresh))
        items = self._drop_duplicate_content([c for c in candidates if c is not None], fetched)
        self._record_success(stored=items, validators=self._validators, when=fetched)

    async def _load(self, source_row: Any) -> tuple[bytes | None, str, str | None]:
        """The feed's bytes, content type and base URL; None bytes for a 304."""
        if not self.feed.is_remote:
            self._validators = None
            data = await asyncio.to_thread(read_local_file, self.location, self.limits.max_response_bytes)
            return data, "application/xml", None
        headers = {}
        if source_row is not None and source_row.url == self.shown_location:
            # Validators belong to the URL that issued them; a changed feed URL starts afresh.
            if source_row.etag:
                headers["If-None-Match"] = source_row.etag
            if source_row.last_modified:
                headers["If-Modified-Since"] = source_row.last_modified
        result = await self.fetcher.get(self.location, headers=headers, accept=FEED_ACCEPT)
        if result.not_modified:
            self._validators = None
            return None, "", _without_userinfo(result.url)
        self._validators = (result.headers.get("etag"), result.headers.get("last-modified"))
        # Relative links resolve against the feed's URL; they must not inherit its credentials.
        return result.content, result.headers.get("content-type", ""), _without_userinfo(result.url)

    def _typed_entries(self, entries: Iterable[Any], base: str | None, fetched: datetime) -> list[FeedEntry]:
        typed = []
        for index, raw in enumerate(entries):
            try:
                entry = to_feed_entry(self.feed.name, raw, base=base, fetched=fetched, limits=self.limits)
            except Exception as exc:   # one odd entry costs that entry only
                entry = f"{type(exc).__name__}: {exc}"
            if isinstance(entry, str):
                self.outcome.skipped += 1
                log.info("feed %s: entry %d skipped: %s", self.feed.name, index, entry)
            else:
                typed.append(entry)
        return typed

    def _drop_known_urls(self, entries: list[FeedEntry]) -> list[FeedEntry]:
        keys = {e.canonical_url for e in entries} | {stable_id(e.canonical_url) for e in entries}
        known = self._known_urls(keys)
        fresh = []
        for entry in entries:
            item_id = stable_id(entry.canonical_url)
            if {entry.canonical_url, item_id} & (known | self.run.claimed_urls):
                self.outcome.duplicates_url += 1
                if {entry.canonical_url, item_id} & known and not {entry.canonical_url, item_id} & self.run.claimed_urls:
                    self._revisits.append(entry)   # maybe the source changed it since: see _record_updates
                    self.run.claimed_urls |= {entry.canonical_url, item_id}
                continue
            self.run.claimed_urls |= {entry.canonical_url, item_id}
            fresh.append(entry)
        return fresh

    async def _full_text(self, entry: FeedEntry) -> Candidate | None:
        feed_text = max(entry.content, entry.summary, key=len)
        candidate = Candidate(
            entry=entry,
            item_id=stable_id(entry.canonical_url),
            canonical_url=entry.canonical_url,
            title=entry.title,
            text=feed_text,
        )
        mode = self.feed.full_text
        # An undated entry is worth a page fetch: the page usually says when it was published.
        wants_page = mode == "page" or (mode == "auto" and (len(feed_text) < self.limits.min_full_text_chars or entry.published is None))
        if wants_page:
            await self._add_page(candidate, feed_text)
        if not candidate.title:
            candidate.title = truncate(candidate.text.split("\n", 1)[0], self.limits.max_title_chars)
        if not candidate.text:
            # A headline-only entry still tells the desk something happened.
            candidate.text = candidate.title
        if not candidate.text:
            self.outcome.skipped += 1
            return None
        return candidate

    async def _add_page(self, candidate: Candidate, feed_text: str) -> None:
        url = candidate.entry.url
        try:
            result = await self.fetcher.get(url, accept=PAGE_ACCEPT)
            if result.content_type not in HTML_TYPES:
                raise FetchError(result.url, f"not an HTML page ({result.content_type})")
            page = await extract_in_pool(result.content, result.url)
        except FetchError as exc:
            self.outcome.pages_failed += 1
            candidate.text_origin = "summary"
            candidate.state_reason = f"page fetch failed, text from the feed: {exc}"[:1000]
            log.info("feed %s: %s", self.feed.name, candidate.state_reason)
            return
        self.outcome.pages_fetched += 1
        page_text = truncate(plain_text(page.text), self.limits.max_text_chars)
        if page_text and (self.feed.full_text == "page" or len(page_text) > len(feed_text)):
            candidate.text = page_text
            candidate.text_origin = "page"
        elif not page_text:
            candidate.text_origin = "summary"
            candidate.state_reason = f"no article text found on {result.url[:300]}, text from the feed"
        candidate.og = {
            key: truncate(plain_text(value, single_line=True), MAX_OG_VALUE_CHARS)
            for key, value in list(page.og.items())[:20]
            if isinstance(value, str) and value.strip()
        }
        if page.published is not None:
            candidate.published = as_utc(page.published)
        if not candidate.title and page.title:
            candidate.title = truncate(plain_text(page.title, single_line=True), self.limits.max_title_chars)
        candidate.canonical_url = self._refined_canonical(candidate, page.canonical_url, result.url)

    def _refined_canonical(self, candidate: Candidate, declared: str | None, page_url: str) -> str:
        """The page's canonical link, when it is trustworthy: same site as the
        feed's link, not the site's front page, and not another item's URL."""
        current = candidate.canonical_url
        if not declared:
            return current
        try:
            refined = canonicalize_url(declared, base=page_url)
        except UrlError:
            return current
        if refined == current or len(refined) > MAX_URL_CHARS:
            return current
        if not same_site(refined, current):
            return current
        if urlsplit(refined).path in ("", "/") and urlsplit(current).path not in ("", "/"):
            return current   # sites that point every page's canonical at the home page
        if refined in self.run.claimed_urls or self._known_urls({refined}):
            return current   # the URL of another item; keep ours, content dedupe still applies
        self.run.claimed_urls.add(refined)
        return refined

    def _drop_duplicate_content(self, candidates: list[Candidate], fetched: datetime) -> list[tuple[Item, str | None]]:
        hashes = {c.item_id: content_hash(c.text) for c in candidates}
        elsewhere = self._hashes_from_other_sources(set(hashes.values()))
        items = []
        for candidate in candidates:
            digest = hashes[candidate.item_id]
            claimed_by = self.run.claimed_hashes.get(digest)
            if digest in elsewhere or (claimed_by is not None and claimed_by != self.feed.name):
                self.outcome.duplicates_content += 1
                continue
            self.run.claimed_hashes.setdefault(digest, self.feed.name)
            entry = candidate.entry
            published = entry.published or candidate.published
            if published is not None and published > fetched + FUTURE_TOLERANCE:
                published = None   # a date in the future is a broken date, not news from tomorrow
            item = Item(
                id=candidate.item_id,
                source=self.feed.name,
                url=entry.url,
                canonical_url=candidate.canonical_url,
                title=candidate.title or truncate(candidate.text, self.limits.max_title_chars),
                text=candidate.text,
                summary=entry.summary,
                author=entry.author,
                published=published or fetched,
                dated=published is not None,
                fetched=fetched,
                content_hash=digest,
                og=candidate.og,
                text_origin=candidate.text_origin,
                language=item_language(candidate.title, candidate.text),
                state=ItemState.fetched,
            )
            items.append((item, candidate.state_reason))
        return items

    # --- ledger -----------------------------------------------------------------

    def _source_row(self) -> Any:
        with self.ledger.engine.connect() as connection:
            return connection.execute(
                select(schema.sources).where(schema.sources.c.name == self.feed.name)
            ).first()

    def _known_urls(self, keys: set[str]) -> set[str]:
        if not keys:
            return set()
        items = schema.items
        with self.ledger.engine.connect() as connection:
            rows = connection.execute(
                select(items.c.id, items.c.canonical_url).where(
                    items.c.id.in_(keys) | items.c.canonical_url.in_(keys)
                )
            ).all()
        return {value for row in rows for value in row}

    def _hashes_from_other_sources(self, digests: set[str]) -> set[str]:
        if not digests:
            return set()
        items = schema.items
        with self.ledger.engine.connect() as connection:
            rows = connection.execute(
                select(items.c.content_hash).where(
                    items.c.content_hash.in_(digests), items.c.source != self.feed.name
                )
            ).all()
        return {row[0] for row in rows}

    def _record_success(self, *, stored: list[tuple[Item, str | None]], validators, when: datetime) -> None:
        rows = [
            {**item.model_dump(mode="python"), "state": item.state.value, "state_reason": reason, "updated": when}
            for item, reason in stored
        ]
        values: dict[str, Any] = {"last_attempt": when, "last_success": when, "consecutive_failures": 0}
        if validators is not None:
            values["etag"], values["last_modified"] = validators
        try:
            with self.ledger.begin() as connection:
                if rows:
                    connection.execute(insert(schema.items), rows)
                updated = self._record_updates(connection, when)
                _upsert_source(connection, self.feed.name, self.shown_location, values, added=len(rows))
        except SQLAlchemyError as exc:
            raise FeedFailure(f"could not write to the ledger: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
        self.outcome.stored = len(rows)
        self.outcome.updated = updated

    def _record_updates(self, connection: Connection, when: datetime) -> int:
        """Entries seen before whose title or text the source has since changed.

        The stored item takes the new wording in place (one item per URL, never
        a second one), is re-indexed, and says so in state_reason. If its story
        was already drafted, the item joins the story's late list, so the
        editor learns the draft is behind the source; the draft is not redone.
        Only content is compared, never times, so a clock that jumped (ours or
        the source's) neither hides an update nor invents one.
        """
        if not self._revisits:
            return 0
        items = schema.items
        ids = {stable_id(e.canonical_url): e for e in self._revisits}
        by_url = {e.canonical_url: e for e in self._revisits}
        rows = connection.execute(
            select(items.c.id, items.c.canonical_url, items.c.source, items.c.title, items.c.summary, items.c.text,
                   items.c.text_origin, items.c.content_hash, items.c.story_key)
            .where(items.c.id.in_(list(ids)) | items.c.canonical_url.in_(list(by_url)))
        ).all()
        updated = 0
        for row in rows:
            entry = ids.get(row.id) or by_url.get(row.canonical_url)
            if entry is None or row.source != self.feed.name:
                continue   # another outlet's copy of the link: theirs to update
            new_text = max(entry.content, entry.summary, key=len) or entry.title
            changes: dict[str, Any] = {}
            if entry.title and entry.title != row.title:
                changes["title"] = entry.title
            if entry.summary != row.summary:
                changes["summary"] = entry.summary
            if row.text_origin == "feed" and new_text and content_hash(new_text) != row.content_hash:
                changes.update(text=new_text, content_hash=content_hash(new_text))
            if not changes:
                continue
            if "title" in changes or "text" in changes:
                changes["language"] = item_language(changes.get("title", row.title), changes.get("text", row.text))
            drafted = False
            if row.story_key:
                story = connection.execute(
                    select(schema.stories.c.state, schema.stories.c.late_item_ids).where(schema.stories.c.key == row.story_key)
                ).first()
                if story is not None and story.state != "new":
                    drafted = True
                    late = list(story.late_item_ids or [])
                    if row.id not in late:
                        connection.execute(
                            update(schema.stories).where(schema.stories.c.key == row.story_key)
                            .values(late_item_ids=[*late, row.id], updated=when)
                        )
            note = f"updated by {self.feed.name} at {when:%Y-%m-%d %H:%M} UTC ({', '.join(sorted(changes))} changed)"
            if drafted:
                note += "; its story was already drafted: listed with the story's late items for the editor"
            connection.execute(
                update(items).where(items.c.id == row.id)
                .values(**changes, chunk_count=None, state_reason=note, updated=when)
            )
            updated += 1
        return updated

    def _record_failure(self, problem: str) -> None:
        self.outcome.error = problem
        self.outcome.stored = 0
        now = utcnow()
        log.warning("source %r: %s", self.feed.name, problem)
        values = {"last_attempt": now, "last_error": redact(problem)[:2000], "last_error_at": now}
        try:
            with self.ledger.begin() as connection:
                _upsert_source(connection, self.feed.name, self.shown_location, values, failed=True)
        except SQLAlchemyError as exc:
            log.error("source %r: could not record the failure: %s", self.feed.name, exc)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _upsert_source(
    connection: Connection, name: str, location: str, values: dict[str, Any], *, added: int = 0, failed: bool = False
) -> None:
    sources = schema.sources
    exists = connection.execute(select(sources.c.name).where(sources.c.name == name)).first()
    if exists:
        changes = {**values, "url": location, "items_total": sources.c.items_total + added}
        if failed:
            changes["consecutive_failures"] = sources.c.consecutive_failures + 1
        connection.execute(update(sources).where(sources.c.name == name).values(**changes))
    else:
        connection.execute(
            insert(sources).values(
                name=name,
                url=location,
                items_total=added,
                **{"consecutive_failures": 1 if failed else 0, **values},
            )
        )


# --------------------------------------------------------------------------
# public API


async def fetch_all(
    config: Config,
    ledger: Ledger,
    *,
    client: httpx.AsyncClient | None = None,
    resolver: Resolver | None = None,
    retry_wait: wait_base | None = None,
) -> StageReport:
    """Fetch every enabled feed once. Never raises for a feed's problems:
    they are in the report's `errors` and on the feed's `sources` row."""
    started = time.monotonic()
    limits = config.limits
    resolver = resolver or system_resolver
    feeds = [feed for feed in config.feeds if feed.enabled]
    own_client = client is None
    if client is None:
        client = make_client(
            timeout_s=limits.fetch_timeout_s,
            user_agent=limits.user_agent,
            resolver=resolver,
            allow_private=limits.allow_private_hosts,
        )
    fetcher = Fetcher.from_limits(
        client, limits, resolver=resolver, retry_wait=retry_wait, semaphore=asyncio.Semaphore(limits.fetch_concurrency)
    )
    run = RunState()
    jobs = [FeedJob(feed, config, ledger, fetcher, run) for feed in feeds]
    try:
        tasks = {asyncio.create_task(job.run_job(), name=f"fetch:{job.feed.name}"): job for job in jobs}
        pending: set[asyncio.Task] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=limits.fetch_deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in pending:
            tasks[task]._record_failure(
                f"stage deadline of {limits.fetch_deadline_s:g}s (limits.fetch_deadline_s) passed before this feed finished"
            )
    finally:
        if own_client:
            await client.aclose()
    return _report([job.outcome for job in jobs], started, fetcher.requests)


def _report(outcomes: list[FeedOutcome], started: float, requests: int) -> StageReport:
    duplicates_url = sum(o.duplicates_url for o in outcomes)
    duplicates_content = sum(o.duplicates_content for o in outcomes)
    return StageReport(
        stage="fetch",
        items_in=sum(o.entries for o in outcomes),
        items_out=sum(o.stored for o in outcomes),
        errors=[f"source '{o.name}': {o.error}" for o in outcomes if o.error],
        duration_s=round(time.monotonic() - started, 3),
        notes={
            "duplicates_dropped": duplicates_url + duplicates_content,
            "duplicates_by_url": duplicates_url,
            "duplicates_by_content": duplicates_content,
            "not_modified": sum(o.not_modified for o in outcomes),
            "feeds_ok": sum(o.error is None for o in outcomes),
            "feeds_failed": sum(o.error is not None for o in outcomes),
            "entries_skipped": sum(o.skipped for o in outcomes),
            "entries_over_limit": sum(o.over_limit for o in outcomes),
            "pages_fetched": sum(o.pages_fetched for o in outcomes),
            "pages_failed": sum(o.pages_failed for o in outcomes),
            "updated_at_source": sum(o.updated for o in outcomes),
            "http_requests": requests,
        },
    )


def run_fetch(config: Config, ledger: Ledger, **kwargs: Any) -> StageReport:
    """Synchronous entry point for the CLI and the scheduler."""
    return asyncio.run(fetch_all(config, ledger, **kwargs))
