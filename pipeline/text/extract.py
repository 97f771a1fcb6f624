"""Main-text extraction from news pages.

Trafilatura does most of the work. Around it we add what it cannot know:
  * decoding and sanitising hostile input so nothing downstream ever raises;
  * generic tree repairs before extraction: embedded social posts (tweets)
    turned back into plain quotes, nested teaser <article>s removed;
  * a consensus between trafilatura's precision and default modes at
    paragraph level: the default run gives the article its full paragraphs,
    the precision run decides where the article starts and ends, unless it
    only found a notice (reprints, rights); a body the page repeats (print,
    AMP copies) is kept once;
  * same-class sibling containers appended when a story is split into
    chunks with ads between them (trafilatura keeps only the first chunk);
  * edge trimming of lines that are about the page rather than the story
    (the headline repeated, datelines, share/follow/subscribe calls);
  * independent fallbacks, a readability-style density extractor and the
    JSON-LD ``articleBody``, used when trafilatura finds next to nothing,
    the page is a script-rendered shell, or it is too big for trafilatura.

Every choice is a page-structure rule checked on both halves of the dev set
(bench/extraction.py prints per-half scores), not a per-site fix.

The output is plain text only: every candidate is built from text nodes
(scripts and styles removed), never from serialised HTML.
"""

from __future__ import annotations

import codecs
import html as html_module
import json
import logging
import re
import unicodedata
from copy import deepcopy
from datetime import datetime, timezone
from typing import Callable

import lxml.html
from lxml import etree
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

# Pages bigger than this are almost always not articles (feeds, dumps, data
# URIs); cutting keeps extraction time bounded.
MAX_HTML_CHARS = 6_000_000

# Real article pages have at most a few thousand elements (the dev set tops
# out near 1,600); far beyond that is a listing or a dump, where trafilatura
# takes seconds.
MAX_TRAFILATURA_ELEMENTS = 15_000

_TOKEN_RE = re.compile(r"\w+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
_META_CHARSET_RE = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]{1,40})""", re.I
)
_XML_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]{0,200}encoding\s*=\s*["']([A-Za-z0-9_\-.]{1,40})""", re.I)


class ExtractedPage(BaseModel):
    title: str | None = None
    text: str = ""
    canonical_url: str | None = None
    og: dict[str, str] = Field(default_factory=dict)
    published: datetime | None = None
    method: str = "none"


# --------------------------------------------------------------------------
# decoding


def decode_html(data: str | bytes) -> str:
    """Bytes -> str using BOM, then a declared charset, then UTF-8 with
    replacement. Binary content (images, archives) decodes to ''."""
    if isinstance(data, str):
        text = data
    else:
        text = _decode_bytes(bytes(data))
    if _looks_binary(text):
        return ""
    return _CONTROL_RE.sub("", text)


def _looks_binary(text: str) -> bool:
    sample = text[:8192]
    if not sample:
        return False
    junk = sum(1 for char in sample if char == "\ufffd" or (char < " " and char not in "\t\n\r\f"))
    return junk > 0.1 * len(sample)


def _decode_bytes(data: bytes) -> str:
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return data[len(bom):].decode(codec, errors="replace")
    head = data[:4096]
    match = _META_CHARSET_RE.search(head) or _XML_DECL_RE.search(head)
    if match:
        declared = match.group(1).decode("ascii", "ignore").lower()
        try:
            codec = codecs.lookup(declared).name
        except LookupError:
            codec = None
        # Pages that declare latin-1 are in practice windows-1252 (the HTML
        # standard says so); UTF-16 declared inside an ASCII-readable page is a lie.
        if codec in ("latin-1", "iso8859-1", "ascii"):
            codec = "cp1252"
        if codec and not codec.startswith("utf-16") and not codec.startswith("utf-32"):
            if codec == "utf-8":
                return data.decode("utf-8", errors="replace")
            try:
                return data.decode(codec, errors="replace")
            except Exception:  # codecs without error handlers, broken codec modules
                pass
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# parsing


_PARSER = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, collect_ids=False, default_doctype=False)


def parse_html(text: str) -> lxml.html.HtmlElement | None:
    if not text.strip():
        return None
    # lxml rejects str input carrying an encoding declaration; drop it since
    # we already decoded.
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text[:MAX_HTML_CHARS])
    if "<" not in text:
        text = "<html><body><p>" + _escape(text) + "</p></body></html>"
    try:
        root = lxml.html.document_fromstring(text, parser=_PARSER)
    except (etree.ParserError, ValueError, etree.XMLSyntaxError):
        return None
    if root is None or not isinstance(root, lxml.html.HtmlElement):
        return None
    return root


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------
# metadata


