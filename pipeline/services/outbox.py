"""The local publisher: each draft as Markdown and as a self-contained HTML page in the outbox folder.

It renders the same blocks as the Google Docs writer (`pipeline.services.gdocs.layout_draft`),
so the sections match: title, metadata line, lead, body with [n] citations,
insights, numbered sources, fact-check, flagged spans highlighted.

Safety: every piece of draft text is escaped (html.escape in HTML, backslash
escapes in Markdown), links are emitted only for http(s) URLs, the HTML page
carries no script and a Content-Security-Policy that forbids scripts, and its
only CSS is the fixed inline stylesheet below.

Files are named `<date>-<story_key[:8]>-<slug>.md/.html`, so publishing the
same draft again overwrites the same files, and are written atomically (temp
file in the same folder, fsync, rename): a full disk leaves the previous
version, never half a file.

An editor approves a draft offline by moving its .md file into
`<outbox>/approved/`; `parse_markdown` reads it back into blocks.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import tempfile
import unicodedata
from datetime import date
from pathlib import Path

from pipeline.services.gdocs import Block, Span

APPROVED_DIR = "approved"
_MARKER = re.compile(r"<!--\s*newsdesk-draft:\s*([A-Za-z0-9_.\-]{1,64})\s*-->")

STYLESHEET = """
body{margin:0;background:#fafafa;color:#1a1a1a;font:17px/1.6 Georgia,'Times New Roman',serif}
article{max-width:44rem;margin:2rem auto;padding:0 1.25rem}
h1{font-size:2rem;line-height:1.2;margin:0 0 .5rem}
h2{font:600 1.15rem/1.3 system-ui,sans-serif;margin:2rem 0 .5rem;border-bottom:1px solid #ddd}
.meta{font:italic .8rem/1.4 system-ui,sans-serif;color:#666;margin:0 0 1.25rem}
.lead{font-size:1.15rem}
mark.contradicted{background:#f4cccc}
mark.unverifiable{background:#fff2cc}
mark.off_story{background:#fce5cd}
mark.unresolved_reference{background:#cfe2f3}
mark.wrong_language{background:#d9d2e9}
a{color:#0b57d0}
""".strip()
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"


# --- names and files -----------------------------------------------------------


def slugify(text: str, limit: int = 60) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "draft"


def file_stem(day: date, story_key: str, headline: str) -> str:
    safe_key = re.sub(r"[^A-Za-z0-9]", "", story_key)[:8] or "story"
    return f"{day.isoformat()}-{safe_key}-{slugify(headline)}"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step; on any failure the old file stays and no temp file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- inline segments -------------------------------------------------------------


def _segments(block: Block) -> list[tuple[str, bool, str | None, str | None]]:
    """(text, bold, link, highlight) pieces: the block split at every span boundary."""
    cuts = {0, len(block.text)}
    for span in block.spans:
        cuts.update((max(0, span.start), min(len(block.text), span.end)))
    points = sorted(cuts)
    pieces = []
    for a, b in zip(points, points[1:]):
        if a == b:
            continue
        active = [s for s in block.spans if s.start <= a and s.end >= b]
        bold = any(s.bold for s in active)
        link = next((s.link for s in active if s.link), None)
        highlight = next((s.highlight for s in active if s.highlight), None)
        pieces.append((block.text[a:b], bold, link, highlight))
    return pieces


# --- HTML --------------------------------------------------------------------------


def _inline_html(block: Block) -> str:
    out = []
    for text, bold, link, highlight in _segments(block):
        piece = html.escape(text, quote=True)
        if highlight:
            piece = f'<mark class="{highlight}">{piece}</mark>'
        if bold:
            piece = f"<strong>{piece}</strong>"
        if link:
            # layout_draft only sets http(s) links; html.escape keeps the attribute closed.
            piece = f'<a href="{html.escape(link, quote=True)}" rel="nofollow noopener noreferrer">{piece}</a>'
        out.append(piece)
    return "".join(out)


_HTML_TAGS = {"TITLE": ("<h1>", "</h1>"), "HEADING_2": ("<h2>", "</h2>"), "HEADING_6": ('<p class="meta">', "</p>"),
              "SUBTITLE": ('<p class="lead">', "</p>"), "NORMAL_TEXT": ("<p>", "</p>")}


def render_html(blocks: list[Block]) -> str:
    title = next((b.text for b in blocks if b.style == "TITLE"), "Draft")
    lines: list[str] = []
    open_list: str | None = None
    for block in blocks:
        wanted = {"bullet": "ul", "numbered": "ol"}.get(block.list_kind or "")
        if open_list and open_list != wanted:
            lines.append(f"</{open_list}>")
            open_list = None
        if wanted and open_list != wanted:
            lines.append(f"<{wanted}>")
            open_list = wanted
        if wanted:
            lines.append(f"<li>{_inline_html(block)}</li>")
        else:
            start, end = _HTML_TAGS[block.style]
            lines.append(f"{start}{_inline_html(block)}{end}")
    if open_list:
        lines.append(f"</{open_list}>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title, quote=True)}</title>\n<style>\n{STYLESHEET}\n</style>\n</head>\n"
        "<body>\n<article>\n" + "\n".join(lines) + "\n</article>\n</body>\n</html>\n"
    )


# --- Markdown -------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~])")
_LINE_START = re.compile(r"^(#|>|-|\+|=|\d+[.)])")


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_url(url: str) -> str:
    return url.replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")


def _inline_md(block: Block) -> str:
    out = []
    for text, _bold, link, highlight in _segments(block):
        piece = _md_escape(text)
        if link:
            piece = f"[{piece}]({_md_url(link)})"
        if highlight:
            piece = f'<mark class="{highlight}">{piece}</mark>'
        out.append(piece)
    # Text that opens like a heading, quote or list item would nest structure inside ours.
    line = _LINE_START.sub(r"\\\1", "".join(out))
    # Citations read as [n], not \[n\]. No link reference definition can exist ("]:"
    # stays escaped), so a bare [n] never becomes a link.
    return re.sub(r"\\\[(\d+)\\\](?![(:\[])", r"[\1]", line)


def render_markdown(blocks: list[Block], draft_id: str) -> str:
    safe_id = re.sub(r"[^A-Za-z0-9_.\-]", "", draft_id)[:64]
    parts: list[str] = [f"<!-- newsdesk-draft: {safe_id} -->"]
    number = 0
    previous: Block | None = None
    for block in blocks:
        number = number + 1 if block.list_kind == "numbered" and previous is not None and previous.list_kind == "numbered" else 1
        if block.style == "TITLE":
            line = "# " + _inline_md(block)
        elif block.style == "HEADING_6":
            line = "###### " + _inline_md(block)
        elif block.style == "HEADING_2":
            line = "## " + _inline_md(block)
        elif block.list_kind == "bullet":
            line = "- " + _inline_md(block)
        elif block.list_kind == "numbered":
            line = f"{number}. " + _inline_md(block)
        elif block.style == "SUBTITLE":
            line = "**" + _inline_md(block) + "**"
        else:
            line = _inline_md(block)
        same_list = previous is not None and block.list_kind and previous.list_kind == block.list_kind
        parts.append(("\n" if same_list else "\n\n") + line)
        previous = block
    return "".join(parts).lstrip("\n") + "\n"


_MD_LINK = re.compile(r"\[((?:\\.|[^\]\\])*)\]\((?:\\.|[^)\\])*\)")
_MD_UNESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def _md_inline_text(text: str) -> str:
    text = re.sub(r"(?<!\\)</?mark\b[^>]*(?<!\\)>", "", text)   # ours only: an escaped \\<mark\\> is the draft's own text
    text = _MD_LINK.sub(r"\1", text)
    text = re.sub(r"(?<!\\)(\*\*|__)", "", text)   # emphasis an editor added
    return re.sub(r"\s+", " ", _MD_UNESCAPE.sub(r"\1", text)).strip()


def parse_markdown(text: str) -> tuple[str | None, list[Block]]:
    """(draft id from the marker comment, blocks) of an outbox Markdown file, possibly edited.

    One block per heading, list item or paragraph; a paragraph's lines are
    joined, so an editor who wraps long lines changes nothing.
    """
    marker = _MARKER.search(text)
    blocks: list[Block] = []
    paragraph_open = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _MARKER.fullmatch(line):
            paragraph_open = False
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        bullet = re.match(r"^[-*+]\s+(.*)$", line)
        numbered = re.match(r"^\d+[.)]\s+(.*)$", line)
        if heading:
            level = len(heading.group(1))
            style = {1: "TITLE", 6: "HEADING_6"}.get(level, "HEADING_2")
            blocks.append(Block(_md_inline_text(heading.group(2).rstrip("#")), style))
            paragraph_open = False
        elif bullet or numbered:
            body = (bullet or numbered).group(1)
            blocks.append(Block(_md_inline_text(body), list_kind="bullet" if bullet else "numbered"))
            paragraph_open = True
        elif paragraph_open and blocks:
            blocks[-1].text = f"{blocks[-1].text} {_md_inline_text(line)}".strip()
        else:
            whole_bold = re.fullmatch(r"\*\*(.+)\*\*", line)
            if whole_bold:
                blocks.append(Block(_md_inline_text(whole_bold.group(1)), "SUBTITLE"))
            else:
                blocks.append(Block(_md_inline_text(line)))
            paragraph_open = True
    return (marker.group(1) if marker else None), blocks


__all__ = [
    "APPROVED_DIR", "Block", "Span", "file_stem", "parse_markdown", "render_html", "render_markdown",
    "slugify", "write_atomic",
]
