"""The model path in another language (issue 19): sources in other languages are used, quotations from them are
translated and marked "(translated)", and the fact-check keeps and checks the original words."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents.fact_checker import EvidenceIndex, check_article, sources_from_pack
from agents.writer import extractive_draft, render_writer_prompt, write_draft
from pipeline.core.config import Config
from pipeline.core.models import DraftState, Paragraph, ResearchPack, Translation
from pipeline.services.llm import Gateway, strict_json_schema
from pipeline.services.testing import TestModel
from pipeline.text.templates import article_model, load_templates, validate_article
from tests.test_language import korvex_sources, korvex_story

TEMPLATES = load_templates(Path(__file__).resolve().parent.parent / "templates")
ORIGINAL = "Alle Kundenguthaben werden vollständig ersetzt"
TRANSLATED = "All customer balances will be replaced in full"
QUOTED = f"“{TRANSLATED}” (translated), Lindqvist said."


def pack() -> ResearchPack:
    return ResearchPack(story_key="korvex", sources=korvex_sources(), budget_tokens=8000, used_tokens=3000, language="en")


def translated_article(original: str = ORIGINAL, marked: bool = True, listed: bool = True):
    """A valid English draft (the extractive writer's) with a quotation translated from the German source [3]."""
    p = pack()
    base = extractive_draft(korvex_story(p.sources), p, TEMPLATES["news"]).article
    sentence = QUOTED if marked else QUOTED.replace(" (translated)", "")
    body = [*base.body[:-1], Paragraph(text=f"{base.body[-1].text} {sentence}", citations=sorted({*base.body[-1].citations, 3}))]
    translations = [Translation(text=TRANSLATED, original=original, source_n=3, language="de")] if listed else []
    from pipeline.text.templates import source_refs

    article = base.model_copy(update={"body": body, "translations": translations})
    return article.model_copy(update={"sources": source_refs(article, p.sources)}), p


def test_the_writer_is_told_to_write_in_the_newsroom_s_language_and_which_sources_to_translate():
    p = pack()
    prompt = render_writer_prompt(korvex_story(p.sources), p, TEMPLATES["news"])
    system, user = prompt.messages[0]["content"], prompt.messages[1]["content"]
    assert "Write every word of the article in English (en), whatever language a source is written in" in system
    assert "immediately followed by \"(translated)\"" in system and "\"translations\"" in system
    german = user.split('<source n="3"')[1].split("</source>")[0]
    assert "Written in German (de): translate what you use." in german
    assert "Written in" not in user.split('<source n="3"')[0]
    # A German newsroom is told to write German, and to translate the English sources instead.
    prompt_de = render_writer_prompt(korvex_story(p.sources), p.model_copy(update={"language": "de"}), TEMPLATES["news"])
    assert "Write every word of the article in German (de)" in prompt_de.messages[0]["content"]
    assert prompt_de.messages[1]["content"].count("Written in English (en): translate what you use.") == 2


def test_the_schema_lets_a_translation_name_only_a_source_in_another_language():
    p = pack()
    schema = strict_json_schema(article_model(TEMPLATES["news"], p.sources, "en"))
    [translation] = [v for k, v in schema["$defs"].items() if k.endswith("Translation")]
    assert translation["properties"]["source_n"]["enum"] == [3]
    assert schema["properties"]["translations"]["maxItems"] == 4
    english_only = [s for s in p.sources if s.language == "en"]
    assert strict_json_schema(article_model(TEMPLATES["news"], english_only, "en"))["properties"]["translations"]["maxItems"] == 0


def test_a_translated_quotation_must_be_marked_listed_and_its_original_verbatim():
    article, p = translated_article()
    assert validate_article(article, TEMPLATES["news"], p.sources, "en") == []
    wrong, _ = translated_article(original="Alle Kunden bekommen ihr Geld zurück")
    assert validate_article(wrong, TEMPLATES["news"], p.sources, "en") == [
        "translation 1: its original \"Alle Kunden bekommen ihr Geld zurück\" is not word for word in source [3]"]
    unmarked, _ = translated_article(marked=False)
    assert validate_article(unmarked, TEMPLATES["news"], p.sources, "en") == [
        f"translation 1 (\"{TRANSLATED}\") must stand in the article in quotation marks followed by \"(translated)\""]
    unlisted, _ = translated_article(listed=False)
    assert validate_article(unlisted, TEMPLATES["news"], p.sources, "en") == [
        "the article marks 1 quotation(s) as translated but lists 0 in translations"]
    from_english = article.model_copy(update={"translations": [article.translations[0].model_copy(update={"source_n": 1})]})
    assert "translation 1 is from source [1], which is already in the article's language (en)" in validate_article(
        from_english, TEMPLATES["news"], p.sources, "en")


def test_with_a_model_the_translated_draft_is_stored_with_its_translations(ledger):
    article, p = translated_article()
    model = TestModel(function=lambda request: article)
    gateway = Gateway(Config(), ledger, backend=model)
    draft = asyncio.run(write_draft(korvex_story(p.sources), p, TEMPLATES["news"], gateway))
    assert draft.state == DraftState.drafted, draft.violations
    assert draft.method == "llm" and draft.article.translations == article.translations
    assert "(translated)" in " ".join(par.text for par in draft.article.body)


def test_the_check_judges_a_translated_quotation_by_its_original_and_keeps_the_original_as_evidence():
    article, p = translated_article()
    evidence = EvidenceIndex(sources_from_pack(p.sources), language="en")
    report = asyncio.run(check_article(article, evidence))
    [verdict] = [v for v in report.verdicts if TRANSLATED in v.claim.text]
    assert verdict.verdict == "supported" and verdict.source_n == 3
    assert f"original (de) [3]: “{ORIGINAL}”" in verdict.evidence
    assert not [v for v in report.verdicts if v.verdict == "wrong_language"]

    # A "translation" whose original is not in the source is flagged, with the reason.
    invented, _ = translated_article(original="Alle Kunden bekommen ihr Geld zurück")
    report = asyncio.run(check_article(invented, EvidenceIndex(sources_from_pack(p.sources), language="en")))
    [verdict] = [v for v in report.verdicts if TRANSLATED in v.claim.text]
    assert verdict.verdict != "supported"
    assert any("translated quotation: its original “Alle Kunden bekommen ihr Geld zurück” is not word for word in source [3]"
               in f.detail for f in verdict.failures)
    # Without the translations list the same sentence is an unverified quotation, as before.
    bare = article.model_copy(update={"translations": []})
    report = asyncio.run(check_article(bare, EvidenceIndex(sources_from_pack(p.sources), language="en")))
    [verdict] = [v for v in report.verdicts if TRANSLATED in v.claim.text]
    assert verdict.verdict != "supported" and any(f.type == "quote" for f in verdict.failures)
