"""The editor's document: one layout for a draft, written to Google Docs or the local outbox, and read back.

`layout_draft` turns a draft (and its fact-check report) into a list of
`Block`s: plain text paragraphs with a named style, an optional list kind and
inline spans (bold, link, highlight). The Docs writer (`content_requests`) and
the local outbox render the same blocks, so both targets show the same
sections in the same order.

Everything from the draft is untrusted text. It is cleaned of characters that
would change the structure (newlines, tabs, control characters) and goes to
Docs only through insertText, never as markup. Docs counts positions in UTF-16
code units, so every index sent is computed with `utf16_len`; an emoji is two
units, an accented letter one.

`parse_document` reads a Docs document back into blocks by its structure
(named styles, headings, bullets) and `article_from_blocks` rebuilds an
Article from them, for the approval sync.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal
from urllib.parse import urlsplit

from pipeline.text.editdiff import cite
from pipeline.core.logs import redact
from pipeline.text.metadata import header_lines, is_header_line
from pipeline.core.models import VERDICTS, Article, ClaimVerdict, Draft, FactCheckReport, Insight, Paragraph

BlockStyle = Literal["TITLE", "SUBTITLE", "HEADING_2", "HEADING_6", "NORMAL_TEXT"]
ListKind = Literal["bullet", "numbered"]
Highlight = Literal["contradicted", "unverifiable", "off_story", "unresolved_reference", "wrong_language"]

INSIGHTS, SOURCES, FACT_CHECK = "Insights", "Sources", "Fact-check"
SOURCES_TAB = "Sources & fact-check"   # the second tab's title in a Google document
BULLET_PRESET = "BULLET_DISC_CIRCLE_SQUARE"
NUMBERED_PRESET = "NUMBERED_DECIMAL_ALPHA_ROMAN"
HIGHLIGHT_RGB: dict[str, dict[str, float]] = {
    "contradicted": {"red": 0.957, "green": 0.8, "blue": 0.8},   # light red
    "unverifiable": {"red": 1.0, "green": 0.949, "blue": 0.8},   # light yellow
    "off_story": {"red": 0.988, "green": 0.898, "blue": 0.804},  # light orange
    "unresolved_reference": {"red": 0.812, "green": 0.886, "blue": 0.953},  # light blue
    "wrong_language": {"red": 0.851, "green": 0.824, "blue": 0.914},  # light purple
}
# How each verdict is named in the document.
VERDICT_LABELS: dict[str, str] = {
    "supported": "Supported", "contradicted": "Contradicted", "unverifiable": "Unverifiable",
    "off_story": "Off-story", "unresolved_reference": "Unresolved reference", "wrong_language": "Wrong language",
}
# Always in the counts line; the story labels only when a claim has them, so a document of a draft checked
# before the story check existed reads as it did.
_ALWAYS_COUNTED = ("supported", "contradicted", "unverifiable")
# Text-style fields the writer owns: reset on every write so a republish never
# inherits a stale link or highlight from the previous version.
OWNED_TEXT_FIELDS = "bold,italic,underline,strikethrough,link,backgroundColor"


@dataclass(frozen=True)
class Span:
    """An inline style over block.text[start:end] (Python string offsets)."""

    start: int
    end: int
    bold: bool = False
    link: str | None = None
    highlight: Highlight | None = None
    claim: str = ""   # the flagged claim's key (claim_key) on its highlight: where its comment is anchored


@dataclass
class Block:
    text: str
    style: BlockStyle = "NORMAL_TEXT"
    list_kind: ListKind | None = None
    spans: list[Span] = field(default_factory=list)
    role: str = ""   # status, headline, meta, lead, body, heading, insight, source, check


def claim_key(text: str) -> str:
    """A flagged claim's identity across re-checks and republishes: its cleaned text, hashed (12 hex)."""
    return hashlib.sha256(clean_text(text).encode("utf-8")).hexdigest()[:12]


# --- text hygiene ------------------------------------------------------------

# Characters Docs strips from inserted text (and so would shift every index after
# them), characters that start a new paragraph or line, tabs (they set bullet
# nesting and are removed by createParagraphBullets) and lone surrogates.
_STRUCTURAL = re.compile(
    "[\u0000-\u001f\u007f\u0085\u2028\u2029\ue000-\uf8ff\ud800-\udfff]"
)


