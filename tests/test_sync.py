"""Approvals come back: documents editors approved are parsed into articles, with the share of words they changed."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select
from tenacity import wait_none

from agents.publisher import build_services, load_credentials, publish_ready, sync_approvals
from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.text.editdiff import article_text, edit_rate
from pipeline.services.gdocs import utf16_len
from pipeline.core.ledger import Ledger
from pipeline.core.models import Article
from tests.test_publisher import (  # noqa: F401  (fixtures)
    APPROVED,
    FOLDER,
    draft_row,
    fake,
    insert_draft,
    make_draft,
    no_regional_access_boundary_lookup,
    publication_row,
    setup,
)


# --- the edit rate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before, after, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0.0),
        ("the cat sat on the mat", "the dog sat on the mat", 1 / 6),          # one word replaced
        ("the cat sat on the mat", "the cat sat on the red mat", 1 / 6),      # one word inserted
        ("the cat sat on the mat", "the cat sat", 3 / 6),                     # three words deleted
        ("the cat sat on the mat", "a dog lay under one rug", 1.0),           # everything rewritten
        ("one two", "one two three four five six", 1.0),                      # capped at 1
        ("the  cat\nsat", "the cat sat", 0.0),                                # whitespace is not a word
        ("rose 5%", "rose 5%,", 0.5),                                         # punctuation counts
        ("", "", 0.0),
        ("", "new text", 1.0),
    ],
)
def test_edit_rate_is_the_share_of_draft_words_changed(before, after, expected):
    assert edit_rate(before, after) == pytest.approx(expected)


# --- Google -------------------------------------------------------------------------------


def approvals(ledger: Ledger) -> list:
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.approvals)).all()


def replace_in_document(docs, doc_id: str, old: str, new: str) -> None:
    """What an editor's keystrokes do: delete `old` where it stands and type `new`, in UTF-16 positions."""
    document = docs.documents().get(documentId=doc_id).execute()
    for element in document["body"]["content"]:
        if "paragraph" not in element:
            continue
        content = "".join(run["textRun"]["content"] if "textRun" in run else "\ue907" for run in element["paragraph"]["elements"])
        if old in content:
            start = element["startIndex"] + utf16_len(content[: content.index(old)])
            requests = [{"deleteContentRange": {"range": {"startIndex": start, "endIndex": start + utf16_len(old)}}}]
            if new:
                requests.append({"insertText": {"location": {"index": start}, "text": new}})
            docs.documents().batchUpdate(documentId=doc_id, body={"requests": requests}).execute()
            return
    raise AssertionError(f"{old!r} is not in the document")


def published(config, ledger, draft_id="draft-0001", unicode=False):
    draft, report = make_draft(draft_id=draft_id, unicode=unicode)
    insert_draft(ledger, draft, report)
    assert publish_ready(config, ledger, retry_wait=wait_none()).errors == []
    return draft, publication_row(ledger, draft.id).doc_id


def test_document_moved_to_the_approved_folder_comes_back_with_its_edits(setup, fake):
    config, ledger = setup
    draft, doc_id = published(config, ledger)
    docs, drive = build_services(config, load_credentials(config))
    replace_in_document(docs, doc_id, "12 percent", "11.5 percent")
    replace_in_document(docs, doc_id, "Regulators stayed silent. [1][2]\n", "")
    replace_in_document(docs, doc_id, "is likely to stay", "will likely stay")
    drive.files().update(fileId=doc_id, addParents=APPROVED, removeParents=FOLDER, supportsAllDrives=True).execute()

    result = sync_approvals(config, ledger, retry_wait=wait_none())

    assert result.errors == [] and result.items_out == 1
    [approval] = approvals(ledger)
    article = Article.model_validate(approval.article)
    original = draft.article
    assert article.headline == original.headline
    assert article.lead == original.lead.replace("12 percent", "11.5 percent")
    assert [(p.text, p.citations) for p in article.body] == [(p.text, p.citations) for p in original.body[:2]]
    assert [i.text for i in article.insights] == ["Volatility will likely stay high", original.insights[1].text]
    assert [i.citations for i in article.insights] == [[1], [2]]
    assert article.sources == original.sources
    # Words changed: "12"->"11.5" (1), "is"->"will" and "to" dropped (2), the deleted paragraph (3 words + "[1][2]").
    draft_words = len(article_text(original).split())
    assert approval.edit_rate == pytest.approx((1 + 2 + 4) / draft_words)
    assert result.notes[f"edit_rate {draft.id[:8]}"] == round(approval.edit_rate, 4)
    assert (approval.doc_id, approval.writer_model) == (doc_id, "gpt-4o-mini")
    assert draft_row(ledger, draft.id).state == "approved"

    again = sync_approvals(config, ledger, retry_wait=wait_none())
    assert again.items_out == 0 and len(approvals(ledger)) == 1