def read_metadata(root: lxml.html.HtmlElement) -> tuple[str | None, str | None, dict[str, str], datetime | None]:
    og: dict[str, str] = {}
    wanted = {"og:title", "og:description", "og:site_name", "og:image", "og:url", "article:published_time"}
    for meta in root.iter("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key in wanted and key not in og:
            value = clean_inline(meta.get("content") or "")
            if value:
                og[key] = value
    canonical = None
    for link in root.iter("link"):
        rels = (link.get("rel") or "").lower().split()
        href = (link.get("href") or "").strip()
        if "canonical" in rels and href:
            canonical = clean_inline(href)
            break
    canonical = canonical or og.get("og:url")
    title = og.get("og:title")
    if not title:
        for tag in ("title", "h1"):
            node = next(root.iter(tag), None)
            if node is not None:
                title = clean_inline(node.text_content()) or None
                if title:
                    break
    json_ld = read_json_ld(root)
    published = parse_date(og.get("article:published_time"))
    if published is None:
        for obj in json_ld:
            published = parse_date(obj.get("datePublished"))
            if published:
                break
    if published is None:
        for node in root.xpath('//*[@itemprop="datePublished"]'):
            published = parse_date(node.get("content") or node.get("datetime") or node.text_content())
            if published:
                break
    return title, canonical, og, published


def read_json_ld(root: lxml.html.HtmlElement) -> list[dict]:
    """All JSON-LD objects of the page, flattened out of lists and @graph."""
    found: list[dict] = []
    for script in root.xpath('//script[@type="application/ld+json"]'):
        raw = (script.text or "").strip()
        if not raw or len(raw) > 2_000_000:
            continue
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        stack = [data]
        while stack and len(found) < 200:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            elif isinstance(item, dict):
                found.append(item)
                graph = item.get("@graph")
                if isinstance(graph, list):
                    stack.extend(reversed(graph))
    return found


def parse_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        match = re.match(r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?))?", value)
        if not match:
            return None
        try:
            parsed = datetime.fromisoformat(match.group(1) + ("T" + match.group(2) if match.group(2) else ""))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        # No offset given: the page's own timezone is unknown, UTC is the least wrong guess.
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


# --------------------------------------------------------------------------
# text helpers


def clean_inline(text: str) -> str:
    text = _CONTROL_RE.sub("", unicodedata.normalize("NFC", text))
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def _token_key(text: str) -> str:
    return " ".join(tokens(text.lower()))


def split_paragraphs(text: str | None) -> list[str]:
    if not text:
        return []
    out = []
    for line in text.split("\n"):
        line = clean_inline(line)
        if line and tokens(line):
            out.append(line)
    return out


# --------------------------------------------------------------------------
# tree repairs before extraction

_SOCIAL_EMBED_CLASSES = ("twitter-tweet", "instagram-media", "tiktok-embed")
_WRAPPER_TAGS = {"div", "figure", "section", "aside", "span", "center"}


