"""The document model behind the fake Docs API (tests/fakes/google_server.py).

It keeps the API's rules: each tab's body starts at index 1 after a section
break, every paragraph ends with "\\n", the body's final newline cannot be
deleted, positions count UTF-16 code units (an index inside a surrogate pair is
an error), batchUpdate requests apply in order. Paragraph properties live on
each paragraph's newline, so inserting "\\n" splits a paragraph into two with
the same style, as the API does.

Beyond text and styles it models what editors work with (Docs revision
20261006): document tabs (addDocumentTab; ranges and locations name a tabId,
or mean the first tab), comment threads anchored to text (insertComment,
addCommentReply with RESOLVE/REOPEN, updateCommentPost, deleteComment; only a
post's author may change or delete it; an assignee must have access to the
file), and dropdown chips (createDropdownDefinition, insertDropdown). An anchor
is carried by the characters it covers, as in the editor: text typed inside it
extends it, deleting its text removes it (the thread stays, unanchored). A
dropdown is one non-text element, one UTF-16 unit, shown as U+E907 in text.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import googleapiclient

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
_SCHEMAS = json.loads((DISCOVERY / "docs.v1.json").read_text(encoding="utf-8"))["schemas"]
# insertText strips these (the API documents it), and so does the fake.
_STRIPPED = re.compile("[\u0000-\u0008\u000c-\u001f\ue000-\uf8ff]")
NON_TEXT = "\ue907"   # how a text run shows a non-text element (a dropdown)
_DEFINITION_ID = re.compile(r"^kix\.[a-zA-Z0-9_-]{2,14}$")
_OPTION_ID = re.compile(r"^dropdownItem\.[a-zA-Z0-9_-]{2,14}$")
_POST_OUTPUT_ONLY = ("author", "contentHtml", "createTime", "deleted", "fromCopiedDocument", "fromDocumentComparison",
                     "fromImportedDocument", "postId", "suggestionAction", "updateTime")
FIXED_TIME = "2026-12-05T08:00:00.000Z"   # post times: tests never depend on the clock


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass
class Char:
    c: str
    style: dict[str, Any] = field(default_factory=dict)
    para: dict[str, Any] | None = None   # only on "\n": {"namedStyleType": ..., "bullet": listId | None}
    anchors: set[str] = field(default_factory=set)   # comment anchors covering this character
    dropdown: dict[str, Any] | None = None           # a dropdown element (c is NON_TEXT)


@dataclass
class Context:
    """Who sends the batch and who may be assigned a comment (the file's users)."""

    author: str = "newsdesk-service"
    can_access: frozenset[str] = frozenset()


class FakeTab:
    """One tab's body: characters, lists and dropdown definitions."""

    def __init__(self, tab_id: str, title: str, index: int) -> None:
        self.id, self.title, self.index = tab_id, title, index
        self.chars: list[Char] = [Char("\n", para={"namedStyleType": "NORMAL_TEXT", "bullet": None})]
        self.lists: dict[str, dict[str, Any]] = {}
        self.lists_made = 0
        self.dropdown_definitions: dict[str, dict[str, Any]] = {}

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

    def position(self, index: int, starts: list[int], what: str) -> int:
        for k, start in enumerate(starts):
            if start == index:
                return k
            if start > index:
                break
        raise ApiError(400, f"Invalid requests: {what} index {index} is inside a surrogate pair or out of bounds.")

    def range(self, rng: dict[str, Any], where: str, allow_final_newline: bool) -> tuple[int, int]:
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
        return self.position(start, starts, where), self.position(end, starts, where)

    def insertion_point(self, body: dict[str, Any], where: str) -> int:
        """The character position a location or endOfSegmentLocation names."""
        if "location" in body and "endOfSegmentLocation" in body:
            raise ApiError(400, f"{where}: set location or endOfSegmentLocation, not both.")
        if "endOfSegmentLocation" in body:
            return len(self.chars) - 1
        location = body.get("location")
        if location is None or "index" not in location:
            raise ApiError(400, f"{where}: location.index is required.")
        index = location["index"]
        if index < 1 or index > self.end_index - 1:
            raise ApiError(400, f"{where}: index {index} must be inside an existing paragraph (1..{self.end_index - 1}).")
        return self.position(index, self._starts(), where)

    def insert(self, k: int, new: list[Char]) -> None:
        """Insert characters before position k; they join the anchors that enclose the spot, as typing does."""
        enclosing = (self.chars[k - 1].anchors & self.chars[k].anchors) if k > 0 else set()
        for ch in new:
            ch.anchors = set(enclosing)
        self.chars[k:k] = new

    def paragraphs(self) -> list[tuple[int, int]]:
        """(first char, newline char) positions of each paragraph."""
        out, first = [], 0
        for k, ch in enumerate(self.chars):
            if ch.c == "\n":
                out.append((first, k))
                first = k + 1
        return out

    def overlapping(self, a: int, b: int) -> list[int]:
        return [nl for first, nl in self.paragraphs() if first < b and nl + 1 > a]

    def text(self) -> str:
        return "".join(ch.c for ch in self.chars)

    def anchor_ranges(self) -> dict[str, list[dict[str, Any]]]:
        """anchor id -> its ranges (runs of characters carrying it), in document order."""
        starts = self._starts()
        ranges: dict[str, list[dict[str, Any]]] = {}
        for k, ch in enumerate(self.chars):
            for anchor in ch.anchors:
                runs = ranges.setdefault(anchor, [])
                if runs and runs[-1]["endIndex"] == starts[k]:
                    runs[-1]["endIndex"] = starts[k + 1]
                else:
                    runs.append({"startIndex": starts[k], "endIndex": starts[k + 1], "tabId": self.id})
        return ranges

    def body_json(self) -> dict[str, Any]:
        starts = self._starts()
        content: list[dict[str, Any]] = [
            {
                "endIndex": 1,
                "sectionBreak": {
                    "sectionStyle": {"columnSeparatorStyle": "NONE", "contentDirection": "LEFT_TO_RIGHT", "sectionType": "CONTINUOUS"}
                },
            }
        ]
        for first, nl in self.paragraphs():
            elements = []
            run_start = first
            for k in range(first, nl + 1):
                ch = self.chars[k]
                if ch.dropdown is not None:
                    elements.append({"startIndex": starts[k], "endIndex": starts[k + 1], "dropdown": copy.deepcopy(ch.dropdown)})
                    run_start = k + 1
                    continue
                following = self.chars[k + 1] if k < nl else None
                if k == nl or following.dropdown is not None or following.style != self.chars[run_start].style:
                    elements.append(
                        {
                            "startIndex": starts[run_start],
                            "endIndex": starts[k + 1],
                            "textRun": {
                                "content": "".join(c.c for c in self.chars[run_start : k + 1]),
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
            content.append({"startIndex": starts[first], "endIndex": starts[nl + 1], "paragraph": paragraph})
        return {"content": content}

    def used_lists(self) -> dict[str, Any]:
        used = {ch.para["bullet"] for ch in self.chars if ch.para and ch.para["bullet"]}
        return {k: copy.deepcopy(v) for k, v in self.lists.items() if k in used}


class FakeDocument:
    def __init__(self, document_id: str, title: str) -> None:
        self.id, self.title = document_id, title
        self.tabs: list[FakeTab] = [FakeTab("t.0", "Tab 1", 0)]
        self.comments: dict[str, dict[str, Any]] = {}   # commentId -> thread (posts keep their author's name)
        self.revision = 1
        self.made = 0   # ids handed out (lists, tabs, anchors, comments, posts, dropdowns)

    # The first tab, for code and tests written before tabs.
    @property
    def chars(self) -> list[Char]:
        return self.tabs[0].chars

    @property
    def lists(self) -> dict[str, dict[str, Any]]:
        return self.tabs[0].lists

    @property
    def end_index(self) -> int:
        return self.tabs[0].end_index

    def text(self, tab: int = 0) -> str:
        return self.tabs[tab].text()

    def tab_titled(self, title: str) -> FakeTab | None:
        return next((t for t in self.tabs if t.title == title), None)

    def _next(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix}{self.made}"

    def _tab(self, where_from: dict[str, Any] | None, where: str) -> FakeTab:
        where_from = where_from or {}
        if where_from.get("segmentId"):
            raise ApiError(400, f"{where}: the fake supports the body segment only.")
        tab_id = where_from.get("tabId")
        if not tab_id:
            return self.tabs[0]
        tab = next((t for t in self.tabs if t.id == tab_id), None)
        if tab is None:
            raise ApiError(400, f"{where}: no tab with ID {tab_id!r}.")
        return tab

    # -- requests
    def apply(self, request: dict[str, Any], where: str, context: Context | None = None) -> dict[str, Any]:
        if len(request) != 1:
            raise ApiError(400, f"{where}: a request must set exactly one kind, got {sorted(request)}.")
        kind, body = next(iter(request.items()))
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            raise ApiError(501, f"{where}: the fake does not implement {kind}.")
        return handler(body, f"{where}.{kind}", context or Context()) or {}

    def _located_tab(self, body: dict[str, Any], where: str) -> FakeTab:
        return self._tab(body.get("location") or body.get("endOfSegmentLocation"), where)

    def _do_insertText(self, body: dict[str, Any], where: str, context: Context) -> None:
        tab = self._located_tab(body, where)
        text = _STRIPPED.sub("", body.get("text", ""))
        k = tab.insertion_point(body, where)
        if not text:
            return
        # Text takes the style of the character before it in the same paragraph, else the one after.
        neighbour = tab.chars[k - 1] if k > 0 and tab.chars[k - 1].c != "\n" else tab.chars[k]
        inherited = {key: v for key, v in neighbour.style.items() if key != "link"}
        paragraph_nl = next(j for j in range(k, len(tab.chars)) if tab.chars[j].c == "\n")
        para = tab.chars[paragraph_nl].para
        tab.insert(k, [Char(c, dict(inherited), dict(para) if c == "\n" else None) for c in text])

    def _do_deleteContentRange(self, body: dict[str, Any], where: str, context: Context) -> None:
        rng = body.get("range", {})
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=False)
        del tab.chars[a:b]

    @staticmethod
    def _fields(fields: str | None, schema_name: str, where: str) -> list[str]:
        properties = _SCHEMAS[schema_name]["properties"]
        if not fields:
            raise ApiError(400, f"{where}: fields is required.")
        if fields.strip() == "*":
            return list(properties)
        names = [f.strip() for f in fields.split(",") if f.strip()]
        for name in names:
            if name.split(".")[0] not in properties:
                raise ApiError(400, f"{where}: invalid field mask {name!r} for {schema_name}.")
        return [n.split(".")[0] for n in names]

    def _do_updateTextStyle(self, body: dict[str, Any], where: str, context: Context) -> None:
        rng = body.get("range", {})
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=True)
        names = self._fields(body.get("fields"), "TextStyle", where)
        style = body.get("textStyle", {})
        for ch in tab.chars[a:b]:
            for name in names:
                if name in style:
                    ch.style[name] = copy.deepcopy(style[name])
                else:
                    ch.style.pop(name, None)

    def _do_updateParagraphStyle(self, body: dict[str, Any], where: str, context: Context) -> None:
        rng = body.get("range", {})
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=True)
        names = self._fields(body.get("fields"), "ParagraphStyle", where)
        style = body.get("paragraphStyle", {})
        if "namedStyleType" not in names:
            return
        for nl in tab.overlapping(a, b):
            tab.chars[nl].para["namedStyleType"] = style.get("namedStyleType", "NORMAL_TEXT")

    def _do_createParagraphBullets(self, body: dict[str, Any], where: str, context: Context) -> None:
        rng = body.get("range", {})
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=True)
        preset = body.get("bulletPreset", "BULLET_GLYPH_PRESET_UNSPECIFIED")
        if preset == "BULLET_GLYPH_PRESET_UNSPECIFIED":
            raise ApiError(400, f"{where}: bulletPreset is required.")
        tab.lists_made += 1
        list_id = f"kix.{self.id[:6]}.{tab.id}.list{tab.lists_made}"
        if preset.startswith("NUMBERED"):
            level = {"glyphType": "DECIMAL", "glyphFormat": "%0.", "startNumber": 1}
        else:
            level = {"glyphSymbol": "●", "glyphFormat": "%0"}
        tab.lists[list_id] = {"listProperties": {"nestingLevels": [dict(level) for _ in range(9)]}}
        for nl in tab.overlapping(a, b):
            tab.chars[nl].para["bullet"] = list_id

    def _do_deleteParagraphBullets(self, body: dict[str, Any], where: str, context: Context) -> None:
        rng = body.get("range", {})
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=True)
        for nl in tab.overlapping(a, b):
            tab.chars[nl].para["bullet"] = None

    # -- tabs
    def _do_addDocumentTab(self, body: dict[str, Any], where: str, context: Context) -> dict[str, Any]:
        props = body.get("tabProperties", {})
        for output_only in ("nestingLevel",):
            if output_only in props:
                raise ApiError(400, f"{where}: tabProperties.{output_only} is output only.")
        if props.get("parentTabId"):
            raise ApiError(400, f"{where}: the fake supports root-level tabs only.")
        if props.get("tabId") and any(t.id == props["tabId"] for t in self.tabs):
            raise ApiError(400, f"{where}: a tab with ID {props['tabId']!r} already exists.")
        index = props.get("index", len(self.tabs))
        if not 0 <= index <= len(self.tabs):
            raise ApiError(400, f"{where}: tab index {index} is out of range 0..{len(self.tabs)}.")
        tab = FakeTab(props.get("tabId") or f"t.{self._next('tab')}", props.get("title") or f"Tab {len(self.tabs) + 1}", index)
        self.tabs.insert(index, tab)
        for position, each in enumerate(self.tabs):
            each.index = position
        return {"addDocumentTab": {"tabProperties": self._tab_properties(tab)}}

    @staticmethod
    def _tab_properties(tab: FakeTab) -> dict[str, Any]:
        return {"tabId": tab.id, "title": tab.title, "index": tab.index, "nestingLevel": 0}

    # -- dropdown chips
    def _do_createDropdownDefinition(self, body: dict[str, Any], where: str, context: Context) -> dict[str, Any]:
        tab = self._tab({"tabId": body.get("tabId")}, where)
        definition = copy.deepcopy(body.get("dropdownDefinition") or {})
        for output_only in ("suggestedDeletionId", "suggestedInsertionId", "suggestedDropdownDefinitionPropertiesChanges"):
            if output_only in definition:
                raise ApiError(400, f"{where}: dropdownDefinition.{output_only} cannot be set.")
        definition_id = definition.get("dropdownDefinitionId") or f"kix.dd{self._next('')}"
        if not _DEFINITION_ID.match(definition_id):
            raise ApiError(400, f"{where}: dropdownDefinitionId {definition_id!r} must match ^kix\\.[a-zA-Z0-9_-]{{2,14}}$.")
        if definition_id in tab.dropdown_definitions:
            raise ApiError(400, f"{where}: dropdownDefinitionId {definition_id!r} is already used in this tab.")
        options = definition.get("dropdownDefinitionProperties", {}).get("options", [])
        if not 2 <= len(options) <= 50:
            raise ApiError(400, f"{where}: a dropdown definition needs 2 to 50 options, got {len(options)}.")
        seen: set[str] = set()
        for option in options:
            option_id = option.setdefault("optionId", f"dropdownItem.o{self._next('')}")
            if not _OPTION_ID.match(option_id) or option_id in seen:
                raise ApiError(400, f"{where}: option ID {option_id!r} is not valid or not unique.")
            seen.add(option_id)
            if not option.get("displayValue"):
                raise ApiError(400, f"{where}: option {option_id!r} needs a displayValue.")
            if set(option.get("textStyle", {})) - {"foregroundColor", "backgroundColor"}:
                raise ApiError(400, f"{where}: an option's textStyle may set only foregroundColor and backgroundColor.")
        definition["dropdownDefinitionId"] = definition_id
        tab.dropdown_definitions[definition_id] = definition
        return {"createDropdownDefinition": {"dropdownDefinition": copy.deepcopy(definition)}}

    def _do_insertDropdown(self, body: dict[str, Any], where: str, context: Context) -> dict[str, Any]:
        tab = self._located_tab(body, where)
        definition = tab.dropdown_definitions.get(body.get("dropdownDefinitionId", ""))
        if definition is None:
            raise ApiError(400, f"{where}: no dropdown definition {body.get('dropdownDefinitionId')!r} in this tab.")
        options = definition["dropdownDefinitionProperties"]["options"]
        selected = body.get("selectedOptionId") or options[0]["optionId"]
        option = next((o for o in options if o["optionId"] == selected), None)
        if option is None:
            raise ApiError(400, f"{where}: selectedOptionId {selected!r} is not an option of the definition.")
        k = tab.insertion_point(body, where)
        dropdown = {
            "dropdownId": self._next("kix.dropdown"),
            "dropdownProperties": {"dropdownDefinitionId": definition["dropdownDefinitionId"], "selectedOptionId": selected,
                                   "displayValue": option["displayValue"]},
            "textStyle": {},
        }
        neighbour = tab.chars[k - 1] if k > 0 and tab.chars[k - 1].c != "\n" else tab.chars[k]
        tab.insert(k, [Char(NON_TEXT, {key: v for key, v in neighbour.style.items() if key != "link"}, dropdown=dropdown)])
        return {"insertDropdown": {"dropdown": copy.deepcopy(dropdown)}}

    def select_option(self, display_value: str, tab: int = 0) -> None:
        """An editor picks another value in every chip of a tab (test control, not an API request)."""
        for ch in self.tabs[tab].chars:
            if ch.dropdown is None:
                continue
            props = ch.dropdown["dropdownProperties"]
            definition = self.tabs[tab].dropdown_definitions[props["dropdownDefinitionId"]]
            option = next(o for o in definition["dropdownDefinitionProperties"]["options"] if o["displayValue"] == display_value)
            props.update(selectedOptionId=option["optionId"], displayValue=option["displayValue"])
        self.revision += 1

    # -- comments
    def _check_text(self, value: Any, what: str, where: str, required: bool = True) -> str:
        if value is None or value == "":
            if required:
                raise ApiError(400, f"{where}: {what} cannot be empty.")
            return ""
        if _utf8_len(value) > 2048:
            raise ApiError(400, f"{where}: {what} must not exceed 2048 UTF-8 code units.")
        return value

    def _post(self, author: str, content: str, **extra: Any) -> dict[str, Any]:
        return {"postId": self._next("post"), "content": content, "author": author, "createTime": FIXED_TIME,
                "updateTime": FIXED_TIME, **extra}

    def _do_insertComment(self, body: dict[str, Any], where: str, context: Context) -> dict[str, Any]:
        rng = body.get("range") or {}
        tab = self._tab(rng, where)
        a, b = tab.range(rng, where, allow_final_newline=False)
        content = self._check_text(body.get("content"), "content", where)
        assignee = self._check_text(body.get("assigneeEmailAddress"), "assigneeEmailAddress", where, required=False)
        if assignee and assignee.lower() not in context.can_access:
            raise ApiError(400, f"{where}: the assignee {assignee} has no access to this document.")
        anchor = self._next("kix.anchor")
        for ch in tab.chars[a:b]:
            ch.anchors.add(anchor)
        head = self._post(context.author, content, **({"assigneeEmail": assignee} if assignee else {}))
        thread = {"commentId": self._next("AAAB"), "anchorId": anchor, "headPost": head, "replies": [], "status": "OPEN",
                  "plainTextQuote": "".join(ch.c for ch in tab.chars[a:b])}
        self.comments[thread["commentId"]] = thread
        return {"insertComment": {"commentThread": self.thread_json(thread, context.author)}}

    def _thread(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        if body.get("suggestionId"):
            raise ApiError(400, f"{where}: the fake has no suggestion threads.")
        thread = self.comments.get(body.get("commentId") or "")
        if thread is None:
            raise ApiError(400, f"{where}: no comment thread {body.get('commentId')!r}.")
        return thread

    def _do_addCommentReply(self, body: dict[str, Any], where: str, context: Context) -> dict[str, Any]:
        thread = self._thread(body, where)
        post = body.get("post") or {}
        for output_only in _POST_OUTPUT_ONLY:
            if output_only in post:
                raise ApiError(400, f"{where}: post.{output_only} is output only.")
        action = post.get("commentAction", "NO_COMMENT_ACTION_CHANGE")
        acting = action in ("RESOLVE", "REOPEN")
        content = self._check_text(post.get("content"), "post.content", where, required=not acting)
        assignee = post.get("assigneeEmail")
        if assignee and (acting or "assigneeEmail" not in thread["headPost"]):
            raise ApiError(400, f"{where}: assigneeEmail cannot be set on this reply.")
        reply = self._post(context.author, content, **({"commentAction": action} if acting else {}))
        thread["replies"].append(reply)
        if action == "RESOLVE":
            thread["status"] = "RESOLVED"
        elif action == "REOPEN":
            thread["status"] = "OPEN"
        return {"addCommentReply": {"post": self.post_json(reply, context.author)}}

    def _do_updateCommentPost(self, body: dict[str, Any], where: str, context: Context) -> None:
        thread = self._thread(body, where)
        post = next((p for p in [thread["headPost"], *thread["replies"]] if p["postId"] == body.get("postId")), None)
        if post is None:
            raise ApiError(400, f"{where}: no post {body.get('postId')!r} in the thread.")
        if post["author"] != context.author:
            raise ApiError(400, f"{where}: only the author of a post may change it.")
        post["content"] = self._check_text(body.get("content"), "content", where)

    def _do_deleteComment(self, body: dict[str, Any], where: str, context: Context) -> None:
        thread = self._thread(body, where)
        if thread["headPost"]["author"] != context.author:
            raise ApiError(400, f"{where}: only the author of the head post may delete the thread.")
        del self.comments[thread["commentId"]]
        for tab in self.tabs:
            for ch in tab.chars:
                ch.anchors.discard(thread["anchorId"])

    def post_json(self, post: dict[str, Any], viewer: str) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in post.items() if k != "author"}
        out["author"] = {"displayName": post["author"], "user": f"users/{post['author']}", "me": post["author"] == viewer,
                         "anonymous": False}
        return out

    def thread_json(self, thread: dict[str, Any], viewer: str) -> dict[str, Any]:
        return {**{k: v for k, v in thread.items() if k not in ("headPost", "replies")},
                "headPost": self.post_json(thread["headPost"], viewer),
                "replies": [self.post_json(p, viewer) for p in thread["replies"]]}

    # -- reading
    def to_json(self, include_tabs: bool = False, comments: bool = False, viewer: str = "newsdesk-service") -> dict[str, Any]:
        out: dict[str, Any] = {
            "documentId": self.id,
            "title": self.title,
            "revisionId": f"rev{self.revision}",
            "suggestionsViewMode": "SUGGESTIONS_INLINE",
        }
        style = {"pageSize": {"height": {"magnitude": 792, "unit": "PT"}, "width": {"magnitude": 612, "unit": "PT"}}}
        if include_tabs:
            out["tabs"] = []
            for tab in self.tabs:
                document_tab: dict[str, Any] = {"body": tab.body_json(), "lists": tab.used_lists(), "documentStyle": style,
                                                "dropdownDefinitions": copy.deepcopy(tab.dropdown_definitions)}
                if comments:
                    document_tab["commentAnchors"] = {
                        anchor: {"anchorId": anchor, "ranges": ranges} for anchor, ranges in tab.anchor_ranges().items()
                    }
                out["tabs"].append({"tabProperties": self._tab_properties(tab), "documentTab": document_tab})
        else:
            out.update(body=self.tabs[0].body_json(), lists=self.tabs[0].used_lists(), documentStyle=style)
        if comments:
            out["commentsViewMode"] = "COMMENTS_VIEW_MODE_INCLUDED"
            out["comments"] = [self.thread_json(t, viewer) for t in self.comments.values()]
        return out
