"""What editors work with inside a Google Doc, besides the text: fact-check comments and the status chip.

- One comment thread per flagged claim, anchored to exactly the claim's text
  (UTF-16 indices from pipeline.services.gdocs), saying the verdict, the evidence
  quoted verbatim with its source link, and why; assigned to the editor on
  duty. Our threads carry a reference line ("Newsdesk fact-check · ref
  <claim key>") and are ours only when Docs says we wrote them (author.me), so
  a republish finds them from the document itself, even after a write whose
  answer was lost: nothing is ever added twice, a resolved thread is left
  resolved, and an open one whose text changed is moved to the new text.
- A status chip (a dropdown: Draft, In review, Approved, Spiked) at the top,
  whose value `sync` reads as the approval signal; a republish keeps the value
  an editor chose.
- `editor_notes` reads back what editors wrote: replies to our threads and
  their own comments, for the corrections ledger.

Everything here only builds requests from a document as read
(documents.get with includeTabsContent and comments included); the caller
sends them in one batch with the article's own writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pipeline.services.gdocs import VERDICT_LABELS, Block, clean_text, claim_key, claim_ranges, safe_url
from pipeline.core.models import ClaimVerdict, FactCheckReport

STATUS_DEFINITION_ID = "kix.ndstatus"
# (option id, what editors see, the status it means)
STATUS_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("dropdownItem.draft", "Draft", "draft"),
    ("dropdownItem.inreview", "In review", "in_review"),
    ("dropdownItem.approved", "Approved", "approved"),
    ("dropdownItem.spiked", "Spiked", "spiked"),
)
STATUS_PREFIX = "Status: "
MARKER = "Newsdesk fact-check · ref "
_MARKER_RE = re.compile(re.escape(MARKER) + r"([0-9a-f]{12})\s*$")
COMMENT_LIMIT = 2048   # UTF-8 bytes the API accepts in a comment
MOVED_NOTE = "The claim's text changed in a new version of this draft; the check continues in a new comment on it."
CLEARED_NOTE = "No longer flagged: the latest fact-check of this draft does not flag this claim."
READ_PARAMS = {"includeTabsContent": True, "commentsViewMode": "COMMENTS_VIEW_MODE_INCLUDED",
               "suggestionsViewMode": "SUGGESTIONS_INLINE"}


# --- the status chip -------------------------------------------------------------


def status_block() -> Block:
    """The first paragraph of a Google document: the label, then (inserted by chip_requests) the chip."""
    return Block(STATUS_PREFIX, role="status")


def chip_status(document_tab: dict[str, Any]) -> str | None:
    """'draft', 'in_review', 'approved' or 'spiked' from our chip in this tab, None when there is none."""
    by_id = {option_id: status for option_id, _, status in STATUS_OPTIONS}
    by_label = {label.lower(): status for _, label, status in STATUS_OPTIONS}
    for element in _elements(document_tab):
        props = (element.get("dropdown") or {}).get("dropdownProperties")
        if props and props.get("dropdownDefinitionId") == STATUS_DEFINITION_ID:
            return by_id.get(props.get("selectedOptionId", "")) or by_label.get(props.get("displayValue", "").lower())
    return None


def _elements(document_tab: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for element in document_tab.get("body", {}).get("content", []):
        yield from (element.get("paragraph") or {}).get("elements", [])


def chip_requests(document_tab: dict[str, Any], index: int, status: str) -> list[dict[str, Any]]:
    """Insert the chip at `index` showing `status`; the definition is created once per document."""
    option_id = next(o for o, _, s in STATUS_OPTIONS if s == status)
    requests: list[dict[str, Any]] = []
    if STATUS_DEFINITION_ID not in (document_tab.get("dropdownDefinitions") or {}):
        requests.append({"createDropdownDefinition": {"dropdownDefinition": {
            "dropdownDefinitionId": STATUS_DEFINITION_ID,
            "dropdownDefinitionProperties": {
                "title": "Status",
                "options": [{"optionId": o, "displayValue": label} for o, label, _ in STATUS_OPTIONS],
            },
        }}})
    requests.append({"insertDropdown": {"location": {"index": index}, "dropdownDefinitionId": STATUS_DEFINITION_ID,
                                        "selectedOptionId": option_id}})
    return requests


# --- fact-check comments -----------------------------------------------------------


@dataclass(frozen=True)
class ClaimComment:
    key: str
    start: int    # Docs indices of the claim's text once the article is written
    end: int
    content: str
    assignee: str | None


def comment_text(verdict: ClaimVerdict, key: str) -> str:
    """Verdict, evidence verbatim with its source link, why; then our reference line. At most 2048 UTF-8 bytes:
    when long, the evidence and reasons are shortened (marked with …), never the verdict or the reference."""
    label = VERDICT_LABELS.get(verdict.verdict, verdict.verdict.capitalize())
    head = f"{label}: “{clean_text(verdict.claim.text)}”"
    evidence = clean_text(verdict.evidence)
    where = f" [{verdict.source_n}]" if verdict.source_n is not None else ""
    url = safe_url(verdict.source_url)
    reasons = "; ".join(clean_text(f.detail) for f in verdict.failures if clean_text(f.detail))
    tail = MARKER + key

    def build(evidence_text: str, reasons_text: str) -> str:
        lines = [head]
        if evidence_text:
            lines.append(f"Evidence{where}: “{evidence_text}”")
        elif verdict.verdict != "supported":
            lines.append("Evidence: none of the sources says this.")
        if url:
            lines.append(f"Source: {url}")
        if reasons_text:
            lines.append(f"Why: {reasons_text}")
        lines.append(tail)
        return "\n".join(lines)

    text = build(evidence, reasons)
    while len(text.encode("utf-8")) > COMMENT_LIMIT and (len(evidence) > 40 or len(reasons) > 40):
        if len(evidence) >= len(reasons):
            evidence = evidence[: max(40, len(evidence) * 3 // 4)].rstrip() + "…"
        else:
            reasons = reasons[: max(40, len(reasons) * 3 // 4)].rstrip() + "…"
        text = build(evidence, reasons)
    return text


def wanted_comments(blocks: list[Block], report: FactCheckReport | None, assignee: str | None) -> list[ClaimComment]:
    """One comment per flagged claim whose text is in the article (first verdict of a repeated claim wins)."""
    if report is None:
        return []
    ranges = claim_ranges(blocks)
    out: dict[str, ClaimComment] = {}
    for verdict in report.flagged():
        key = claim_key(verdict.claim.text)
        if key in ranges and key not in out:
            start, end = ranges[key]
            out[key] = ClaimComment(key, start, end, comment_text(verdict, key), assignee)
    return list(out.values())


def flagged_keys(report: FactCheckReport | None) -> set[str]:
    return {claim_key(v.claim.text) for v in report.flagged()} if report is not None else set()


def our_threads(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """claim key -> our thread for it (the first, if ever two)."""
    out: dict[str, dict[str, Any]] = {}
    for thread in document.get("comments", []):
        head = thread.get("headPost") or {}
        match = _MARKER_RE.search(head.get("content", ""))
        if match and (head.get("author") or {}).get("me") and match.group(1) not in out:
            out[match.group(1)] = thread
    return out


def _anchor_ranges(document_tab: dict[str, Any], thread: dict[str, Any]) -> list[dict[str, Any]]:
    anchor = (document_tab.get("commentAnchors") or {}).get(thread.get("anchorId", ""), {})
    return anchor.get("ranges", [])


def _still_on(ranges: list[dict[str, Any]], moved: Callable[[int], int | None], want: ClaimComment) -> bool:
    """Whether the thread's anchor, after the text edits, covers exactly the claim's new text."""
    if len(ranges) != 1:
        return False
    start, end = ranges[0].get("startIndex", 0), ranges[0].get("endIndex", 0)
    return (end - start == want.end - want.start and moved(start) == want.start
            and moved(end - 1) == want.end - 1)


def _others_replied(thread: dict[str, Any]) -> bool:
    return any(not (p.get("author") or {}).get("me") and not p.get("deleted") for p in thread.get("replies", []))


def comment_requests(document: dict[str, Any], document_tab: dict[str, Any], wanted: list[ClaimComment],
                     flagged: set[str], moved: Callable[[int], int | None]) -> list[dict[str, Any]]:
    """The comment requests that follow the article's text edits in the same batch.

    `moved` maps an index of the document as read to its index after the text
    edits (None: deleted). A thread of ours is kept when its anchor still
    covers its claim (its text updated if the check changed), left alone when
    resolved, moved when open (deleted and made anew; when editors replied, the
    old thread is resolved with a note instead, so their words stay). Our open
    threads for claims no longer flagged are resolved with a note.
    """
    existing = our_threads(document)
    requests: list[dict[str, Any]] = []
    for want in wanted:
        thread = existing.get(want.key)
        if thread is not None:
            if thread.get("status") == "RESOLVED":
                continue   # an editor dealt with it: resolved stays resolved
            if _still_on(_anchor_ranges(document_tab, thread), moved, want):
                head = thread.get("headPost") or {}
                if head.get("content") != want.content and head.get("postId"):
                    requests.append({"updateCommentPost": {"commentId": thread["commentId"], "postId": head["postId"],
                                                           "content": want.content}})
                continue
            if _others_replied(thread):
                requests.append({"addCommentReply": {"commentId": thread["commentId"],
                                                     "post": {"content": MOVED_NOTE, "commentAction": "RESOLVE"}}})
            else:
                requests.append({"deleteComment": {"commentId": thread["commentId"]}})
        insert: dict[str, Any] = {"range": {"startIndex": want.start, "endIndex": want.end}, "content": want.content}
        if want.assignee:
            insert["assigneeEmailAddress"] = want.assignee
        requests.append({"insertComment": insert})
    for key, thread in existing.items():
        if key not in flagged and thread.get("status") != "RESOLVED":
            requests.append({"addCommentReply": {"commentId": thread["commentId"],
                                                 "post": {"content": CLEARED_NOTE, "commentAction": "RESOLVE"}}})
    return requests


# --- reading editors' words back ---------------------------------------------------------


@dataclass(frozen=True)
class EditorNote:
    comment_id: str
    post_id: str
    kind: str          # "reply" (to one of our fact-check comments) or "comment" (an editor's own thread)
    author: str
    text: str
    quote: str         # the document text the thread is anchored to
    claim_key: str     # our claim's key for a reply, "" for a free comment
    resolved: bool


def editor_notes(document: dict[str, Any]) -> list[EditorNote]:
    """Every post an editor (anyone but us) wrote in the document's comment threads, oldest first per thread."""
    notes: list[EditorNote] = []
    for thread in document.get("comments", []):
        head = thread.get("headPost") or {}
        ours = bool((head.get("author") or {}).get("me"))
        match = _MARKER_RE.search(head.get("content", "")) if ours else None
        key = match.group(1) if match else ""
        posts = ([] if ours else [("comment", head)]) + [("reply", p) for p in thread.get("replies", [])]
        for kind, post in posts:
            author = post.get("author") or {}
            text = (post.get("content") or "").strip()
            if author.get("me") or post.get("deleted") or not text or not post.get("postId"):
                continue
            notes.append(EditorNote(
                comment_id=thread.get("commentId", ""), post_id=post["postId"], kind=kind if ours else "comment",
                author=author.get("displayName") or author.get("user") or "an editor", text=text,
                quote=thread.get("plainTextQuote", ""), claim_key=key, resolved=thread.get("status") == "RESOLVED",
            ))
    return notes


__all__ = [
    "CLEARED_NOTE", "ClaimComment", "EditorNote", "MARKER", "MOVED_NOTE", "READ_PARAMS", "STATUS_DEFINITION_ID",
    "STATUS_OPTIONS", "chip_requests", "chip_status", "comment_requests", "comment_text", "editor_notes",
    "flagged_keys", "our_threads", "status_block", "wanted_comments",
]
