"""Editors work inside the document (issue 17): anchored fact-check comments, the status chip, and the fake's new requests.

The real google-api-python-client talks to tests/fakes/google_server.py, which
validates every request against the shipped Docs discovery document.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from googleapiclient.errors import HttpError
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.publisher import build_services, load_credentials
from pipeline.core.config import ConfigError, parse_config
from pipeline.services.doc_review import CLEARED_NOTE, COMMENT_LIMIT, MARKER, MOVED_NOTE, comment_text
from pipeline.services.gdocs import claim_key, clean_text, text_edits, utf16_len
from pipeline.core.models import Claim, ClaimVerdict, FactCheckReport
from tests.fakes.google_docs_model import Char, Context, FakeDocument, FakeTab
from tests.fakes.google_server import DOC_MIME, DOCS
from tests.test_publisher import (  # noqa: F401  (fixtures)
    EDITORS,
    FOLDER,
    draft_row,
    fake,
    google_config,
    insert_draft,
    make_draft,
    no_regional_access_boundary_lookup,
    publication_row,
    publish,
    set_draft,
    setup,
)

SERVICE = "newsdesk@test-project.iam.gserviceaccount.com"   # the service account write_service_account makes


def doc_of(fake, ledger, draft_id="draft-0001") -> FakeDocument:
    return fake.documents[publication_row(ledger, draft_id).doc_id]


def threads(document: FakeDocument) -> list[dict]:
    return document.to_json(include_tabs=True, comments=True, viewer=SERVICE)["comments"]


def anchored_text(document: FakeDocument) -> dict[str, list[str]]:
    """comment id -> the document text each of its anchor's ranges covers now."""
    as_json = document.to_json(include_tabs=True, comments=True, viewer=SERVICE)
    out: dict[str, list[str]] = {}
    for thread in as_json["comments"]:
        texts = []
        for index, tab in enumerate(document.tabs):
            anchors = as_json["tabs"][index]["documentTab"]["commentAnchors"]
            starts = tab._starts()
            for rng in anchors.get(thread["anchorId"], {}).get("ranges", []):
                a, b = starts.index(rng["startIndex"]), starts.index(rng["endIndex"])
                texts.append("".join(ch.c for ch in tab.chars[a:b]))
        out[thread["commentId"]] = texts
    return out


def flagged_texts(report: FactCheckReport) -> list[str]:
    return [clean_text(v.claim.text) for v in report.flagged()]


def assert_one_anchored_comment_per_flagged_claim(document: FakeDocument, report: FactCheckReport) -> None:
    anchors = anchored_text(document)
    open_threads = [t for t in threads(document) if t["status"] == "OPEN"]
    for claim in flagged_texts(report):
        covering = [t for t in open_threads if anchors[t["commentId"]] == [claim]]
        assert len(covering) == 1, f"{claim!r}: {len(covering)} open comments anchored exactly on it"


# --- comments ------------------------------------------------------------------------


@pytest.mark.parametrize("unicode", [False, True], ids=["ascii", "unicode-emoji"])
def test_each_flagged_claim_gets_one_comment_anchored_on_exactly_its_text(setup, fake, unicode):
    config, ledger = setup
    draft, report = make_draft(unicode=unicode)
    insert_draft(ledger, draft, report)

    assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    assert_one_anchored_comment_per_flagged_claim(document, report)
    assert len(threads(document)) == len(report.flagged()) == 2
    by_quote = {t["plainTextQuote"]: t for t in threads(document)}
    contradicted = by_quote["ETF inflows of $2 billion"]["headPost"]
    # Verdict, the evidence verbatim with its source number and link, and our reference line.
    assert contradicted["content"].splitlines() == [
        "Contradicted: “ETF inflows of $2 billion”",
        "Evidence [2]: “Inflows were $1.2 billion on Monday.”",
        "Source: https://coindesk.example/b",
        f"{MARKER}{claim_key('ETF inflows of $2 billion')}",
    ]
    assert contradicted["author"]["me"] is True
    # The editor on duty: one of the editors, the same for every comment of the draft.
    assignees = {t["headPost"]["assigneeEmail"] for t in threads(document)}
    assert len(assignees) == 1 and assignees <= set(EDITORS)
    # One write for text, styles, comments, chip and the new tab, one for that tab's text; every request
    # passed the discovery schema.
    assert [c.status for c in fake.calls if c.method.startswith("docs.")] == [200, 200, 200, 200]
    assert "Sources" not in document.text(0) and document.text(1).startswith("Sources\n")