def clean_text(text: str) -> str:
    """One paragraph of plain text that Docs will store exactly as given, with known
    credentials and credential-shaped strings masked (pipeline.core.logs.redact)."""
    text = _STRUCTURAL.sub(" ", unicodedata.normalize("NFC", redact(text or "")))
    return re.sub(r" {2,}", " ", text).strip()


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def safe_url(url: str | None) -> str | None:
    """The URL if it is an absolute http(s) link without spaces or control characters, else None."""
    if not url:
        return None
    url = url.strip()
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


# --- layout ------------------------------------------------------------------


def fact_check_totals(report: FactCheckReport | None) -> dict[str, int]:
    if report is None:
        return {}
    # Counted from the verdicts listed in the document, so the line and the section always agree.
    totals = dict.fromkeys(VERDICTS, 0)
    for verdict in report.verdicts:
        totals[verdict.verdict] = totals.get(verdict.verdict, 0) + 1
    return totals


def counts_text(totals: dict[str, int]) -> str:
    """ "9 supported, 0 contradicted, 1 unverifiable, 2 off-story, 1 unresolved reference": a count per label."""
    parts = []
    for label in VERDICTS:
        count = totals.get(label, 0)
        if label in _ALWAYS_COUNTED or count:
            parts.append(f"{count} {VERDICT_LABELS[label].lower()}")
    return ", ".join(parts)


def metadata_line(draft: Draft, report: FactCheckReport | None) -> str:
    prompts = ", ".join(f"{name} {version}" for name, version in sorted(draft.prompt_versions.items())) or "none"
    totals = fact_check_totals(report)
    checked = (
        "not fact-checked"
        if report is None
        else counts_text(totals)
    )
    return (
        f"Story {draft.story_key[:12]} · Template {draft.template} · Writer {draft.writer_model} · "
        f"Prompts {prompts} · Fact-check: {checked}"
    )


def layout_draft(draft: Draft, report: FactCheckReport | None) -> list[Block]:
    """The document editors see, top to bottom. Empty paragraphs are dropped."""
    article = draft.article
    blocks: list[Block] = [
        Block(clean_text(article.headline) or "(untitled draft)", "TITLE", role="headline"),
        Block(clean_text(metadata_line(draft, report)), "HEADING_6", role="meta"),
        # Slug, meta description, tags, suggested image (as text: never inserted or linked); read back on sync.
        *(Block(clean_text(line), "HEADING_6", role="cms") for line in header_lines(draft.meta)),
    ]
    lead = clean_text(article.lead)
    if lead:
        blocks.append(Block(lead, "SUBTITLE", spans=[Span(0, len(lead), bold=True)], role="lead"))
    blocks += [Block(clean_text(cite(p.text, p.citations)), role="body") for p in article.body]
    if article.insights:
        blocks.append(Block(INSIGHTS, "HEADING_2", role="heading"))
        blocks += [Block(clean_text(cite(i.text, i.citations)), list_kind="bullet", role="insight") for i in article.insights]
    if article.sources:
        blocks.append(Block(SOURCES, "HEADING_2", role="heading"))
        sources = sorted(article.sources, key=lambda s: s.n)
        # The list numbers itself; spell out [n] only when the numbering would not match the citations.
        numbered_like_citations = [s.n for s in sources] == list(range(1, len(sources) + 1))
        for source in sources:
            blocks.append(_source_block(source, show_number=not numbered_like_citations))
    blocks.append(Block(FACT_CHECK, "HEADING_2", role="heading"))
    blocks += _fact_check_blocks(report)
    blocks = [b for b in blocks if b.text]
    if report is not None:
        _highlight_flagged(blocks, report.flagged())
    return blocks


def _source_block(source, show_number: bool) -> Block:
    title = clean_text(source.title) or clean_text(source.url) or f"Source {source.n}"
    prefix = f"[{source.n}] " if show_number else ""
    details = [clean_text(source.outlet)]
    if source.published is not None:
        details.append(source.published.date().isoformat())
    suffix = " — " + ", ".join(d for d in details if d) if any(details) else ""
    url = safe_url(source.url)
    if url is None and source.url:
        suffix += " (link omitted: not an http(s) URL)"
    text = prefix + title + suffix
    spans = [Span(len(prefix), len(prefix) + len(title), link=url)] if url else []
    return Block(text, list_kind="numbered", spans=spans, role="source")


