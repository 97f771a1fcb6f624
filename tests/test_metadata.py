"""Publishing metadata (issue 19): slug, meta description, tags and a suggested image, made from the draft, shown at the
top of the document and the outbox files, validated per template, and read back from what the editor approved."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from tenacity import wait_none

from agents.publisher import build_services, load_credentials, publish_ready, sync_approvals
from agents.writer import extractive_draft
from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.services.gdocs import article_from_blocks, layout_draft
from pipeline.core.ledger import Ledger
from pipeline.text.metadata import build_meta, describe, header_lines, meta_from_lines, slugify, validate_meta, with_meta
from pipeline.core.models import DraftState, ImageSuggestion, PublishMeta, ResearchPack
from pipeline.services.outbox import parse_markdown
from pipeline.text.templates import MetadataRules, TemplateError, load_template, load_templates
from tests.test_language import korvex_sources, korvex_story
from tests.test_publisher import (  # noqa: F401  (fixtures)
    APPROVED,
    FOLDER,
    fake,
    make_draft,
    no_regional_access_boundary_lookup,
    publication_row,
    setup,
)
from tests.test_sync import replace_in_document

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = load_templates(ROOT / "templates")
OG = {"og:image": "/img/2026/11/korvex-vault.jpg", "og:site_name": "Chain Ledger Daily"}


def korvex_pack(og: dict | None = None) -> ResearchPack:
    sources = korvex_sources()
    sources[0] = sources[0].model_copy(update={"og": OG if og is None else og})
    return ResearchPack(story_key="korvex", sources=sources, budget_tokens=8000, used_tokens=3000, language="en")


def korvex_draft(og: dict | None = None):
    pack = korvex_pack(og)
    draft = extractive_draft(korvex_story(pack.sources), pack, TEMPLATES["news"])
    return with_meta(draft, ["security"], pack.sources, TEMPLATES["news"].metadata, "en"), pack


def test_a_draft_gets_a_slug_a_description_from_its_lead_tags_and_its_source_s_share_image():
    draft, pack = korvex_draft()
    meta = draft.meta

    assert draft.state == DraftState.drafted, draft.violations
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", meta.slug) and len(meta.slug) <= 60
    assert meta.slug == slugify(draft.article.headline, 60) and meta.slug.startswith("korvex")
    assert 0 < len(meta.description) <= 155
    assert draft.article.lead.startswith(meta.description.removesuffix("…"))
    # Topics first, then the story's actors as the sources write them; nothing from the German source's nouns.
    assert meta.tags[0] == "security" and "Korvex" in meta.tags and "Marta Lindqvist" in meta.tags
    assert not {"Millionen Dollar", "Hot Wallets", "Angreifer"} & set(meta.tags)
    assert meta.image == ImageSuggestion(url="https://chainledger.example/img/2026/11/korvex-vault.jpg",
                                         credit="Chain Ledger Daily", source_n=1)
    assert validate_meta(meta, TEMPLATES["news"].metadata, pack.sources) == []


def test_no_share_image_means_no_suggestion_and_a_template_can_turn_images_off():
    draft, _ = korvex_draft(og={})
    assert draft.meta.image is None and draft.state == DraftState.drafted
    pack = korvex_pack()
    rules = MetadataRules(image=False)
    assert build_meta(draft.article, ["security"], pack.sources, rules).image is None


@pytest.mark.parametrize("lead, expected", [
    ("Short lead. [1]", "Short lead."),
    ("Korvex said attackers drained $48.2 million from its hot wallets early on Wednesday, the largest exchange breach "
     "of the year. Withdrawals stay paused while the exchange rebuilds its wallets with new keys.",
     "Korvex said attackers drained $48.2 million from its hot wallets early on Wednesday, the largest exchange breach "
     "of the year."),
    ("Korvex, a Lisbon-based cryptocurrency exchange with about 1.3 million registered users, said attackers drained "
     "$48.2 million from its hot wallets early on Wednesday, November 18, in the largest exchange breach of the year.",
     "Korvex, a Lisbon-based cryptocurrency exchange with about 1.3 million registered users, said attackers drained "
     "$48.2 million from its hot wallets early…"),
    # An abbreviation's full stop ends no sentence: cut at a word, never after "U.S.", nor before a dangling "on"
    ("Lattice Protocol Inc. must pay a $12.5 million civil penalty over token sales to institutional investors, "
     "U.S. District Judge Harriet Coleman ruled on Friday, while rejecting the Federal Digital Markets Commission's "
     "broader claim.",
     "Lattice Protocol Inc. must pay a $12.5 million civil penalty over token sales to institutional investors, "
     "U.S. District Judge Harriet Coleman ruled…"),
])
def test_the_description_is_the_lead_cut_at_a_sentence_else_a_word_within_155_characters(lead, expected):
    assert describe(lead, 155) == expected and len(expected) <= 155


def test_validation_names_every_metadata_problem():
    pack = korvex_pack()
    meta = PublishMeta(slug="Korvex Hack!", description="x" * 160 + " [1]", tags=[],
                       image=ImageSuggestion(url="https://elsewhere.example/hotlinked.png", credit="someone"))
    problems = validate_meta(meta, TEMPLATES["news"].metadata, pack.sources)
    assert problems == [
        "slug 'Korvex Hack!' must be lower-case letters and digits joined by single hyphens",
        "meta description is 164 characters; the limit is 155",
        "meta description must be one line of plain text (no [n] markers, no URLs)",
        "tags has 0; it must have 1–6",
        "suggested image 'https://elsewhere.example/hotlinked.png' is not the share image (og:image) of a story source page",
    ]


def test_a_template_s_metadata_rules_are_checked_when_it_loads(tmp_path):
    text = (ROOT / "templates" / "news.toml").read_text(encoding="utf-8").replace("description_max_chars = 155", "description_max_chars = 200")
    (tmp_path / "news.toml").write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError) as caught:
        load_template(tmp_path / "news.toml")
    assert "'metadata.description_max_chars' = 200" in str(caught.value)


# --- the document and the outbox ----------------------------------------------------------------


def test_the_document_header_shows_the_metadata_as_text_and_the_article_read_back_ignores_it():
    draft, _ = korvex_draft()
    blocks = layout_draft(draft, None)
    header = [b for b in blocks if b.role == "cms"]
    assert [b.text for b in header] == header_lines(draft.meta) and len(header) == 4
    assert blocks.index(header[0]) == 2 and all(b.style == "HEADING_6" for b in header)
    image = header[-1]
    assert image.text == "Suggested image: https://chainledger.example/img/2026/11/korvex-vault.jpg — credit: Chain Ledger Daily"
    assert image.spans == []   # shown as text: never inserted, never linked
    # An editor who cleared the header's style does not turn it into article text.
    for b in header:
        b.style = "NORMAL_TEXT"
    assert article_from_blocks(blocks, draft.article).body == draft.article.body


def insert_checked(ledger: Ledger, draft, pack: ResearchPack, draft_id: str = "d-meta-1") -> None:
    now = datetime(2026, 11, 18, 18, 0, tzinfo=timezone.utc)
    values = draft.model_dump(mode="json", exclude={"created"})
    values.update(id=draft_id, state="checked", research=pack.model_dump(mode="json"), created=now, updated=now)
    with ledger.begin() as connection:
        connection.execute(insert(schema.drafts).values(**values))


def approval(ledger: Ledger):
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.approvals)).one()


def test_outbox_files_carry_the_metadata_and_an_editor_s_changes_come_back_on_sync(tmp_path):
    config = parse_config({"publishing": {"target": "local", "outbox": "out"}}, root=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    draft, pack = korvex_draft()
    insert_checked(ledger, draft, pack)
    assert publish_ready(config, ledger).errors == []
    [md] = (tmp_path / "out").glob("*.md")
    text = md.read_text(encoding="utf-8")
    for line in header_lines(draft.meta):
        assert f"###### {line}" in text.replace("\\", "")
    html = md.with_suffix(".html").read_text(encoding="utf-8")
    assert "korvex-vault.jpg" in html and "<img" not in html and 'href="https://chainledger.example/img' not in html

    edited = text.replace(f"Slug: {draft.meta.slug}", "Slug: korvex-hack-48-million").replace(
        "Tags: security, Korvex,", "Tags: security, exchanges,")
    (tmp_path / "out" / "approved").mkdir()
    (tmp_path / "out" / "approved" / md.name).write_text(edited, encoding="utf-8")
    result = sync_approvals(config, ledger)

    assert result.errors == [] and result.items_out == 1
    row = approval(ledger)
    meta = PublishMeta.model_validate(row.meta)
    assert meta.slug == "korvex-hack-48-million" and meta.tags[:2] == ["security", "exchanges"]
    assert meta.description == draft.meta.description and meta.image == draft.meta.image
    assert row.article["body"] == draft.article.model_dump(mode="json")["body"]
    with ledger.engine.connect() as connection:
        assert connection.execute(select(schema.drafts.c.state_reason)).scalar() is None


def test_an_edited_slug_that_breaks_the_template_is_approved_and_named_in_the_draft_s_reason(tmp_path):
    config = parse_config({"publishing": {"target": "local", "outbox": "out"}}, root=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    draft, pack = korvex_draft()
    insert_checked(ledger, draft, pack)
    publish_ready(config, ledger)
    [md] = (tmp_path / "out").glob("*.md")
    edited = md.read_text(encoding="utf-8").replace(f"Slug: {draft.meta.slug}", "Slug: Korvex Hack")
    (tmp_path / "out" / "approved").mkdir()
    (tmp_path / "out" / "approved" / md.name).write_text(edited, encoding="utf-8")

    assert sync_approvals(config, ledger).items_out == 1
    assert PublishMeta.model_validate(approval(ledger).meta).slug == "Korvex Hack"
    with ledger.engine.connect() as connection:
        state, reason = connection.execute(select(schema.drafts.c.state, schema.drafts.c.state_reason)).one()
    assert state == "approved"
    assert reason == ("approved; the edited metadata breaks the template: "
                      "slug 'Korvex Hack' must be lower-case letters and digits joined by single hyphens")


def test_google_document_header_is_read_back_when_the_editor_changed_it(setup, fake):
    config, ledger = setup
    draft, pack = korvex_draft()
    insert_checked(ledger, draft, pack)
    assert publish_ready(config, ledger, retry_wait=wait_none()).errors == []
    doc_id = publication_row(ledger, "d-meta-1").doc_id
    docs, drive = build_services(config, load_credentials(config))
    replace_in_document(docs, doc_id, f"Slug: {draft.meta.slug}", "Slug: korvex-breach")
    replace_in_document(docs, doc_id, draft.meta.image.url, "https://elsewhere.example/a.png")
    drive.files().update(fileId=doc_id, addParents=APPROVED, removeParents=FOLDER, supportsAllDrives=True).execute()

    result = sync_approvals(config, ledger, retry_wait=wait_none())

    assert result.errors == [] and result.items_out == 1
    meta = PublishMeta.model_validate(approval(ledger).meta)
    assert meta.slug == "korvex-breach" and meta.tags == draft.meta.tags
    assert meta.image == ImageSuggestion(url="https://elsewhere.example/a.png", credit="Chain Ledger Daily")
    with ledger.engine.connect() as connection:
        reason = connection.execute(select(schema.drafts.c.state_reason)).scalar()
    assert "is not the share image (og:image) of a story source page" in reason


def test_header_lines_round_trip_and_a_deleted_image_line_drops_the_suggestion():
    draft, _ = korvex_draft()
    lines = header_lines(draft.meta)
    assert meta_from_lines(lines, draft.meta) == draft.meta
    assert meta_from_lines(lines[:3], draft.meta).image is None
    assert meta_from_lines([], draft.meta) == draft.meta   # no header at all: the draft's stands
    _, blocks = parse_markdown("\n\n".join(f"###### {line}" for line in lines))
    assert meta_from_lines([b.text for b in blocks], draft.meta) == draft.meta