def test_the_editor_on_duty_rotates_by_day_and_a_topic_editor_wins(tmp_path, fake, monkeypatch):
    from agents.publisher import assignee_for
    from pipeline.core.ledger import Ledger

    config = parse_config({"topics": [{"name": "markets", "description": "prices"}],
                           "publishing": {"target": "google", "google": {
                               "editors": EDITORS, "topic_editors": {"markets": EDITORS[0]}}}}, root=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    draft, _ = make_draft()
    days = [draft.model_copy(update={"created": draft.created.replace(day=d)}) for d in (12, 13, 14)]
    on_duty = [assignee_for(config, ledger, d, EDITORS) for d in days]
    assert on_duty[0] != on_duty[1] and on_duty[0] == on_duty[2], "two editors take turns, a day each"
    from sqlalchemy import insert

    from pipeline.core import schema
    with ledger.begin() as connection:
        connection.execute(insert(schema.stories).values(
            key=draft.story_key, title="t", item_ids=[], sources=[], topics=["markets"], score=1.0,
            first_published=draft.created, last_published=draft.created, state="drafted", created=draft.created,
            updated=draft.created))
    assert {assignee_for(config, ledger, d, EDITORS) for d in days} == {EDITORS[0]}
    none = parse_config({"publishing": {"google": {"editors": EDITORS, "on_duty": "none"}}}, root=tmp_path)
    assert assignee_for(none, ledger, days[0], EDITORS) is None
    ledger.close()


@pytest.mark.parametrize("google, problem", [
    ({"editors": ["a@x.example"], "topic_editors": {"markets": "b@x.example"}}, "is not in publishing.google.editors"),
    ({"editors": ["a@x.example"], "topic_editors": {"nosuch": "a@x.example"}}, "names unknown topic(s) ['nosuch']"),
    ({"on_duty": "weekly"}, "'publishing.google.on_duty'"),
])
def test_assignment_config_is_checked_at_start(tmp_path, google, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config({"topics": [{"name": "markets", "description": "prices"}], "publishing": {"google": google}},
                     root=tmp_path)
    assert problem in str(caught.value)


def test_republish_never_duplicates_comments_and_keeps_their_anchors(setup, fake):
    config, ledger = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    before = {t["commentId"] for t in threads(doc_of(fake, ledger))}

    for headline in ("Bitcoin 🚀 slips under €65k", "Bitcoin 😀 back at €70k"):
        revised = draft.article.model_copy(update={"headline": headline})
        set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked")
        assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    assert {t["commentId"] for t in threads(document)} == before, "the same threads, none added"
    assert_one_anchored_comment_per_flagged_claim(document, report)


def test_comment_batch_whose_answer_was_lost_adds_no_second_comment(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    fake.fail("docs.documents.batchUpdate", 503, apply=True)

    assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    assert [c.status for c in fake.calls if c.method == "docs.documents.batchUpdate"] == [503, 200]
    assert len(threads(document)) == 2
    assert_one_anchored_comment_per_flagged_claim(document, report)


def test_resolved_comments_stay_resolved_and_changed_claims_move(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    document = doc_of(fake, ledger)
    by_quote = {t["plainTextQuote"]: t["commentId"] for t in threads(document)}
    fake.editor_reply(document.id, by_quote["Regulators stayed silent."], EDITORS[0], "Fine as is.", action="RESOLVE")
    fake.editor_reply(document.id, by_quote["ETF inflows of $2 billion"], EDITORS[1], "wrong, the figure is $1.2 billion")

    # The paragraphs of both claims change around them: their anchors are gone with the old text.
    body = [p.model_copy(update={"text": "Reportedly, " + p.text[0].lower() + p.text[1:]}) for p in draft.article.body]
    revised = draft.article.model_copy(update={"body": body})
    set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked")
    assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    statuses = {t["commentId"]: t["status"] for t in threads(document)}
    assert statuses[by_quote["Regulators stayed silent."]] == "RESOLVED", "resolved stays resolved, nothing new for it"
    old = next(t for t in threads(document) if t["commentId"] == by_quote["ETF inflows of $2 billion"])
    assert old["status"] == "RESOLVED" and old["replies"][-1]["content"] == MOVED_NOTE, "the editor's reply is kept"
    anchors = anchored_text(document)
    live = [t for t in threads(document) if t["status"] == "OPEN"]
    assert [anchors[t["commentId"]] for t in live] == [["ETF inflows of $2 billion"]]
    assert len([t for t in threads(document) if t["plainTextQuote"] == "Regulators stayed silent."]) == 1


def test_an_open_comment_without_replies_is_moved_and_a_cleared_claim_resolved(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    body = [p.model_copy(update={"text": p.text + " Markets were calm."}) for p in draft.article.body]
    revised = draft.article.model_copy(update={"body": body})
    # Re-checked: only the figure is still flagged.
    still = FactCheckReport(draft_id=draft.id, verdicts=report.verdicts[:2])
    set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked",
              factcheck=still.model_dump(mode="json"))
    assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    assert_one_anchored_comment_per_flagged_claim(document, still)
    cleared = [t for t in threads(document) if t["plainTextQuote"] == "Regulators stayed silent."]
    assert len(cleared) == 1 and cleared[0]["status"] == "RESOLVED"
    assert cleared[0]["replies"][-1]["content"] == CLEARED_NOTE
    assert len([t for t in threads(document) if t["status"] == "OPEN"]) == 1


def test_long_evidence_is_shortened_to_the_comment_limit_keeping_verdict_and_reference():
    claim = Claim(id="c", text="Inflows 😀 were $2 billion", start=0, end=10)
    verdict = ClaimVerdict(claim=claim, verdict="contradicted", source_n=1, source_url="https://x.example/a",
                           evidence="€ 😀 " * 900)
    text = comment_text(verdict, claim_key(claim.text))
    assert len(text.encode("utf-8")) <= COMMENT_LIMIT
    assert text.startswith("Contradicted: “Inflows 😀 were $2 billion”") and text.endswith(claim_key(claim.text))
    assert "…”" in text


# --- the paragraph diff that keeps anchors ----------------------------------------------------

_line = st.sampled_from(["alpha", "beta 😀", "gamma €", "", "delta 東京", "eps 𝔘x", "zeta"])


@settings(max_examples=60, deadline=None)
@given(old=st.lists(_line, min_size=1, max_size=6), new=st.lists(_line, min_size=1, max_size=6))
def test_text_edits_turn_any_body_into_any_other_and_track_unchanged_characters(old, new):
    old_text, new_text = "\n".join(old), "\n".join(new)
    tab = FakeTab("t.0", "Tab 1", 0)
    document = FakeDocument("d", "t")
    document.tabs[0] = tab
    if old_text:
        document.apply({"insertText": {"location": {"index": 1}, "text": old_text}}, "setup")
    for k, ch in enumerate(tab.chars):
        ch.anchors.add(f"a{k}")   # each character carries its own marker
    requests, moved = text_edits(old_text, new_text)
    for index, request in enumerate(requests):
        document.apply(request, f"requests[{index}]")
    assert tab.text() == new_text + "\n"
    starts = tab._starts()
    survivors = {next(iter(ch.anchors)): starts[k] for k, ch in enumerate(tab.chars) if len(ch.anchors) == 1}
    for k in range(len(old_text)):
        index = 1 + utf16_len(old_text[:k])
        if moved(index) is not None:
            assert survivors.get(f"a{k}") == moved(index), "moved() says where a kept character went"


# --- the fake keeps the API's rules for the new requests ------------------------------------------


def test_fake_checks_comment_chip_and_tab_requests_like_the_api(setup, fake):
    config, _ = setup
    docs, drive = build_services(config, load_credentials(config))
    doc_id = drive.files().create(body={"name": "x", "mimeType": DOC_MIME, "parents": [FOLDER]}, fields="id").execute()["id"]
    drive.permissions().create(fileId=doc_id, body={"type": "user", "role": "writer", "emailAddress": EDITORS[0]},
                               sendNotificationEmail=False).execute()
    docs.documents().batchUpdate(documentId=doc_id, body={"requests": [
        {"insertText": {"location": {"index": 1}, "text": "a😀b claim\n"}}]}).execute()

    def status(requests) -> int:
        with pytest.raises(HttpError) as caught:
            docs.documents().batchUpdate(documentId=doc_id, body={"requests": requests}).execute()
        return caught.value.status_code

    rng = {"startIndex": 1, "endIndex": 4}
    assert status([{"insertComment": {"range": rng, "content": ""}}]) == 400                  # empty
    assert status([{"insertComment": {"range": rng, "content": "x" * 2049}}]) == 400          # too long
    assert status([{"insertComment": {"range": {"startIndex": 1, "endIndex": 3}, "content": "x"}}]) == 400  # mid-emoji
    assert status([{"insertComment": {"range": rng, "content": "x", "assigneeEmailAddress": "stranger@x.example"}}]) == 400
    assert status([{"insertComment": {"range": rng, "content": "x", "anchor": "y"}}]) == 400  # unknown field
    assert status([{"addCommentReply": {"commentId": "nope", "post": {"content": "x"}}}]) == 400
    assert status([{"createDropdownDefinition": {"dropdownDefinition": {"dropdownDefinitionProperties": {
        "options": [{"displayValue": "only one"}]}}}}]) == 400                                 # fewer than 2 options
    assert status([{"createDropdownDefinition": {"dropdownDefinition": {"dropdownDefinitionId": "bad id",
        "dropdownDefinitionProperties": {"options": [{"displayValue": "a"}, {"displayValue": "b"}]}}}}]) == 400
    assert status([{"insertDropdown": {"location": {"index": 1}, "dropdownDefinitionId": "kix.none"}}]) == 400
    assert status([{"insertText": {"location": {"index": 1, "tabId": "t.nope"}, "text": "x"}}]) == 400
    assert fake.documents[doc_id].text() == "a😀b claim\n\n", "every failed batch left the document as it was"

    reply = docs.documents().batchUpdate(documentId=doc_id, body={"requests": [
        {"insertComment": {"range": rng, "content": "check", "assigneeEmailAddress": EDITORS[0]}},
        {"createDropdownDefinition": {"dropdownDefinition": {"dropdownDefinitionId": "kix.abc",
            "dropdownDefinitionProperties": {"options": [{"displayValue": "A"}, {"displayValue": "B"}]}}}},
        {"insertDropdown": {"location": {"index": 1}, "dropdownDefinitionId": "kix.abc"}},
        {"addDocumentTab": {"tabProperties": {"title": "Second"}}},
    ]}).execute()
    DOCS.validate(reply, {"$ref": "BatchUpdateDocumentResponse"}, "")
    comment_id = reply["replies"][0]["insertComment"]["commentThread"]["commentId"]
    assert reply["commentUpdateState"] == "ALL_SAVED"
    fake.editor_reply(doc_id, comment_id, EDITORS[0], "ok")
    # Only the author may delete a thread, and an editor's post is not ours to change.
    editor_post = fake.documents[doc_id].comments[comment_id]["replies"][0]["postId"]
    assert status([{"updateCommentPost": {"commentId": comment_id, "postId": editor_post, "content": "x"}}]) == 400
    fake.editor_comment(doc_id, EDITORS[0], "mine", quote="claim")
    editor_thread = [c for c in fake.documents[doc_id].comments if c != comment_id][0]
    assert status([{"deleteComment": {"commentId": editor_thread}}]) == 400

    with pytest.raises(HttpError):   # comments need includeTabsContent, as the discovery document says
        docs.documents().get(documentId=doc_id, commentsViewMode="COMMENTS_VIEW_MODE_INCLUDED").execute()
    with pytest.raises(HttpError):
        docs.documents().get(documentId=doc_id, includeTabsContent=True,
                             commentsViewMode="COMMENTS_VIEW_MODE_INCLUDED").execute()
    full = docs.documents().get(documentId=doc_id, includeTabsContent=True, suggestionsViewMode="SUGGESTIONS_INLINE",
                                commentsViewMode="COMMENTS_VIEW_MODE_INCLUDED").execute()
    DOCS.validate(full, {"$ref": "Document"}, "")
    assert [t["tabProperties"]["title"] for t in full["tabs"]] == ["Tab 1", "Second"]
    mine = {c["commentId"]: c["headPost"]["author"]["me"] for c in full["comments"]}
    assert mine == {comment_id: True, editor_thread: False}
    [chip] = [e for e in full["tabs"][0]["documentTab"]["body"]["content"][1]["paragraph"]["elements"] if "dropdown" in e]
    assert chip["dropdown"]["dropdownProperties"]["displayValue"] == "A" and chip["endIndex"] - chip["startIndex"] == 1
    # The comment's anchor moved with its text when the chip went in before it.
    [rng_now] = full["tabs"][0]["documentTab"]["commentAnchors"][full["comments"][0]["anchorId"]]["ranges"]
    assert (rng_now["startIndex"], rng_now["endIndex"]) == (2, 5)


def test_an_anchor_grows_with_text_typed_inside_it_and_goes_with_its_text():
    document = FakeDocument("d", "t")
    document.apply({"insertText": {"location": {"index": 1}, "text": "one two three"}}, "r")
    document.apply({"insertComment": {"range": {"startIndex": 5, "endIndex": 8}, "content": "c"}}, "r", Context("me"))
    document.apply({"insertText": {"location": {"index": 6}, "text": "XX"}}, "r")
    [(anchor, ranges)] = document.tabs[0].anchor_ranges().items()
    assert [(r["startIndex"], r["endIndex"]) for r in ranges] == [(5, 10)]
    document.apply({"deleteContentRange": {"range": {"startIndex": 4, "endIndex": 11}}}, "r")
    assert document.tabs[0].anchor_ranges() == {} and len(document.comments) == 1
    assert isinstance(document.chars[0], Char)


# --- the status chip and sync ------------------------------------------------------------------

from sqlalchemy import select  # noqa: E402
from tenacity import wait_none  # noqa: E402

from agents.publisher import sync_approvals  # noqa: E402
from pipeline.cli.status import corrections_table  # noqa: E402
from pipeline.core import schema  # noqa: E402
from pipeline.core.corrections import read_house_rules, recent_corrections  # noqa: E402
from pipeline.core.prompts import PromptLibrary  # noqa: E402
from tests.test_publisher import APPROVED  # noqa: E402


def sync(config, ledger):
    return sync_approvals(config, ledger, retry_wait=wait_none())


def chip_of(document: FakeDocument) -> str:
    [chip] = [ch.dropdown for ch in document.chars if ch.dropdown]
    return chip["dropdownProperties"]["displayValue"]


def approval_rows(ledger):
    with ledger.engine.connect() as connection:
        return {r.draft_id: r for r in connection.execute(select(schema.approvals)).all()}


def test_the_status_chip_opens_the_document_and_keeps_the_editors_choice(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    document = doc_of(fake, ledger)
    assert document.text().startswith("Status: \ue907\n" + draft.article.headline + "\n")
    assert chip_of(document) == "Draft"
    definition = document.tabs[0].dropdown_definitions["kix.ndstatus"]
    assert [o["displayValue"] for o in definition["dropdownDefinitionProperties"]["options"]] == [
        "Draft", "In review", "Approved", "Spiked"]

    document.select_option("In review")
    revised = draft.article.model_copy(update={"headline": "Bitcoin tops 71,000 dollars"})
    set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked")
    assert publish(config, ledger).errors == []
    document = doc_of(fake, ledger)
    assert chip_of(document) == "In review", "a republish keeps what the editor chose"
    assert len(document.tabs[0].dropdown_definitions) == 1
    result = sync(config, ledger)
    assert result.items_out == 0 and draft_row(ledger, draft.id).state == "published"


def test_approval_by_chip_folder_or_prefix_all_reach_the_ledger(setup, fake):
    config, ledger = setup
    for n in (1, 2, 3):
        insert_draft(ledger, *make_draft(draft_id=f"draft-000{n}"))
    publish(config, ledger)
    docs, drive = build_services(config, load_credentials(config))
    by_chip, by_folder, by_prefix = (publication_row(ledger, f"draft-000{n}").doc_id for n in (1, 2, 3))
    fake.documents[by_chip].select_option("Approved")
    drive.files().update(fileId=by_folder, addParents=APPROVED, removeParents=FOLDER, supportsAllDrives=True).execute()
    drive.files().update(fileId=by_prefix, body={"name": "[APPROVED] ok"}, supportsAllDrives=True).execute()

    result = sync(config, ledger)

    assert result.errors == [] and result.items_out == 3
    rows = approval_rows(ledger)
    assert {d: r.approved_by for d, r in rows.items()} == {"draft-0001": "chip", "draft-0002": "folder",
                                                          "draft-0003": "prefix"}
    assert all(r.edit_rate == 0.0 for r in rows.values()), "nobody edited: the status line is not article text"
    assert {draft_row(ledger, f"draft-000{n}").state for n in (1, 2, 3)} == {"approved"}
    assert result.notes["approved_by draft-00"] in ("chip", "folder", "prefix")
    assert sync(config, ledger).items_out == 0


def test_a_spiked_chip_takes_the_draft_out_of_the_pipeline(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    doc_of(fake, ledger).select_option("Spiked")

    result = sync(config, ledger)

    assert result.items_out == 0 and result.notes["spiked"] == 1
    row = draft_row(ledger, draft.id)
    assert row.state == "spiked" and "status chip" in row.state_reason
    assert approval_rows(ledger) == {}


def test_replies_and_comments_come_back_as_corrections_once(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    document = doc_of(fake, ledger)
    ours = {t["plainTextQuote"]: t["commentId"] for t in threads(document)}
    fake.editor_reply(document.id, ours["ETF inflows of $2 billion"], EDITORS[1], "wrong, the figure is $1.2 billion")
    fake.editor_comment(document.id, EDITORS[0], "Say which exchanges.", quote="Exchanges reported record volumes")

    first = sync(config, ledger)
    second = sync(config, ledger)

    assert first.errors == [] and first.notes["corrections"] == 2 and second.notes["corrections"] == 0
    rows = sorted(recent_corrections(ledger), key=lambda r: r.kind)
    assert [(r.kind, r.author, r.text, r.quote, r.draft_id) for r in rows] == [
        ("comment", EDITORS[0], "Say which exchanges.", "Exchanges reported record volumes", draft.id),
        ("reply", EDITORS[1], "wrong, the figure is $1.2 billion", "ETF inflows of $2 billion", draft.id),
    ]
    assert rows[1].claim_key == claim_key("ETF inflows of $2 billion")
    assert len(corrections_table(ledger).rows) == 2
    assert draft_row(ledger, draft.id).state == "published", "a comment is not an approval"


def test_a_correction_made_on_three_drafts_becomes_a_house_rule_for_writer_and_reviser(setup, fake):
    config, ledger = setup
    for n in (1, 2, 3):
        insert_draft(ledger, *make_draft(draft_id=f"draft-000{n}"))
    publish(config, ledger)
    for n, wording in zip((1, 2, 3), ("Write per cent, not %.", "write per cent,  not %", "Write per cent, not %!")):
        doc_id = publication_row(ledger, f"draft-000{n}").doc_id
        fake.editor_comment(doc_id, EDITORS[n % 2], wording, quote="12 percent")
        if n < 3:
            assert sync(config, ledger).notes.get("house_rules") is None, "not recurring yet"

    result = sync(config, ledger)

    assert result.notes["house_rules"] == 1
    path = config.house_rules_path
    assert read_house_rules(path) == ["Write per cent, not %."]
    library = PromptLibrary(config.prompts_dir, path)
    for prompt in _writer_and_reviser_prompts(library):
        assert "- Write per cent, not %." in prompt.system
    # A content lead deletes the rule: it is not added back.
    path.write_text(path.read_text(encoding="utf-8").replace("- Write per cent, not %.\n", ""), encoding="utf-8")
    doc_id = publication_row(ledger, "draft-0001").doc_id
    fake.editor_comment(doc_id, EDITORS[0], "write per cent, not %", quote="Regulators")
    assert sync(config, ledger).notes.get("house_rules") is None and read_house_rules(path) == []


def _writer_and_reviser_prompts(library):
    """The prompts the writer and the reviser are really sent, through their own render functions."""
    from agents.writer import render_reviser_prompt, render_writer_prompt
    from pipeline.text.templates import load_templates
    from tests.test_writer import all_sources, drafted, flag, make_pack, make_story

    specs = load_templates(Path(__file__).resolve().parents[1] / "templates")
    sources = all_sources()[:2]
    draft = drafted(specs, sources)
    return [render_writer_prompt(make_story(2), make_pack(sources), specs["news"], prompts=library),
            render_reviser_prompt(draft.article, [flag("Hexagate traced 12,400 ETH")], make_pack(sources), specs["news"],
                                  prompts=library)]


# --- the second tab ------------------------------------------------------------------------------


def test_sources_and_fact_check_get_their_own_tab_and_the_article_tab_reads_clean(setup, fake):
    config, ledger = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    fake.fail("docs.documents.batchUpdate", 503, apply=True)   # the write that adds the tab: its answer is lost

    assert publish(config, ledger).errors == []

    document = doc_of(fake, ledger)
    assert [t.title for t in document.tabs] == ["Tab 1", "Sources & fact-check"], "one tab added, not two"
    article = document.text(0)
    assert "\nFact-check\n" not in article and "\nSources\n" not in article and "Evidence" not in article and article.endswith(
        f"{draft.article.insights[-1].text} [2]\n")
    checking = document.text(1)
    assert checking.startswith("Sources\n") and "\nFact-check\n" in checking and checking.count("Sources\n") == 1
    # A republish rewrites both tabs in one batch and reads back the article only from the first.
    revised = draft.article.model_copy(update={"headline": "Bitcoin 🚀 slips under €65k"})
    set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked")
    before = len(fake.calls_to("docs.documents.batchUpdate"))
    assert publish(config, ledger).errors == []
    assert len(fake.calls_to("docs.documents.batchUpdate")) == before + 1
    assert [t.title for t in doc_of(fake, ledger).tabs] == ["Tab 1", "Sources & fact-check"]
    doc_of(fake, ledger).select_option("Approved")
    assert sync(config, ledger).items_out == 1
    assert approval_rows(ledger)[draft.id].edit_rate == 0.0


def test_without_tabs_sources_and_fact_check_close_the_one_tab(tmp_path, fake, monkeypatch):
    from tests.fakes.google_server import write_service_account
    from pipeline.core.ledger import Ledger

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    config = google_config(tmp_path, fake, credentials_file=write_service_account(fake, tmp_path / "sa.json"),
                           sources_tab=False)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    assert publish(config, ledger).errors == []
    document = doc_of(fake, ledger)
    assert len(document.tabs) == 1 and "\nSources\n" in document.text(0) and "\nFact-check\n" in document.text(0)
    assert len(fake.calls_to("docs.documents.batchUpdate")) == 1
    ledger.close()