def _fact_check_blocks(report: FactCheckReport | None) -> list[Block]:
    if report is None:
        return [Block("This draft was not fact-checked.", role="check")]
    flagged = report.flagged()
    totals = fact_check_totals(report)
    summary = f"{len(report.verdicts)} claim{'' if len(report.verdicts) == 1 else 's'} checked: {counts_text(totals)}."
    blocks = [Block(summary, role="check")]
    if not flagged:
        blocks.append(Block("No claims were flagged.", role="check"))
    for verdict in flagged:
        blocks += _flag_blocks(verdict)
    return blocks


def _flag_blocks(verdict: ClaimVerdict) -> list[Block]:
    label = VERDICT_LABELS.get(verdict.verdict, verdict.verdict.capitalize())
    claim = clean_text(verdict.claim.text)
    text = f"{label}: “{claim}”"
    blocks = [Block(text, spans=[Span(0, len(label), bold=True, highlight=verdict.verdict)], role="check")]
    evidence = clean_text(verdict.evidence)
    if evidence:
        where = f" [{verdict.source_n}]" if verdict.source_n is not None else ""
        blocks.append(Block(f"Evidence{where}: “{evidence}”", role="check"))
    reasons = "; ".join(clean_text(f.detail) for f in verdict.failures if clean_text(f.detail))
    if reasons:
        blocks.append(Block(f"Why: {reasons}", role="check"))
    if verdict.source_url:
        url = safe_url(verdict.source_url)
        shown = clean_text(verdict.source_url)
        if url:
            blocks.append(Block(f"Source: {shown}", spans=[Span(8, 8 + len(shown), link=url)], role="check"))
        else:
            blocks.append(Block("Source: link omitted (not an http(s) URL)", role="check"))
    return blocks


_SECTION_ROLES = {"headline": ("headline",), "lead": ("lead",), "body": ("body",), "insights": ("insight",)}


def _highlight_flagged(blocks: list[Block], flagged: Iterable[ClaimVerdict]) -> None:
    """Mark each flagged claim where its text appears in the article.

    Claims are found by their verbatim text, first in their own section, then
    anywhere in the article; a claim whose text no longer appears (revised
    away) is still listed in the fact-check section.
    """
    article_roles = ("headline", "lead", "body", "insight")
    for verdict in flagged:
        needle = clean_text(verdict.claim.text)
        if not needle:
            continue
        preferred = _SECTION_ROLES.get(verdict.claim.section, article_roles)
        for roles in (preferred, article_roles):
            hit = next((b for b in blocks if b.role in roles and needle in b.text), None)
            if hit is not None:
                start = hit.text.index(needle)
                hit.spans.append(Span(start, start + len(needle), highlight=verdict.verdict, claim=claim_key(needle)))
                break


# --- Docs requests ------------------------------------------------------------


def _range(start: int, end: int, tab_id: str | None = None) -> dict[str, Any]:
    rng: dict[str, Any] = {"startIndex": start, "endIndex": end}
    if tab_id:
        rng["tabId"] = tab_id
    return rng


def block_starts(blocks: list[Block]) -> list[int]:
    """The Docs index (UTF-16, body starting at 1) where each block's paragraph starts once written."""
    starts, position = [], 1
    for block in blocks:
        starts.append(position)
        position += utf16_len(block.text) + 1
    return starts