def prepare_tree(root: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    """A cleaned copy of the page for the extractors (the original stays intact)."""
    tree = _copy(root)
    _unwrap_social_embeds(tree)
    _drop_nested_teasers(tree)
    return tree


def _copy(root: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    return deepcopy(root)


def _drop_nested_teasers(tree: lxml.html.HtmlElement) -> None:
    """An <article> holding several other <article>s is a story with a
    "you may also like" list of teaser cards or comments (HTML5 nests both
    as articles); extractors read them as more story. Drop the small nested
    ones when there are at least two."""
    for outer in tree.xpath("//article[.//article]"):
        if outer.getparent() is None:
            continue
        inner = list(outer.iterdescendants("article"))
        if len(inner) < 2:
            continue
        outer_len = len(outer.text_content())
        for node in inner:
            # A nested article carrying most of the text is the story itself
            # (some themes wrap it in a page-level <article>): keep it.
            if node.getparent() is not None and len(node.text_content()) < 0.4 * outer_len:
                node.drop_tree()


def _unwrap_social_embeds(tree: lxml.html.HtmlElement) -> None:
    """Embedded posts are quoted material of the story; extractors drop them
    because their wrappers carry 'social'/'embed' class names. Replace the
    wrapper by a plain blockquote of paragraphs."""
    condition = " or ".join(f'contains(@class,"{name}")' for name in _SOCIAL_EMBED_CLASSES)
    for quote in tree.xpath(f"//blockquote[{condition}]"):
        parts = [clean_inline(para.text_content()) for para in quote.iter("p")]
        # What is outside the <p>s is the attribution ("— name (@handle) date").
        attribution = deepcopy(quote)
        for para in list(attribution.iter("p")):
            para.drop_tree()
        parts.append(clean_inline(attribution.text_content()))
        parts = [part for part in parts if part]
        if not parts:
            continue
        replacement = lxml.html.Element("blockquote")
        for part in parts:
            para = etree.SubElement(replacement, "p")
            para.text = part
        target = quote
        quote_text = _token_key(quote.text_content())
        while True:
            parent = target.getparent()
            if parent is None or parent.tag not in _WRAPPER_TAGS:
                break
            if _token_key(parent.text_content()) != quote_text:
                break
            target = parent
        if target.getparent() is None:
            continue
        replacement.tail = target.tail
        target.getparent().replace(target, replacement)


# --------------------------------------------------------------------------
# density candidate (readability-style), independent of trafilatura

_STRIP_TAGS = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "object",
               "embed", "form", "button", "select", "input", "textarea", "nav", "footer",
               "header", "aside", "menu", "dialog")
_UNLIKELY_RE = re.compile(
    r"comment|disqus|footer|sidebar|side-bar|share|sharing|social|related|recommend|"
    r"promo|newsletter|subscribe|signup|sign-up|advert|\bads?\b|ad-slot|sponsor|popup|modal|"
    r"cookie|consent|breadcrumb|masthead|menu|navbar|\bnav\b|pagination|pager|outbrain|taboola|"
    r"byline|author-bio|tags?\b|trending|most-read|mostread|more-stories",
    re.I,
)
_LIKELY_RE = re.compile(r"article|body|content|entry|main|post|story|text|prose|column", re.I)
_BLOCK_TAGS = {"p", "pre", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "td", "dd", "figcaption"}
_BLOCK_CHILD_TAGS = {"p", "div", "section", "article", "ul", "ol", "table", "h1", "h2", "h3", "h4",
                     "h5", "h6", "blockquote", "pre", "figure", "main", "dl"}
_CONTAINER_TAGS = {"div", "section", "article", "main", "td", "span", "font", "center", "body", "blockquote"}


def _class_id(node) -> str:
    return f"{node.get('class') or ''} {node.get('id') or ''}"


def density_candidate(tree: lxml.html.HtmlElement) -> str:
    """Score containers by the prose their paragraphs hold, pick the best one
    plus siblings that look like continuations, and return their blocks."""
    work = _copy(tree)
    page_len = len(work.text_content()) or 1
    for node in list(work.iter(*_STRIP_TAGS)):
        # ASP.NET pages wrap the whole body in one <form>: only small ones are chrome.
        if node.getparent() is not None and (node.tag != "form" or len(node.text_content()) < 0.3 * page_len):
            node.drop_tree()
    page_len = len(work.text_content()) or 1
    for node in list(work.iter()):
        if not isinstance(node.tag, str) or node.getparent() is None or node.tag in ("html", "body"):
            continue
        marker = _class_id(node)
        if not marker.strip() or not _UNLIKELY_RE.search(marker) or _LIKELY_RE.search(marker):
            continue
        # A "sidebar" holding most of the page is a layout wrapper, not a sidebar.
        if len(node.text_content()) < 0.3 * page_len:
            node.drop_tree()

    scores: dict = {}
    for para in work.iter("p", "pre", "td", "blockquote", "div", "section"):
        # Divs holding only inline content are paragraphs in all but name.
        if para.tag in ("div", "section") and any(
            isinstance(child.tag, str) and child.tag in _BLOCK_CHILD_TAGS for child in para
        ):
            continue
        text = clean_inline(para.text_content())
        if len(text) < 25:
            continue
        score = 1 + text.count(",") + text.count("，") + text.count("、") + min(len(text) // 100, 3)
        parent = para.getparent()
        if parent is None:
            continue
        scores[parent] = scores.get(parent, 0.0) + score
        grand = parent.getparent()
        if grand is not None:
            scores[grand] = scores.get(grand, 0.0) + score / 2
    if not scores:
        return ""
    best, best_score = None, 0.0
    for node, score in scores.items():
        marker = _class_id(node)
        if _LIKELY_RE.search(marker):
            score *= 1.25
        score *= 1 - _link_density(node)
        if score > best_score:
            best, best_score = node, score
    if best is None:
        return ""
    selected = [best]
    parent = best.getparent()
    if parent is not None:
        threshold = max(10.0, best_score * 0.2)
        selected = []
        best_class = best.get("class")
        for sibling in parent:
            if not isinstance(sibling.tag, str):
                continue
            if sibling is best:
                selected.append(sibling)
                continue
            sib_score = scores.get(sibling, 0.0) * (1 - _link_density(sibling))
            same_class = best_class and sibling.get("class") == best_class
            if sib_score >= threshold or (same_class and sib_score > 0):
                selected.append(sibling)
            elif sibling.tag == "p":
                text = clean_inline(sibling.text_content())
                if len(text) > 80 and _link_density(sibling) < 0.25:
                    selected.append(sibling)
    paragraphs: list[str] = []
    for node in selected:
        paragraphs.extend(_blocks(node))
    return "\n".join(paragraphs)


def _link_density(node) -> float:
    text_len = len(" ".join(node.text_content().split()))
    if not text_len:
        return 1.0
    link_len = sum(len(" ".join(a.text_content().split())) for a in node.iter("a"))
    return min(link_len / text_len, 1.0)


def _blocks(node) -> list[str]:
    """Text of the block-level pieces under node, in document order, without
    repeating nested blocks."""
    out: list[str] = []
    if node.tag in _BLOCK_TAGS:
        text = clean_inline(node.text_content())
        return [text] if text else []
    pending = [node.text or ""]
    for child in node:
        if not isinstance(child.tag, str):
            pending.append(child.tail or "")
            continue
        if child.tag in _BLOCK_TAGS or child.tag in _CONTAINER_TAGS or child.tag in ("ul", "ol", "table", "figure", "h1", "dl", "tr", "tbody"):
            text = clean_inline("".join(pending))
            if text:
                out.append(text)
            pending = []
            if child.tag in _BLOCK_TAGS:
                text = clean_inline(child.text_content())
                if text:
                    out.append(text)
            elif child.tag != "h1":
                out.extend(_blocks(child))
            pending.append(child.tail or "")
        elif child.tag == "br":
            text = clean_inline("".join(pending))
            if text:
                out.append(text)
            pending = [child.tail or ""]
        else:
            pending.append(child.text_content())
            pending.append(child.tail or "")
    text = clean_inline("".join(pending))
    if text:
        out.append(text)
    return out


def _element_count(root: lxml.html.HtmlElement) -> int:
    return sum(1 for _ in root.iter())


def _visible_token_count(root: lxml.html.HtmlElement) -> int:
    texts = root.xpath(
        "//body//text()[not(ancestor::script or ancestor::style or ancestor::noscript or ancestor::template)]"
    )
    return len(tokens(" ".join(texts)))


def json_ld_candidate(objects: list[dict]) -> str:
    bodies = [obj.get("articleBody") for obj in objects if isinstance(obj.get("articleBody"), str)]
    if not bodies:
        return ""
    body = max(bodies, key=len)
    body = html_module.unescape(body) if "&" in body else body
    if "<" in body:
        # Some publishers put HTML in articleBody; never pass it through.
        root = parse_html(f"<html><body><div>{body}</div></body></html>")
        if root is None or root.find("body") is None:
            return ""
        for node in list(root.iter(*_STRIP_TAGS)):
            if node.getparent() is not None:
                node.drop_tree()
        body = "\n".join(_blocks(root.find("body")))
    return "\n".join(split_paragraphs(body))


# --------------------------------------------------------------------------
# trafilatura runs and their consensus


def trafilatura_candidates(tree: lxml.html.HtmlElement, url: str | None) -> dict[str, list[str]]:
    import trafilatura

    runs = {"precision": {"favor_precision": True}, "default": {}}
    out: dict[str, list[str]] = {}
    for name, options in runs.items():
        try:
            text = trafilatura.extract(
                tree, url=url, include_comments=False, include_tables=True, output_format="txt", **options
            )
        except Exception as exc:  # trafilatura is a black box on hostile pages
            log.debug("trafilatura %s failed: %s", name, exc)
            text = None
        out[name] = split_paragraphs(text)
    return out


def _supported(paragraph: str, reference: list[str], reference_keys: set[str]) -> bool:
    key = _token_key(paragraph)
    if key in reference_keys:
        return True
    words = set(key.split())
    return any(_same_paragraph(words, set(_token_key(other).split())) for other in reference)


def _same_paragraph(words: set[str], other_words: set[str]) -> bool:
    # The precision run sometimes keeps a paragraph minus its link texts, or
    # splits it: count it as the same paragraph when most of its words match.
    return (
        bool(words)
        and bool(other_words)
        and len(words & other_words) >= 0.8 * min(len(words), len(other_words))
        and len(other_words) >= 0.5 * len(words)
    )


# A precise run this much shorter than the rest of the default run, made of
# notice lines, has found a notice, not the story.
_NOTICE_BODY_RATIO = 3
_MIN_BODY_TOKENS = 100
# Page notices are written as sentences (rights, reprints, terms), so the
# call-to-action rules alone miss them.
_NOTICE_RE = re.compile(
    r"\b(personal|non-?commercial|private) use\b|\breprints?\b|\ball rights reserved\b|©"
    r"|\bcopyright (\(c\)|\d{4}\b|law\b)|\bmay not be (re)?published\b"
    r"|\bsubscriber agreement\b|\bterms (of|and) (use|service|conditions)\b|\bprivacy (policy|notice)\b"
    r"|\bwe use cookies\b|\balready a subscriber\b|\bsubscribers? only\b",
    re.I,
)
_MAX_NOTICE_TOKENS = 80
# Share of a span's words in notice lines for the span to read as a notice.
_NOTICE_SHARE = 0.6


def _reads_as_notice(paragraphs: list[str]) -> bool:
    total = notice = 0
    for paragraph in paragraphs:
        size = len(tokens(paragraph))
        total += size
        if size <= _MAX_NOTICE_TOKENS and (_NOTICE_RE.search(paragraph) or _BOILERPLATE_RE.search(paragraph)):
            notice += size
    return total > 0 and notice >= _NOTICE_SHARE * total


def consensus(precise: list[str], broad: list[str]) -> list[str]:
    """Paragraphs of the broad run, cut to the span the precise run agrees on.
    Inside the span, a line only the broad run kept is dropped when it reads
    as a call to action (two independent signals that it is not story).

    Two guards keep the cut honest. A precise run that is a short notice
    (reprint, rights, terms) next to a much longer broad run has missed the
    story: the broad run minus the notice is kept. A span holding the precise
    paragraphs more than once (the body repeated as print/AMP/teaser copies)
    is narrowed to one copy. Whatever is returned holds no repeated copy of
    its own body (`collapse_copies`)."""
    if not broad:
        return collapse_copies(precise)
    if not precise:
        return collapse_copies(broad)
    keys = {_token_key(p) for p in precise}
    flags = [_supported(p, precise, keys) for p in broad]
    rest = [p for p, supported in zip(broad, flags) if not supported and not _is_boilerplate_line(p)]
    n_precise, n_rest = len(tokens(" ".join(precise))), len(tokens(" ".join(rest)))
    if n_rest >= max(_MIN_BODY_TOKENS, _NOTICE_BODY_RATIO * n_precise) and _reads_as_notice(precise):
        # The precise run kept a notice and lost the story: never trust it
        # over a long body.
        return collapse_copies(rest)
    if sum(flags) < 0.5 * len(precise):
        # The runs picked different parts of the page: trust the precise one.
        return collapse_copies(precise)
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    first, last = _one_copy(precise, broad, flags, first, last)
    return collapse_copies([
        paragraph
        for paragraph, supported in zip(broad[first:last + 1], flags[first:last + 1])
        if supported or not _is_boilerplate_line(paragraph)
    ])


# Supported text this many times the precise run's means the span holds the
# precise paragraphs more than once.
_COPY_RATIO = 1.5


def _one_copy(precise: list[str], broad: list[str], flags: list[bool], first: int, last: int) -> tuple[int, int]:
    """The shortest part of broad[first:last+1] that holds every precise
    paragraph the span holds, as many times as the precise run has it; the
    span itself unless it holds the precise text more than once."""
    n_precise = len(tokens(" ".join(precise)))
    sizes = [len(tokens(p)) for p in broad]
    supported_size = sum(size for size, flag in zip(sizes[first:last + 1], flags[first:last + 1]) if flag)
    if supported_size <= _COPY_RATIO * n_precise:
        return first, last
    need: dict[str, int] = {}
    for paragraph in precise:
        key = _token_key(paragraph)
        need[key] = need.get(key, 0) + 1
    key_words = {key: set(key.split()) for key in need}
    stands_for: list[set[str]] = []
    exact: list[bool] = []
    for index, paragraph in enumerate(broad):
        if not flags[index] or not first <= index <= last:
            stands_for.append(set())
            exact.append(False)
            continue
        key = _token_key(paragraph)
        words = set(key.split())
        # Only a paragraph of about the same size stands for a precise one
        # here: a headline or a teaser line shares most of its words with the
        # lead paragraph without being a copy of it.
        stands_for.append({other for other, other_words in key_words.items()
                           if other == key or (_same_paragraph(words, other_words) and len(words) >= 0.5 * len(other_words))})
        exact.append(key in need)
    available: dict[str, int] = {}
    for found in stands_for:
        for key in found:
            available[key] = available.get(key, 0) + 1
    wanted = {key: min(need[key], count) for key, count in available.items()}
    if not wanted:
        return first, last
    # Prefix sums: words, and paragraphs that are not word for word precise ones.
    words_before, loose_before = [0], [0]
    for size, is_exact in zip(sizes, exact):
        words_before.append(words_before[-1] + size)
        loose_before.append(loose_before[-1] + (not is_exact))

    def rank(left: int, right: int) -> tuple[int, int, int]:
        # Fewest loose paragraphs, then fewest words, then the first copy.
        return loose_before[right + 1] - loose_before[left], words_before[right + 1] - words_before[left], left

    # The tightest windows covering `wanted`, two pointers over the span.
    have: dict[str, int] = dict.fromkeys(wanted, 0)
    missing = len(wanted)
    best = (first, last)
    best_rank = rank(first, last)
    left = first
    for right in range(first, last + 1):
        for key in stands_for[right]:
            have[key] += 1
            if have[key] == wanted[key]:
                missing -= 1
        while missing == 0:
            if rank(left, right) < best_rank:
                best, best_rank = (left, right), rank(left, right)
            for key in stands_for[left]:
                if have[key] == wanted[key]:
                    missing += 1
                have[key] -= 1
            left += 1
    return best


# A repeated run of paragraphs is a copy of the body (print, AMP, teaser
# versions on one page) when it is at least this share of the text; repeated
# lines of a real article (an interview's recurring question, a meal plan's
# recurring portion line) stay far below it.
_COPY_SHARE = 0.25
_MIN_COPY_TOKENS = 50


def collapse_copies(paragraphs: list[str]) -> list[str]:
    """Drop later copies of a run of paragraphs that repeats an earlier run
    and makes up a large part of the text."""
    paras = list(paragraphs)
    while True:
        keys = [_token_key(p) for p in paras]
        sizes = [len(key.split()) for key in keys]
        total = sum(sizes)
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            if key:
                positions.setdefault(key, []).append(index)
        best_size, best_run = 0, None
        for places in positions.values():
            for a, i in enumerate(places):
                for j in places[a + 1:]:
                    if i > 0 and keys[i - 1] == keys[j - 1]:
                        continue  # inside a longer run, counted from its start
                    length = 0
                    while j + length < len(keys) and i + length < j and keys[i + length] == keys[j + length]:
                        length += 1
                    size = sum(sizes[j:j + length])
                    if size > best_size:
                        best_size, best_run = size, (j, length)
        if best_run is None or best_size < max(_MIN_COPY_TOKENS, _COPY_SHARE * total):
            return paras
        start, length = best_run
        del paras[start:start + length]


# A sibling chunk needs about a sentence of prose to count as story.
_MIN_CHUNK_TOKENS = 20


def add_sibling_chunks(tree: lxml.html.HtmlElement, paragraphs: list[str]) -> list[str]:
    """Some templates split one story over several identical body containers
    with ads between them; trafilatura keeps only the first. Readability's
    old rule applies: siblings with the same tag and class as the container
    of the extracted text are more of the same story, unless they carry
    their own headline (the next story of an infinite scroll)."""
    if not paragraphs:
        return paragraphs
    container = _container_of(tree, paragraphs)
    if container is None:
        return paragraphs
    known = {_token_key(p) for p in paragraphs}
    before: list[str] = []
    after: list[str] = []
    node = container
    for _level in range(2):
        parent = node.getparent()
        cls = node.get("class")
        if parent is None or not cls:
            node = parent
            if node is None:
                break
            continue
        seen_self = False
        for sibling in parent:
            if sibling is node:
                seen_self = True
                continue
            if sibling.tag != node.tag or sibling.get("class") != cls:
                continue
            if sibling.xpath(".//h1|.//header|.//article") or _link_density(sibling) > 0.3:
                continue
            chunk = [p for p in _prose_blocks(sibling) if _token_key(p) not in known]
            if len(tokens(" ".join(chunk))) < _MIN_CHUNK_TOKENS:
                continue
            known.update(_token_key(p) for p in chunk)
            (after if seen_self else before).extend(chunk)
        if before or after:
            break
        node = parent
    return before + paragraphs + after


def _prose_blocks(node) -> list[str]:
    """Blocks of node without its link-dominated parts (ad rails, "more
    stories" lists) and without parts named like page furniture (author bio,
    share bar, related links)."""
    node = _copy(node)
    for part in list(node.iter("ul", "ol", "li", "div", "aside", "section", "p")):
        if part.getparent() is None:
            continue
        marker = _class_id(part)
        if _link_density(part) > 0.5 or (_UNLIKELY_RE.search(marker) and not _LIKELY_RE.search(marker)):
            part.drop_tree()
    return _blocks(node)


def _container_of(tree: lxml.html.HtmlElement, paragraphs: list[str]):
    """Smallest element holding the first extracted paragraph and most of the text."""
    first = _token_key(paragraphs[0])[:80]
    if not first:
        return None
    deepest = None
    for node in tree.iter("p", "div", "li", "blockquote", "section", "td"):
        if first in _token_key(node.text_content()):
            deepest = node
    wanted = 0.8 * len(tokens(" ".join(paragraphs)))
    while deepest is not None and len(tokens(deepest.text_content())) < wanted:
        deepest = deepest.getparent()
    return deepest


# --------------------------------------------------------------------------
# edge trimming: lines about the page rather than the story

_BOILERPLATE_RE = re.compile(
    r"^(comments?|tags?|share( this)?( article| story)?|related( articles| stories)?|read more|advertisement)\W*$"
    r"|\bshare\b.{0,20}\bwith\b|follow (us|him|her|them|\w+ \w+) on|on (twitter|facebook|instagram)\b.*\bfollow"
    r"|\bsubscribe\b|\bnewsletters?\b|\bsign up\b|click here|tell us what you think|like this (story|article)"
    r"|^copyright\b|\bfiled under\b|may be reached at|\bemail (the writer|us|him|her)\b"
    r"|^(source|sources|fonte|quelle)\s*:",
    re.I,
)
_MAX_EDGE_TOKENS = 30


# A dateline/byline line: a numeric date, a clock time, or "18 November 2019" /
# "November 18, 2019" style dates.
_DATE_LINE_RE = re.compile(
    r"\b\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}\b|\b\d{1,2}:\d{2}\b"
    r"|\b\d{1,2}\.?\s+[^\W\d_]{3,}\.?,?\s+\d{4}\b|\b[^\W\d_]{3,}\.?\s+\d{1,2},?\s+\d{4}\b"
)
_SENTENCE_END_RE = re.compile(r"[.!?…。！？][\"”’)»]?$")
_MAX_DATE_LINE_TOKENS = 15


def title_keys(root: lxml.html.HtmlElement) -> set[str]:
    """Every way the page states its headline: og/twitter titles, <title>
    (whole and split at site-name separators) and the first h1s."""
    texts = []
    for meta in root.iter("meta"):
        key = (meta.get("property") or meta.get("name") or "").lower()
        if key in ("og:title", "twitter:title"):
            texts.append(meta.get("content") or "")
    title = root.find(".//title")
    if title is not None:
        whole = title.text_content()
        texts.append(whole)
        texts.extend(re.split(r"\s[|\-–—»·:]\s", whole))
    for index, heading in enumerate(root.iter("h1")):
        if index >= 3:
            break
        texts.append(heading.text_content())
    keys = {_token_key(text) for text in texts}
    keys.discard("")
    return keys


def trim_leading(paragraphs: list[str], titles: set[str]) -> list[str]:
    """Drop the headline repeated as first line, and dateline/byline lines."""
    paras = list(paragraphs)
    while len(paras) > 1 and (_is_title_repeat(paras[0], titles) or _is_date_line(paras[0])):
        paras.pop(0)
    return paras


def trim_trailing(paragraphs: list[str], titles: set[str] | None = None) -> list[str]:
    """Drop share/follow/subscribe/tags lines after the story, and the
    headline left behind after it (the heading of a dropped copy or teaser)."""
    paras = list(paragraphs)
    while len(paras) > 1 and (_is_boilerplate_line(paras[-1]) or (titles and _is_title_repeat(paras[-1], titles))):
        paras.pop()
    return paras


def _is_boilerplate_line(paragraph: str) -> bool:
    return len(tokens(paragraph)) <= _MAX_EDGE_TOKENS and bool(_BOILERPLATE_RE.search(paragraph))


def _is_date_line(paragraph: str) -> bool:
    return (
        len(tokens(paragraph)) <= _MAX_DATE_LINE_TOKENS
        and not _SENTENCE_END_RE.search(paragraph)
        and bool(_DATE_LINE_RE.search(paragraph))
    )


def _is_title_repeat(paragraph: str, titles: set[str]) -> bool:
    key = _token_key(paragraph)
    if not key:
        return False
    size = len(key.split())
    for title in titles:
        if key == title:
            return True
        # "Headline | Site" titles contain the headline; a headline shown
        # with a kicker contains the title.
        if size >= 3 and key in title:
            return True
        if title in key and size <= 1.5 * len(title.split()) and len(title.split()) >= 3:
            return True
    return False


# --------------------------------------------------------------------------
# choosing among candidates

# Below this many words trafilatura has not found an article.
_MIN_ARTICLE_TOKENS = 25


def choose(primary: list[str], fallbacks: dict[str, Callable[[], str]]) -> tuple[list[str], str]:
    """Trafilatura's consensus unless it found next to nothing; then the
    longest independent candidate. (Letting a longer fallback replace a
    healthy trafilatura result lost more than it won on the dev set: the
    extra text is mostly captions and teasers.)"""
    n_primary = len(tokens(" ".join(primary)))
    if n_primary >= _MIN_ARTICLE_TOKENS:
        return primary, "trafilatura"
    best_name, best_paras, best_size = "trafilatura", primary, n_primary
    for name, make in fallbacks.items():
        paras = split_paragraphs(make())
        size = len(tokens(" ".join(paras)))
        if size > best_size:
            best_name, best_paras, best_size = name, paras, size
    return best_paras, best_name


# --------------------------------------------------------------------------
# public entry point


def extract_article(html: str | bytes, url: str | None = None) -> ExtractedPage:
    """Main text and metadata of a news page. Never raises on bad input:
    unusable pages give an empty `text` and method 'none'."""
    try:
        return _extract(html, url)
    except Exception as exc:  # last line of defence: one bad page must not stop a run
        log.warning("extraction failed for %s: %s", url or "<no url>", exc)
        return ExtractedPage(method="error")


def _extract(html: str | bytes, url: str | None) -> ExtractedPage:
    if not isinstance(html, (str, bytes, bytearray)):
        raise TypeError(f"html must be str or bytes, not {type(html).__name__}")
    root = parse_html(decode_html(html))
    if root is None:
        return ExtractedPage()
    title, canonical, og, published = read_metadata(root)
    og = {key: value for key, value in og.items() if key != "og:url"}
    titles = title_keys(root)
    json_ld_body = json_ld_candidate(read_json_ld(root))
    if json_ld_body and _visible_token_count(root) < _MIN_ARTICLE_TOKENS:
        # A script-rendered shell: the publisher's own articleBody is all there is.
        paragraphs, method = split_paragraphs(json_ld_body), "json-ld"
    elif _element_count(root) > MAX_TRAFILATURA_ELEMENTS:
        # Trafilatura's cost grows steeply with tree size (seconds on such
        # pages); the density extractor stays linear.
        paragraphs, method = split_paragraphs(density_candidate(prepare_tree(root))), "density"
    else:
        tree = prepare_tree(root)
        runs = trafilatura_candidates(tree, url)
        merged = consensus(trim_leading(runs["precision"], titles), trim_leading(runs["default"], titles))
        merged = add_sibling_chunks(tree, merged)
        fallbacks = {"json-ld": lambda: json_ld_body, "density": lambda: density_candidate(tree)}
        paragraphs, method = choose(merged, fallbacks)
    paragraphs = trim_trailing(trim_leading(paragraphs, titles), titles)
    text = "\n\n".join(paragraphs)
    return ExtractedPage(
        title=title,
        text=text,
        canonical_url=canonical,
        og=og,
        published=published,
        method=method if text else "none",
    )