def test_title_prefix_approves_and_unapproved_documents_are_left_alone(setup, fake):
    config, ledger = setup
    approved_draft, approved_doc = published(config, ledger, draft_id="draft-0001", unicode=True)
    waiting_draft, _ = published(config, ledger, draft_id="draft-0002")
    _, drive = build_services(config, load_credentials(config))
    name = fake.files[approved_doc]["name"]
    drive.files().update(fileId=approved_doc, body={"name": f"[APPROVED] {name}"}, supportsAllDrives=True).execute()

    result = sync_approvals(config, ledger, retry_wait=wait_none())

    assert result.errors == [] and result.items_in == 2 and result.items_out == 1
    [approval] = approvals(ledger)
    assert approval.draft_id == approved_draft.id
    assert approval.edit_rate == 0.0
    article = Article.model_validate(approval.article)
    # An untouched document reads back as the draft it was written from, emoji and all.
    assert article.model_dump() == approved_draft.article.model_dump()
    assert draft_row(ledger, waiting_draft.id).state == "published"


def test_sync_while_google_is_down_keeps_drafts_published(setup, fake):
    config, ledger = setup
    draft, doc_id = published(config, ledger)
    fake.files[doc_id]["parents"] = [APPROVED]
    fake.down = True
    result = sync_approvals(config, ledger, retry_wait=wait_none())
    assert result.items_out == 0 and "Google unavailable" in result.errors[0]
    assert draft_row(ledger, draft.id).state == "published" and approvals(ledger) == []
    fake.down = False
    assert sync_approvals(config, ledger, retry_wait=wait_none()).items_out == 1


def test_document_whose_styles_were_cleared_still_parses(setup, fake):
    config, ledger = setup
    draft, doc_id = published(config, ledger)
    docs, _ = build_services(config, load_credentials(config))
    end = docs.documents().get(documentId=doc_id).execute()["body"]["content"][-1]["endIndex"]
    docs.documents().batchUpdate(documentId=doc_id, body={"requests": [
        {"updateParagraphStyle": {"range": {"startIndex": 1, "endIndex": end}, "paragraphStyle": {"namedStyleType": "NORMAL_TEXT"},
                                  "fields": "namedStyleType"}},
    ]}).execute()
    fake.files[doc_id]["parents"] = [APPROVED]
    assert sync_approvals(config, ledger, retry_wait=wait_none()).errors == []
    article = Article.model_validate(approvals(ledger)[0].article)
    # Without styles the first paragraph is the headline and the first after our metadata line the lead.
    assert article.headline == draft.article.headline
    assert article.lead == draft.article.lead
    assert [p.text for p in article.body] == [p.text for p in draft.article.body]


# --- local outbox -------------------------------------------------------------------------


def test_markdown_moved_to_outbox_approved_is_synced(tmp_path):
    config = parse_config({"publishing": {"target": "local", "outbox": "out"}}, root=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    publish_ready(config, ledger)
    [md] = (tmp_path / "out").glob("*.md")
    (tmp_path / "out" / "approved").mkdir()
    edited = md.read_text(encoding="utf-8").replace("rush 🏃 of orders", "flood 🏃 of orders")
    (tmp_path / "out" / "approved" / md.name).write_text(edited, encoding="utf-8")
    shutil.copy(md, tmp_path / "out" / "unrelated-file.md")   # not in approved/: ignored

    result = sync_approvals(config, ledger)

    assert result.errors == [] and result.items_out == 1
    [approval] = approvals(ledger)
    article = Article.model_validate(approval.article)
    assert article.body[0].text == "Café owners in Zürich reported a flood 🏃 of orders."
    assert article.insights == draft.article.insights and article.lead == draft.article.lead
    assert approval.edit_rate == pytest.approx(1 / len(article_text(draft.article).split()))
    assert approval.doc_id == f"approved/{md.name}"
    assert draft_row(ledger, draft.id).state == "approved"
    assert sync_approvals(config, ledger).items_out == 0