def text_edits(old: str, new: str, tab_id: str | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Requests that turn a body holding `old` into one holding `new`, paragraph by paragraph.

    Both texts exclude the body's final newline. Paragraphs equal in both are
    left in place, so comment anchors on them survive a republish; the others
    are deleted and inserted (from the end backwards, so earlier indices stay
    valid). Returns (requests, moved): moved(old index) is the index of the
    same character after the edits, or None when it was deleted.
    """
    old_lines, new_lines = old.split("\n"), new.split("\n")
    old_at = _offsets(old_lines)
    new_at = _offsets(new_lines)
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    opcodes = matcher.get_opcodes()
    requests: list[dict[str, Any]] = []
    lost: int | None = None   # an unchanged line's newline given up for the final one (see below)
    for tag, i1, i2, j1, j2 in reversed(opcodes):
        if tag == "equal":
            continue
        # Each line owns the newline after it; the last line's newline is the body's final one (never
        # deleted), so a change that reaches the end takes the newline before it instead.
        a, b = old_at[i1], old_at[i2]
        text = "".join(line + "\n" for line in new_lines[j1:j2])
        if i2 == len(old_lines):
            if i1 > 0:
                a, b, text = a - 1, b - 1, ("\n" + text[:-1]) if text else ""
                lost = a
            else:
                b, text = b - 1, text[:-1]
        if b > a:
            requests.append({"deleteContentRange": {"range": _range(1 + utf16_len(old[:a]), 1 + utf16_len(old[:b]), tab_id)}})
        if text:
            location: dict[str, Any] = {"index": 1 + utf16_len(old[:a])}
            if tab_id:
                location["tabId"] = tab_id
            requests.append({"insertText": {"location": location, "text": text}})

    def moved(index: int) -> int | None:
        offset = _offset_of_index(old, index)
        if offset == lost:
            return None
        for tag, i1, i2, j1, j2 in opcodes:
            if tag == "equal" and old_at[i1] <= offset < old_at[i2]:
                shifted = offset - old_at[i1] + new_at[j1]
                return 1 + utf16_len(new[:shifted])
        return None

    return requests, moved


def _offsets(lines: list[str]) -> list[int]:
    """String offset where each line starts (each line followed by its newline), plus the total."""
    out, position = [], 0
    for line in lines:
        out.append(position)
        position += len(line) + 1
    out.append(position)
    return out


def _offset_of_index(text: str, index: int) -> int:
    """The string offset of a Docs index (1-based UTF-16) in text."""
    units = 1
    for offset, char in enumerate(text):
        if units >= index:
            return offset
        units += utf16_len(char)
    return len(text)


def content_requests(blocks: list[Block], existing_end: int = 2, existing_text: str | None = None,
                     tab_id: str | None = None) -> list[dict[str, Any]]:
    """One batchUpdate's requests that make a body hold `blocks`.

    With `existing_text` (the body's text as read, without its final newline;
    see tab_text), only the paragraphs that changed are rewritten (text_edits),
    so anything anchored to unchanged text (editors' and our comments) stays.
    Without it, `existing_end` (the body's current end index, 2 for a new,
    empty document) is all that is known and the whole body is replaced. The
    final newline of a body can never be deleted, so the text goes in without
    its own last newline and the surviving one ends the last paragraph. Every
    paragraph and text style the layout uses is set explicitly, so nothing is
    inherited from the old content. `tab_id` targets a tab other than the first.
    """
    if not blocks:
        raise ValueError("a document needs at least one paragraph")
    text = "\n".join(b.text for b in blocks)
    requests: list[dict[str, Any]] = []
    if existing_text is not None:
        requests += text_edits(existing_text, text, tab_id)[0]
    else:
        if existing_end > 2:
            requests.append({"deleteContentRange": {"range": _range(1, existing_end - 1, tab_id)}})
        location: dict[str, Any] = {"index": 1}
        if tab_id:
            location["tabId"] = tab_id
        requests.append({"insertText": {"location": location, "text": text}})
    end_of_text = 1 + utf16_len(text)
    if end_of_text > 1:
        requests.append({"deleteParagraphBullets": {"range": _range(1, end_of_text, tab_id)}})
        requests.append(
            {"updateTextStyle": {"range": _range(1, end_of_text, tab_id), "textStyle": {}, "fields": OWNED_TEXT_FIELDS}}
        )
    starts = block_starts(blocks)

    # Paragraph styles: one request per run of equal styles keeps the batch small.
    for style, first, last in _runs(blocks, key=lambda b: b.style):
        requests.append(
            {
                "updateParagraphStyle": {
                    "range": _range(starts[first], starts[last] + utf16_len(blocks[last].text), tab_id),
                    "paragraphStyle": {"namedStyleType": style},
                    "fields": "namedStyleType",
                }
            }
        )
    for kind, first, last in _runs(blocks, key=lambda b: b.list_kind):
        if kind is None:
            continue
        requests.append(
            {
                "createParagraphBullets": {
                    "range": _range(starts[first], starts[last] + utf16_len(blocks[last].text), tab_id),
                    "bulletPreset": BULLET_PRESET if kind == "bullet" else NUMBERED_PRESET,
                }
            }
        )
    for block, start in zip(blocks, starts):
        for span in block.spans:
            if span.end <= span.start:
                continue
            begin = start + utf16_len(block.text[: span.start])
            stop = start + utf16_len(block.text[: span.end])
            style: dict[str, Any] = {}
            fields: list[str] = []
            if span.bold:
                style["bold"], fields = True, [*fields, "bold"]
            if span.link:
                style["link"], fields = {"url": span.link}, [*fields, "link"]
            if span.highlight:
                style["backgroundColor"] = {"color": {"rgbColor": HIGHLIGHT_RGB[span.highlight]}}
                fields.append("backgroundColor")
            if fields:
                requests.append(
                    {"updateTextStyle": {"range": _range(begin, stop, tab_id), "textStyle": style, "fields": ",".join(fields)}}
                )
    return requests


def claim_ranges(blocks: list[Block]) -> dict[str, tuple[int, int]]:
    """claim key -> (startIndex, endIndex) of its highlighted text once `blocks` are written (first one wins)."""
    out: dict[str, tuple[int, int]] = {}
    for block, start in zip(blocks, block_starts(blocks)):
        for span in block.spans:
            if span.claim and span.end > span.start and span.claim not in out:
                out[span.claim] = (start + utf16_len(block.text[: span.start]), start + utf16_len(block.text[: span.end]))
    return out


def _runs(blocks: list[Block], key) -> Iterable[tuple[Any, int, int]]:
    """(value, first index, last index) for each run of consecutive blocks with the same key."""
    first = 0
    for index in range(1, len(blocks) + 1):
        if index == len(blocks) or key(blocks[index]) != key(blocks[first]):
            yield key(blocks[first]), first, index - 1
            first = index


def body_end_index(document: dict[str, Any]) -> int:
    content = document.get("body", {}).get("content", [])
    return max((element.get("endIndex", 0) for element in content), default=2)


def document_tabs(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each tab as {"tabProperties", "documentTab"}; a document read without includeTabsContent is one tab."""
    tabs = document.get("tabs")
    if tabs:
        flat: list[dict[str, Any]] = []
        for tab in tabs:   # child tabs follow their parent, in document order
            flat += [tab, *document_tabs({"tabs": tab.get("childTabs", [])})]
        return flat
    return [{"tabProperties": {}, "documentTab": document}]


def split_for_tabs(blocks: list[Block]) -> tuple[list[Block], list[Block]]:
    """(article, sources and fact-check): the article tab reads clean, the checking material gets its own tab."""
    at = next((i for i, b in enumerate(blocks) if b.role == "heading" and b.text in (SOURCES, FACT_CHECK)), len(blocks))
    return blocks[:at], blocks[at:]


def tab_titled(document: dict[str, Any], title: str) -> dict[str, Any] | None:
    """The tab with this title ({"tabProperties", "documentTab"}), None when the document has none."""
    if not document.get("tabs"):
        return None
    return next((t for t in document_tabs(document) if t.get("tabProperties", {}).get("title") == title), None)


def first_tab(document: dict[str, Any]) -> dict[str, Any]:
    """The first tab's content (body, lists, dropdownDefinitions, commentAnchors)."""
    return document_tabs(document)[0]["documentTab"]


def tab_text(document_tab: dict[str, Any]) -> str:
    """The tab body's text as Docs indexes it, without its final newline: every non-text element (a chip,
    an image) is U+E907, one unit per index it takes, so string and document positions agree."""
    out: list[str] = []
    for element in document_tab.get("body", {}).get("content", []):
        paragraph = element.get("paragraph")
        if paragraph is None:
            if "startIndex" in element:   # a table or other structure: keep the positions right
                out.append("\ue907" * (element.get("endIndex", 0) - element["startIndex"]))
            continue
        for part in paragraph.get("elements", []):
            run = part.get("textRun")
            if run is not None:
                out.append(run.get("content", ""))
            else:
                out.append("\ue907" * (part.get("endIndex", 0) - part.get("startIndex", 0)))
    text = "".join(out)
    return text[:-1] if text.endswith("\n") else text


# --- reading a document back ---------------------------------------------------


def parse_document(document: dict[str, Any]) -> list[Block]:
    """The first tab's paragraphs as blocks: text, named style and list kind (tables and breaks skipped).

    A paragraph holding a dropdown chip is the status line (role "status"), not article text."""
    tab = first_tab(document)
    lists = tab.get("lists", {})
    blocks: list[Block] = []
    for element in tab.get("body", {}).get("content", []):
        paragraph = element.get("paragraph")
        if paragraph is None:
            continue
        parts = paragraph.get("elements", [])
        text = "".join(e.get("textRun", {}).get("content", "") for e in parts)
        role = "status" if any("dropdown" in e for e in parts) else ""
        style = paragraph.get("paragraphStyle", {}).get("namedStyleType", "NORMAL_TEXT")
        list_kind: ListKind | None = None
        bullet = paragraph.get("bullet")
        if bullet is not None:
            level = lists.get(bullet.get("listId"), {}).get("listProperties", {}).get("nestingLevels", [{}])
            glyph = level[min(bullet.get("nestingLevel", 0), len(level) - 1)] if level else {}
            list_kind = "numbered" if glyph.get("glyphType") not in (None, "", "NONE", "GLYPH_TYPE_UNSPECIFIED") else "bullet"
        blocks.append(Block(text.rstrip("\n").replace("\u000b", " ").strip(), style, list_kind, role=role))
    return blocks


# Our metadata line, recognised by its words too: an editor may have cleared its style.
_METADATA = re.compile(r"^Story \S+ · Template \S+ · Writer ")
# The status line, also when an editor deleted its chip.
_STATUS_LINE = re.compile(r"^Status:\s*(?:Draft|In review|Approved|Spiked)?\s*$", re.IGNORECASE)
_TRAILING_CITATIONS = re.compile(r"(?:\s*\[\d+\])+\s*$")


def split_citations(text: str) -> tuple[str, list[int]]:
    """'Text [1][2]' -> ('Text', [1, 2]); markers inside the text stay in the text."""
    citations = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", text)))
    return _TRAILING_CITATIONS.sub("", text).strip(), citations


def _section_of(heading: str) -> str:
    if len(heading) > 20:
        return ""
    key = re.sub(r"[^a-z]", "", heading.lower())
    return {"insights": "insights", "insight": "insights", "sources": "sources", "factcheck": "factcheck"}.get(key, "")


def article_from_blocks(blocks: list[Block], draft_article: Article) -> Article:
    """Rebuild the article an editor approved from the document's structure.

    TITLE is the headline, SUBTITLE the lead, normal paragraphs before the first
    section heading the body, paragraphs under "Insights" the insights. The
    metadata line (HEADING_6), sources and fact-check sections are ours, not
    the article's; sources are carried over from the draft. A document whose
    editor removed the styles still parses: the first paragraph becomes the
    headline and the first body paragraph the lead.
    """
    headline = ""
    leads: list[str] = []
    body: list[str] = []
    insights: list[str] = []
    section = "article"
    for block in blocks:
        if not block.text:
            continue
        named = _section_of(block.text)
        if named or (block.style.startswith("HEADING_") and block.style != "HEADING_6"):
            # Our section titles count as headings even if an editor cleared their style.
            section = named or section
            continue
        if block.style == "HEADING_6" or _METADATA.match(block.text) or is_header_line(block.text):
            continue
        if block.role == "status" or _STATUS_LINE.match(block.text):
            continue
        if block.style == "TITLE" and not headline:
            headline = block.text
        elif section == "article" and block.style == "SUBTITLE":
            leads.append(block.text)
        elif section == "article":
            body.append(block.text)
        elif section == "insights":
            insights.append(block.text)
    if not headline and body:
        headline = body.pop(0)
    if not leads and body:
        leads.append(body.pop(0))

    def paragraphs(texts: list[str], model):
        out = []
        for text in texts:
            clean, citations = split_citations(text)
            if clean:
                out.append(model(text=clean, citations=citations))
        return out

    return Article(
        headline=headline,
        lead=" ".join(leads),
        body=paragraphs(body, Paragraph),
        insights=paragraphs(insights, Insight),
        sources=draft_article.sources,
        translations=draft_article.translations,
    )
