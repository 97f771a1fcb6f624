"""Publishing drafts to Google Docs, with the real google-api-python-client talking to a local fake of the APIs."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import pytest
from googleapiclient.errors import HttpError
from sqlalchemy import insert, select, update
from tenacity import wait_none

import agents.publisher as publisher
from agents.publisher import WriteRateLimiter, build_services, load_credentials, publish_ready
from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from pipeline.core.models import (
    Article,
    Claim,
    ClaimVerdict,
    Draft,
    FactCheckReport,
    Insight,
    Paragraph,
    SourceRef,
)
from pipeline.services.gdocs import layout_draft, split_for_tabs
from tests.fakes.google_server import DOC_MIME, DOCS, FakeGoogle, write_authorized_user, write_service_account

FOLDER, APPROVED = "folder-drafts", "folder-approved"
EDITORS = ["ana@newsroom.example", "ben@newsroom.example"]


# --- builders shared with test_sync.py --------------------------------------------------


def make_draft(draft_id: str = "draft-0001", unicode: bool = False, headline: str | None = None) -> tuple[Draft, FactCheckReport]:
    if unicode:
        article = Article(
            headline=headline or "Bitcoin 🚀 tops €70k as Zürich café owners 😀 cheer",
            lead="Prices rose 12% — the biggest jump since 2021 𝔘𝔫𝔦𝔠𝔬𝔡𝔢.",
            body=[
                Paragraph(text="Café owners in Zürich reported a rush 🏃 of orders.", citations=[1]),
                Paragraph(text="Analysts 🤔 said the rally was driven by ETF inflows of $2 billion.", citations=[2]),
                Paragraph(text="Regulators in 東京 stayed silent.", citations=[1, 2]),
            ],
            insights=[
                Insight(text="Volatility 📈 is likely to stay high", citations=[1]),
                Insight(text="ETF flows matter more than retail — for now", citations=[2]),
            ],
            sources=[
                SourceRef(n=1, title="Zürich cafés 😀 embrace bitcoin", outlet="Le Temps", url="https://letemps.example/a"),
                SourceRef(n=2, title="ETF inflows hit record", outlet="CoinDesk", url="https://coindesk.example/b"),
            ],
        )
        flagged = "ETF inflows of $2 billion"
        second = "Regulators in 東京 stayed silent."
    else:
        article = Article(
            headline=headline or "Bitcoin tops 70,000 dollars as ETF demand grows",
            lead="Prices rose 12 percent on Monday, the biggest jump since 2021.",
            body=[
                Paragraph(text="Exchanges reported record volumes during the rally.", citations=[1]),
                Paragraph(text="Analysts said the rally was driven by ETF inflows of $2 billion.", citations=[2]),
                Paragraph(text="Regulators stayed silent.", citations=[1, 2]),
            ],
            insights=[
                Insight(text="Volatility is likely to stay high", citations=[1]),
                Insight(text="ETF flows matter more than retail for now", citations=[2]),
            ],
            sources=[
                SourceRef(n=1, title="Bitcoin volumes hit record", outlet="Reuters", url="https://reuters.example/a",
                          published=datetime(2024, 3, 11, tzinfo=timezone.utc)),
                SourceRef(n=2, title="ETF inflows hit record", outlet="CoinDesk", url="https://coindesk.example/b"),
            ],
        )
        flagged = "ETF inflows of $2 billion"
        second = "Regulators stayed silent."
    draft = Draft(
        id=draft_id,
        story_key=f"story{draft_id}abcdef",
        template="news",
        writer_model="gpt-4o-mini",
        method="llm",
        prompt_versions={"writer": "a1b2c3", "claims": "d4e5f6"},
        article=article,
        created=datetime(2024, 3, 12, 9, 30, tzinfo=timezone.utc),
    )
    report = FactCheckReport(
        draft_id=draft_id,
        verdicts=[
            ClaimVerdict(claim=Claim(id="c1", text="Prices rose 12%", start=0, end=15, section="lead"), verdict="supported",
                         source_n=1),
            ClaimVerdict(claim=Claim(id="c2", text=flagged, start=0, end=len(flagged)), verdict="contradicted", source_n=2,
                         source_url="https://coindesk.example/b", evidence="Inflows were $1.2 billion on Monday."),
            ClaimVerdict(claim=Claim(id="c3", text=second, start=0, end=len(second)), verdict="unverifiable"),
        ],
    )
    return draft, report


def insert_draft(ledger: Ledger, draft: Draft, report: FactCheckReport | None, state: str = "checked") -> None:
    now = datetime.now(timezone.utc)
    with ledger.begin() as connection:
        connection.execute(
            insert(schema.drafts).values(
                id=draft.id, story_key=draft.story_key, template=draft.template, writer_model=draft.writer_model,
                method=draft.method, prompt_versions=draft.prompt_versions, article=draft.article.model_dump(mode="json"),
                violations=[], factcheck=report.model_dump(mode="json") if report else None, state=state,
                created=draft.created, updated=now,
            )
        )


def set_draft(ledger: Ledger, draft_id: str, **values) -> None:
    with ledger.begin() as connection:
        connection.execute(update(schema.drafts).where(schema.drafts.c.id == draft_id).values(**values))


def draft_row(ledger: Ledger, draft_id: str):
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.drafts).where(schema.drafts.c.id == draft_id)).one()


def publication_row(ledger: Ledger, draft_id: str):
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.publications).where(schema.publications.c.draft_id == draft_id)).first()


def google_config(tmp_path, fake: FakeGoogle, **google):
    settings = {
        "folder_id": FOLDER,
        "approved_folder_id": APPROVED,
        "editors": EDITORS,
        "api_endpoint": fake.url + "/",
        "drive_endpoint": fake.url,
        **{k: str(v) if hasattr(v, "is_file") else v for k, v in google.items()},
    }
    return parse_config({"publishing": {"target": "google", "google": settings}}, root=tmp_path)


def paragraphs(document: dict) -> list[dict]:
    """(text, style, list glyph, runs) per body paragraph of a documents.get answer, tab after tab
    (the article, then "Sources & fact-check"), or of its one body when read without tabs."""
    bodies = [(t["documentTab"]["body"], t["documentTab"]["lists"]) for t in document["tabs"]] if "tabs" in document \
        else [(document["body"], document["lists"])]
    out = []
    for element, lists in ((e, lists) for body, lists in bodies for e in body["content"]):
        paragraph = element.get("paragraph")
        if paragraph is None or any("dropdown" in e for e in paragraph["elements"]):
            continue   # the status line with its chip: tests/test_doc_review.py
        runs = [e["textRun"] for e in paragraph["elements"]]
        bullet = paragraph.get("bullet")
        glyph = None
        if bullet:
            level = lists[bullet["listId"]]["listProperties"]["nestingLevels"][0]
            glyph = "numbered" if level.get("glyphType") == "DECIMAL" else "bullet"
        out.append({
            "text": "".join(r["content"] for r in runs).rstrip("\n"),
            "style": paragraph["paragraphStyle"]["namedStyleType"],
            "list": glyph,
            "list_id": bullet["listId"] if bullet else None,
            "runs": runs,
        })
    return out


def styled(paras: list[dict], key: str) -> list[str]:
    return [r["content"] for p in paras for r in p["runs"] if key in r["textStyle"]]


@pytest.fixture(autouse=True)
def no_regional_access_boundary_lookup(monkeypatch):
    """google-auth looks up a service account's access boundary at iamcredentials.googleapis.com
    in a background thread after each token refresh; tests have no Google to ask."""
    from google.auth.credentials import CredentialsWithRegionalAccessBoundary

    monkeypatch.setattr(CredentialsWithRegionalAccessBoundary, "_is_regional_access_boundary_lookup_required",
                        lambda self: False)


@pytest.fixture
def fake():
    server = FakeGoogle().serve()
    server.add_folder(FOLDER)
    server.add_folder(APPROVED)
    yield server
    server.stop()


@pytest.fixture
def setup(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    key = write_service_account(fake, tmp_path / "sa.json")
    config = google_config(tmp_path, fake, credentials_file=key)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield config, ledger
    ledger.close()


def publish(config, ledger, **kwargs):
    return publish_ready(config, ledger, retry_wait=wait_none(), **kwargs)


def document_of(fake: FakeGoogle, ledger: Ledger, draft_id: str) -> dict:
    """The document as documents.get answers with includeTabsContent: every tab."""
    return fake.documents[publication_row(ledger, draft_id).doc_id].to_json(include_tabs=True)


# --- the document ---------------------------------------------------------------------


@pytest.mark.parametrize("unicode", [False, True], ids=["ascii", "unicode-emoji"])
def test_published_document_has_every_section_styled_in_one_write(setup, fake, unicode):
    config, ledger = setup
    draft, report = make_draft(unicode=unicode)
    insert_draft(ledger, draft, report)

    result = publish(config, ledger)

    assert result.errors == [] and result.items_out == 1
    files = fake.docs_of_mime(DOC_MIME)
    assert len(files) == 1
    file = files[0]
    assert file["name"] == f"2024-03-12 · news · {draft.article.headline}"
    assert file["parents"] == [FOLDER]
    assert file["appProperties"]["newsdeskDraftId"] == draft.id
    # The article in one batchUpdate (with the new tab); the tab's sources and fact-check in a second.
    assert len(fake.calls_to("docs.documents.batchUpdate")) == 2
    assert [t.title for t in fake.documents[file["id"]].tabs] == ["Tab 1", "Sources & fact-check"]
    assert result.notes[f"link {draft.id[:8]}"] == file["webViewLink"]

    paras = paragraphs(document_of(fake, ledger, draft.id))
    texts = [p["text"] for p in paras]
    article = draft.article
    assert texts[0] == article.headline and paras[0]["style"] == "TITLE"
    assert paras[1]["style"] == "HEADING_6"
    assert "Template news" in texts[1] and "Writer gpt-4o-mini" in texts[1] and "claims d4e5f6" in texts[1]
    assert "1 supported, 1 contradicted, 1 unverifiable" in texts[1]
    assert texts[2] == article.lead and paras[2]["style"] == "SUBTITLE"
    assert texts[3:6] == [
        f"{article.body[0].text} [1]", f"{article.body[1].text} [2]", f"{article.body[2].text} [1][2]",
    ]
    assert all(p["style"] == "NORMAL_TEXT" and p["list"] is None for p in paras[3:6])
    headings = [(i, p["text"]) for i, p in enumerate(paras) if p["style"] == "HEADING_2"]
    assert [h for _, h in headings] == ["Insights", "Sources", "Fact-check"]
    insights_at, sources_at, check_at = (i for i, _ in headings)
    insight_paras = paras[insights_at + 1 : sources_at]
    assert [p["text"] for p in insight_paras] == [f"{i.text} [{i.citations[0]}]" for i in article.insights]
    assert {p["list"] for p in insight_paras} == {"bullet"} and len({p["list_id"] for p in insight_paras}) == 1
    source_paras = paras[sources_at + 1 : check_at]
    assert [p["list"] for p in source_paras] == ["numbered", "numbered"]
    assert source_paras[0]["text"].startswith(article.sources[0].title)
    links = [(r["content"], r["textStyle"]["link"]["url"]) for p in source_paras for r in p["runs"] if "link" in r["textStyle"]]
    assert links == [(s.title, s.url) for s in article.sources]
    checks = "\n".join(p["text"] for p in paras[check_at + 1 :])
    assert "3 claims checked: 1 supported, 1 contradicted, 1 unverifiable." in checks
    assert f"Contradicted: “{report.verdicts[1].claim.text}”" in checks
    assert "Evidence [2]: “Inflows were $1.2 billion on Monday.”" in checks
    assert f"Unverifiable: “{report.verdicts[2].claim.text}”" in checks
    assert all(p["list"] is None for p in paras[check_at + 1 :])

    # Styles sit exactly on their text, however many UTF-16 units the emoji before them take.
    assert styled(paras[2:3], "bold") == [article.lead]
    body_highlights = styled(paras[3:6], "backgroundColor")
    assert body_highlights == [report.verdicts[1].claim.text, report.verdicts[2].claim.text]
    assert styled(paras[:2] + paras[6:check_at], "backgroundColor") == []

    row = draft_row(ledger, draft.id)
    assert row.state == "published"
    publication = publication_row(ledger, draft.id)
    assert (publication.target, publication.state, publication.doc_id) == ("google", "written", file["id"])


def test_the_fake_answers_in_the_shape_of_the_discovery_document(setup, fake):
    config, ledger = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    # documents.get as served must itself validate against the Document schema the client library ships.
    DOCS.validate(document_of(fake, ledger, draft.id), {"$ref": "Document"}, "")


def test_draft_text_goes_in_as_text_never_as_markup(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    article = draft.article.model_copy(update={
        "headline": "<b>Breaking</b>\n\tnews",
        "body": [Paragraph(text="Line one\nline two\u0007 with a bell and \ue000 private use", citations=[])],
    })
    insert_draft(ledger, draft.model_copy(update={"article": article}), None)
    assert publish(config, ledger).errors == []
    paras = paragraphs(document_of(fake, ledger, draft.id))
    assert paras[0]["text"] == "<b>Breaking</b> news" and paras[0]["style"] == "TITLE"
    assert "Line one line two with a bell and private use" in [p["text"] for p in paras]
    assert "This draft was not fact-checked." in [p["text"] for p in paras]


# --- idempotence and recovery ------------------------------------------------------------


def test_republish_replaces_the_content_of_the_same_document(setup, fake):
    config, ledger = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    first_id = publication_row(ledger, draft.id).doc_id

    revised = draft.article.model_copy(update={
        "headline": "Bitcoin 🚀 slips back under €65k",
        "insights": [],
        "body": draft.article.body[:1],
    })
    set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked", factcheck=None)
    result = publish(config, ledger)

    assert result.errors == [] and result.notes["created"] == 0
    assert [f["id"] for f in fake.docs_of_mime(DOC_MIME)] == [first_id]
    assert len(fake.calls_to("drive.files.create")) == 1
    assert len(fake.calls_to("docs.documents.batchUpdate")) == 3, "two writes to make it, one per republish"
    assert fake.files[first_id]["name"] == "2024-03-12 · news · Bitcoin 🚀 slips back under €65k"
    paras = paragraphs(document_of(fake, ledger, draft.id))
    texts = [p["text"] for p in paras]
    assert texts[0] == "Bitcoin 🚀 slips back under €65k"
    assert "Insights" not in texts and not any("Analysts" in t for t in texts)
    # Nothing survives from the old version: no highlight, no stray bullets outside the sources.
    assert styled(paras, "backgroundColor") == []
    assert [p["text"] for p in paras if p["list"]] == [p["text"] for p in paras if p["list"] == "numbered"]
    assert len([p for p in paras if p["list"]]) == 2
    assert draft_row(ledger, draft.id).state == "published"


def test_unchanged_draft_is_not_rewritten(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    set_draft(ledger, draft.id, state="checked")
    result = publish(config, ledger)
    assert result.items_out == 1
    assert len(fake.calls_to("docs.documents.batchUpdate")) == 2, "only the two writes that made it"
    assert draft_row(ledger, draft.id).state == "published"


class SimulatedCrash(BaseException):
    """The process dies: not an error any handler would catch."""


def test_crash_between_create_and_ledger_is_recovered_without_orphan(setup, fake, monkeypatch):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    real_save = publisher._save_publication

    def crash_once_the_file_exists(ledger_, draft_id, **values):
        if values.get("doc_id"):
            raise SimulatedCrash()
        return real_save(ledger_, draft_id, **values)

    monkeypatch.setattr(publisher, "_save_publication", crash_once_the_file_exists)
    with pytest.raises(SimulatedCrash):
        publish(config, ledger)
    assert len(fake.docs_of_mime(DOC_MIME)) == 1
    assert publication_row(ledger, draft.id).state == "creating"
    assert publication_row(ledger, draft.id).doc_id is None
    assert draft_row(ledger, draft.id).state == "checked"

    monkeypatch.setattr(publisher, "_save_publication", real_save)
    result = publish(config, ledger)

    assert result.errors == []
    files = fake.docs_of_mime(DOC_MIME)
    assert len(files) == 1, "the second run adopts the file the first one created"
    assert publication_row(ledger, draft.id).doc_id == files[0]["id"]
    assert paragraphs(fake.documents[files[0]["id"]].to_json())[0]["text"] == draft.article.headline
    assert draft_row(ledger, draft.id).state == "published"


def test_crash_after_create_but_before_writing_content_is_finished_next_run(setup, fake, monkeypatch):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    real_batch = publisher.GoogleClient.batch_update

    def crash(self, document_id, requests, revision_id):
        raise SimulatedCrash()

    monkeypatch.setattr(publisher.GoogleClient, "batch_update", crash)
    with pytest.raises(SimulatedCrash):
        publish(config, ledger)
    assert publication_row(ledger, draft.id).doc_id is not None
    monkeypatch.setattr(publisher.GoogleClient, "batch_update", real_batch)

    assert publish(config, ledger).errors == []
    assert len(fake.docs_of_mime(DOC_MIME)) == 1
    assert paragraphs(document_of(fake, ledger, draft.id))[0]["text"] == draft.article.headline


def test_create_whose_response_was_lost_is_not_repeated(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    fake.fail("drive.files.create", 503, apply=True)   # Drive made the file, the answer never arrived
    result = publish(config, ledger)
    assert result.errors == []
    assert len(fake.docs_of_mime(DOC_MIME)) == 1
    assert draft_row(ledger, draft.id).state == "published"


def _expected_text(draft, report) -> str:
    """Every tab's text: the status line with its chip (one non-text element) and the article, then the
    "Sources & fact-check" tab."""
    article, checking = split_for_tabs(layout_draft(draft, report))
    return "Status: \ue907\n" + "\n".join(b.text for b in article) + "\n" + "\n".join(b.text for b in checking) + "\n"


def _tabs_text(document) -> str:
    return "".join(document.text(k) for k in range(len(document.tabs)))


@pytest.mark.parametrize("republish", [False, True], ids=["first-publish", "republish"])
def test_write_whose_response_was_lost_is_not_applied_twice(setup, fake, republish):
    """Docs applied the batchUpdate but the answer never arrived: the retry must not write the article again."""
    config, ledger = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)
    if republish:
        publish(config, ledger)
        revised = draft.article.model_copy(update={"headline": "Bitcoin 🚀 slips back under €65k"})
        draft = draft.model_copy(update={"article": revised})
        set_draft(ledger, draft.id, article=revised.model_dump(mode="json"), state="checked")
    fake.fail("docs.documents.batchUpdate", 503, apply=True)

    result = publish(config, ledger)

    assert result.errors == []
    document = fake.documents[publication_row(ledger, draft.id).doc_id]
    assert _tabs_text(document) == _expected_text(draft, report), "the article is in the document exactly once"
    assert document.text().count(draft.article.headline) == 1
    batches = [c for c in fake.calls if c.method == "docs.documents.batchUpdate"]
    assert [c.status for c in batches][-2:] == [503, 200]
    # Each attempt was built from its own read and pinned to that revision.
    revisions = [c.body["writeControl"]["requiredRevisionId"] for c in batches[-2:]]
    assert revisions[0] != revisions[1]
    assert draft_row(ledger, draft.id).state == "published"


def test_write_racing_an_editor_is_rebuilt_from_the_newer_revision(setup, fake, monkeypatch):
    """An edit lands between our read and our write: Google refuses the stale revision, we read again."""
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    set_draft(ledger, draft.id, state="checked", factcheck=None)
    doc_id = publication_row(ledger, draft.id).doc_id
    real_get = publisher.GoogleClient.get_document
    edits = []

    def get_then_someone_types(self, document_id, retry=True, **params):
        document = real_get(self, document_id, retry=retry, **params)
        if not edits:   # once: an editor adds a paragraph right after our read
            edits.append(1)
            with fake.lock:
                fake.documents[doc_id].apply({"insertText": {"location": {"index": 1}, "text": "EDITOR NOTE\n"}}, "edit")
                fake.documents[doc_id].revision += 1
        return document

    monkeypatch.setattr(publisher.GoogleClient, "get_document", get_then_someone_types)
    result = publish(config, ledger)

    assert result.errors == []
    statuses = [c.status for c in fake.calls if c.method == "docs.documents.batchUpdate"]
    assert statuses[-2:] == [400, 200], "the stale write is refused, the rebuilt one lands"
    assert _tabs_text(fake.documents[doc_id]) == _expected_text(draft, None)


def test_document_that_keeps_changing_is_reported_and_the_draft_stays_ready(setup, fake, monkeypatch):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    set_draft(ledger, draft.id, state="checked", factcheck=None)
    doc_id = publication_row(ledger, draft.id).doc_id
    real_get = publisher.GoogleClient.get_document

    def always_moving(self, document_id, retry=True, **params):
        document = real_get(self, document_id, retry=retry, **params)
        fake.documents[doc_id].revision += 1
        return document

    monkeypatch.setattr(publisher.GoogleClient, "get_document", always_moving)
    result = publish(config, ledger)

    assert len(result.errors) == 1 and "kept changing" in result.errors[0]
    assert draft_row(ledger, draft.id).state == "checked"
    assert _tabs_text(fake.documents[doc_id]) == _expected_text(draft, report), "the earlier version is untouched"


# --- sharing -------------------------------------------------------------------------------


def test_document_is_shared_only_with_the_configured_editors(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    doc_id = publication_row(ledger, draft.id).doc_id
    permissions = fake.permissions[doc_id]
    assert sorted((p["type"], p["role"], p["emailAddress"]) for p in permissions) == [
        ("user", "writer", e) for e in EDITORS
    ]
    created = [c.body for c in fake.calls_to("drive.permissions.create")]
    assert all(body["type"] == "user" for body in created)
    assert fake.notifications == [], "notify_editors is off by default"
    for call in fake.calls_to("drive.permissions.create"):
        assert call.query["sendNotificationEmail"] == "false" and call.query["supportsAllDrives"] == "true"

    # A republish does not share again.
    set_draft(ledger, draft.id, state="checked", factcheck=None)
    publish(config, ledger)
    assert len(fake.permissions[doc_id]) == 2 and len(fake.calls_to("drive.permissions.create")) == 2


def test_editors_are_notified_when_configured(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    config = google_config(tmp_path, fake, credentials_file=write_service_account(fake, tmp_path / "sa.json"),
                           editors=["chief@newsroom.example"], notify_editors=True)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    assert publish(config, ledger).errors == []
    assert fake.notifications == ["chief@newsroom.example"]


# --- failures --------------------------------------------------------------------------------


def test_rate_limits_and_server_errors_are_retried(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    fake.fail("drive.files.list", 500)
    fake.fail("docs.documents.batchUpdate", 429)
    fake.fail("docs.documents.batchUpdate", 503)
    fake.fail("drive.permissions.create", 502)

    result = publish(config, ledger)

    assert result.errors == []
    assert draft_row(ledger, draft.id).state == "published"
    assert len(fake.docs_of_mime(DOC_MIME)) == 1
    statuses = [c.status for c in fake.calls if c.method == "docs.documents.batchUpdate"]
    assert statuses == [429, 503, 200, 200]   # the article (third try), then the "Sources & fact-check" tab
    assert result.notes["calls documents.batchUpdate"] == 4


def test_google_down_leaves_drafts_ready_and_a_later_run_publishes_them(setup, fake):
    config, ledger = setup
    for n in (1, 2):
        insert_draft(ledger, *make_draft(draft_id=f"draft-000{n}"))
    fake.down = True

    result = publish(config, ledger)

    assert result.items_out == 0
    assert len(result.errors) == 1 and "Google unavailable" in result.errors[0]
    assert "2 draft(s) stay ready" in result.errors[0]
    assert {draft_row(ledger, f"draft-000{n}").state for n in (1, 2)} == {"checked"}
    assert "Google unavailable" in draft_row(ledger, "draft-0002").state_reason
    assert fake.docs_of_mime(DOC_MIME) == []

    fake.down = False
    result = publish(config, ledger)
    assert result.errors == [] and result.items_out == 2
    assert len(fake.docs_of_mime(DOC_MIME)) == 2
    assert draft_row(ledger, "draft-0002").state_reason is None


def test_unreachable_google_is_reported_and_nothing_changes(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = google_config(tmp_path, fake, credentials_file=write_service_account(fake, tmp_path / "sa.json"),
                           api_endpoint=dead + "/", drive_endpoint=dead)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    result = publish(config, ledger)
    assert result.items_out == 0 and "Google unavailable" in result.errors[0]
    assert draft_row(ledger, "draft-0001").state == "checked"


def test_missing_credentials_give_a_clear_error_and_drafts_stay_ready(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    config = google_config(tmp_path, fake)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    result = publish(config, ledger)
    assert result.items_out == 0
    assert "publishing.google.credentials_file" in result.errors[0] and "stay ready" in result.errors[0]
    assert draft_row(ledger, "draft-0001").state == "checked"
    assert fake.calls == [] and fake.token_requests == []

    missing = google_config(tmp_path, fake, credentials_file=tmp_path / "nope.json")
    assert "nope.json" in publish(missing, ledger).errors[0] and "does not exist" in publish(missing, ledger).errors[0]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not readable JSON"),
        ('{"type": "service_account", "client_email": "x@y"}', "incomplete"),
        ('{"type": "external_account"}', "expected a service-account key"),
    ],
)
def test_malformed_credential_files_are_named(tmp_path, fake, monkeypatch, content, expected):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    bad.chmod(0o600)
    config = google_config(tmp_path, fake, credentials_file=bad)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    result = publish(config, ledger)
    assert expected in result.errors[0] and str(bad) in result.errors[0]
    assert draft_row(ledger, "draft-0001").state == "checked"


def test_credentials_google_rejects_are_reported_and_drafts_stay_ready(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    key = write_service_account(fake, tmp_path / "sa.json", email="revoked@test.iam.gserviceaccount.com", trusted=False)
    config = google_config(tmp_path, fake, credentials_file=key)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    result = publish(config, ledger)
    assert "rejected the credentials" in result.errors[0] and "invalid_grant" in result.errors[0]
    assert draft_row(ledger, "draft-0001").state == "checked"
    assert fake.docs_of_mime(DOC_MIME) == []


def test_authorized_user_token_file_and_environment_key_both_work(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    token = write_authorized_user(fake, tmp_path / "token.json")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft(draft_id="draft-0001"))
    assert publish(google_config(tmp_path, fake, token_file=token), ledger).errors == []
    assert fake.token_requests == [], "the saved access token was used as is"

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_service_account(fake, tmp_path / "env.json")))
    insert_draft(ledger, *make_draft(draft_id="draft-0002"))
    assert publish(google_config(tmp_path, fake), ledger).errors == []
    assert fake.token_requests[-1]["grant_type"].endswith("jwt-bearer")
    assert len(fake.docs_of_mime(DOC_MIME)) == 2


def test_only_checked_drafts_are_published(setup, fake):
    config, ledger = setup
    for n, state in enumerate(["drafted", "needs_attention", "approved", "checked"]):
        insert_draft(ledger, *make_draft(draft_id=f"draft-000{n}"), state=state)
    result = publish(config, ledger)
    assert result.items_in == 1 and result.items_out == 1
    assert [f["appProperties"]["newsdeskDraftId"] for f in fake.docs_of_mime(DOC_MIME)] == ["draft-0003"]


def test_editor_list_with_a_non_address_is_refused_before_anything_is_shared(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    config = google_config(tmp_path, fake, credentials_file=write_service_account(fake, tmp_path / "sa.json"),
                           editors=["ana@newsroom.example", "anyone"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    insert_draft(ledger, *make_draft())
    result = publish(config, ledger)
    assert "not email addresses" in result.errors[0] and "'anyone'" in result.errors[0]
    assert fake.calls_to("drive.permissions.create") == []
    assert draft_row(ledger, "draft-0001").state == "checked"


# --- the write rate limiter ----------------------------------------------------------------------


def test_write_rate_limiter_waits_once_the_minute_is_full():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limiter = WriteRateLimiter(per_minute=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.acquire()
        now[0] += 1.0
    assert slept == []
    limiter.acquire()            # 4th write at t=3: the first left the window at t=60
    assert slept == [57.0]
    now[0] += 120
    limiter.acquire()
    assert slept == [57.0]


def test_every_google_write_passes_the_rate_limiter(setup, fake):
    config, ledger = setup
    insert_draft(ledger, *make_draft())
    limiter = WriteRateLimiter(per_minute=1000)
    publish(config, ledger, limiter=limiter)
    writes = [c for c in fake.calls if c.method in (
        "drive.files.create", "docs.documents.batchUpdate", "drive.permissions.create", "drive.files.update")]
    assert len(limiter.recent) == len(writes) == 5   # create, 2 editors, 2 batchUpdates (article, second tab)


# --- the fake keeps the API's rules --------------------------------------------------------------


def test_fake_rejects_what_the_real_api_rejects(setup, fake):
    config, _ = setup
    docs, drive = build_services(config, load_credentials(config))
    file = drive.files().create(body={"name": "x", "mimeType": DOC_MIME, "parents": [FOLDER]}, fields="id").execute()
    doc_id = file["id"]
    docs.documents().batchUpdate(documentId=doc_id, body={"requests": [
        {"insertText": {"location": {"index": 1}, "text": "a😀b"}}]}).execute()

    def status(requests) -> tuple[int, str]:
        with pytest.raises(HttpError) as caught:
            docs.documents().batchUpdate(documentId=doc_id, body={"requests": requests}).execute()
        return caught.value.status_code, caught.value.reason

    assert status([{"insertText": {"location": {"index": 3}, "text": "x"}}])[0] == 400      # inside the surrogate pair
    assert status([{"insertText": {"location": {"index": 7}, "text": "x"}}])[0] == 400      # past the body
    assert status([{"deleteContentRange": {"range": {"startIndex": 1, "endIndex": 6}}}])[0] == 400  # final newline
    assert "Unknown name" in status([{"insertText": {"location": {"index": 1}, "txt": "x"}}])[1]
    assert status([{"updateTextStyle": {"range": {"startIndex": 1, "endIndex": 2}, "textStyle": {"bold": "yes"},
                                        "fields": "bold"}}])[0] == 400
    # A failed batch changes nothing, even when its first request was fine.
    assert status([{"insertText": {"location": {"index": 1}, "text": "z"}},
                   {"deleteContentRange": {"range": {"startIndex": 1, "endIndex": 99}}}])[0] == 400
    assert fake.documents[doc_id].text() == "a😀b\n"
    with pytest.raises(HttpError) as caught:
        drive.files().update(fileId=doc_id, body={"parents": [APPROVED]}).execute()
    assert caught.value.status_code == 403
    with pytest.raises(HttpError) as caught:
        drive.files().list(q="name matches 'x'").execute()
    assert caught.value.status_code == 400


def test_a_document_deleted_in_drive_is_made_again_on_republish(setup, fake):
    config, ledger = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish(config, ledger)
    gone = publication_row(ledger, draft.id).doc_id
    del fake.files[gone]
    set_draft(ledger, draft.id, state="checked", factcheck=None)

    result = publish(config, ledger)

    assert result.errors == [] and result.notes["created"] == 1
    [file] = fake.docs_of_mime(DOC_MIME)
    assert file["id"] != gone and publication_row(ledger, draft.id).doc_id == file["id"]
    assert sorted(p["emailAddress"] for p in fake.permissions[file["id"]]) == EDITORS


# --- UTF-16 indices, for any text -------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.services.gdocs import clean_text, content_requests, layout_draft  # noqa: E402
from tests.fakes.google_server import FakeDocument  # noqa: E402

_pieces = st.sampled_from(list("abc XYZ,.-'") + ["é", "ß", "東", "€", "😀", "🚀", "𝔘", "👩‍💻", "\u0301", "\t", "\n", "\ue000"])
_words = st.lists(_pieces, min_size=1, max_size=30).map("".join).filter(clean_text)


@settings(max_examples=40, deadline=None)
@given(headline=_words, lead=_words, body=st.lists(_words, min_size=1, max_size=3), claim_at=st.integers(0, 2))
def test_styles_land_on_their_text_whatever_the_characters(headline, lead, body, claim_at):
    draft, _ = make_draft()
    article = draft.article.model_copy(update={
        "headline": headline, "lead": lead, "body": [Paragraph(text=f"{n}) {t}", citations=[1]) for n, t in enumerate(body)],   # each one unique
    })
    blocks = layout_draft(draft.model_copy(update={"article": article}), None)
    target = blocks[3 + min(claim_at, len(body) - 1)]
    report = FactCheckReport(draft_id=draft.id, verdicts=[ClaimVerdict(
        claim=Claim(id="c", text=target.text, start=0, end=1), verdict="contradicted")])
    blocks = layout_draft(draft.model_copy(update={"article": article}), report)

    document = FakeDocument("d", "t")
    for index, request in enumerate(content_requests(blocks)):
        document.apply(request, f"requests[{index}]")
    # And once more over the first version, as a republish does.
    end = document.end_index
    for index, request in enumerate(content_requests(blocks, existing_end=end)):
        document.apply(request, f"requests[{index}]")

    paras = paragraphs(document.to_json())
    assert [p["text"] for p in paras] == [b.text for b in blocks]
    assert [p["style"] for p in paras] == [b.style for b in blocks]
    assert [p["list"] for p in paras] == [b.list_kind for b in blocks]
    assert styled(paras, "bold")[0] == blocks[2].text
    highlighted = [p["text"] for p in paras if any("backgroundColor" in r["textStyle"] and r["content"].strip() for r in p["runs"])]
    assert target.text in highlighted
