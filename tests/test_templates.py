"""Article templates: loading with clear errors, choosing per story, and validation of every rule."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

import yaml

from pipeline.core.models import Article, Insight, Paragraph, SourceDoc, SourceRef, Story
from pipeline.text.templates import (
    TemplateError,
    article_json_schema,
    article_model,
    choose_template,
    count_words,
    load_template,
    load_templates,
    prune_uncited_sources,
    source_refs,
    validate_article,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
HOUSE_ARTICLES = sorted((ROOT / "examples" / "articles").glob("*.md"))
T = datetime(2025, 3, 14, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def templates():
    return load_templates(TEMPLATES)


@pytest.fixture
def news(templates):
    return templates["news"]


def sentence(words: int, word: str = "exchange") -> str:
    """A sentence of exactly `words` words."""
    return " ".join(["Lumen"] + [word] * (words - 2) + ["today."])


SOURCES = [
    SourceDoc(n=1, item_id="a", title="Lumen hacked", outlet="CoinWire", published=T, url="https://coinwire.example/lumen", text="..."),
    SourceDoc(n=2, item_id="b", title="Lumen halts withdrawals", outlet="LedgerLine", published=T, url="https://ledgerline.example/lumen", text="..."),
    SourceDoc(n=3, item_id="c", title="Regulator reacts", outlet="BlockDesk", published=T, url="https://blockdesk.example/mas", text="..."),
]


def ref(n: int) -> SourceRef:
    s = SOURCES[n - 1]
    return SourceRef(n=n, title=s.title, outlet=s.outlet, url=s.url, published=s.published)


def valid_news() -> Article:
    return Article(
        headline="Lumen Exchange loses $48 million in hot wallet hack",
        lead=sentence(20) + " " + sentence(15),
        body=[
            Paragraph(text=sentence(40), citations=[1]),
            Paragraph(text=sentence(30), citations=[2]),
            Paragraph(text=sentence(50), citations=[1, 3]),
        ],
        insights=[Insight(text=sentence(12), citations=[2]), Insight(text=sentence(20), citations=[3])],
        sources=[ref(1), ref(2), ref(3)],
    )


def story(outlets: int, topics: list[str] | None = None) -> Story:
    return Story(
        key="s1", title="Lumen hack", item_ids=["a"], sources=["CoinWire", "LedgerLine", "BlockDesk", "Wire4"][:outlets],
        topics=topics or ["security"], score=1.0, first_published=T, last_published=T,
    )


# --- loading ---------------------------------------------------------------------


def test_shipped_templates_load_with_their_rules(templates):
    assert {"news", "analysis"} <= set(templates)
    news, analysis = templates["news"], templates["analysis"]
    assert news.headline.max_chars == 90 and news.lead.max_sentences == 2
    assert analysis.body.min_paragraphs > news.body.min_paragraphs
    assert news.tone.strip() and analysis.tone.strip()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
[headline]
max_chars = 80
[lead]
max_sentences = 2
max_words = 40
[body]
min_paragraphs = 2
max_paragraphs = 4
min_words = 20
max_words = 80
[insights]
min_count = 1
max_count = 3
max_words = 25
"""


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "brief", MINIMAL.replace("max_chars = 80", "max_chars = 80\nmax_char = 70"))
    with pytest.raises(TemplateError) as err:
        load_template(path)
    assert str(path) in str(err.value) and "'headline.max_char' is not a known key" in str(err.value)


def test_inverted_range_names_the_key(tmp_path):
    path = write(tmp_path, "brief", MINIMAL.replace("min_words = 20", "min_words = 90"))
    with pytest.raises(TemplateError) as err:
        load_template(path)
    assert "'body'" in str(err.value) and "min_words (90) is above max_words (80)" in str(err.value)


def test_wrong_type_and_missing_section_are_reported(tmp_path):
    path = write(tmp_path, "brief", MINIMAL.replace("max_chars = 80", 'max_chars = "80"').replace("[insights]", "[unused]"))
    with pytest.raises(TemplateError) as err:
        load_template(path)
    message = str(err.value)
    assert "'headline.max_chars' = '80'" in message
    assert "'insights' is required" in message
    assert "'unused' is not a known key" in message


def test_name_must_match_file_and_topics_must_exist(tmp_path):
    with pytest.raises(TemplateError, match="must match the file name"):
        load_template(write(tmp_path, "brief", 'name = "other"\n' + MINIMAL))
    path = write(tmp_path, "brief", MINIMAL + '[selection]\ntopics = ["defi", "memes"]\n')
    with pytest.raises(TemplateError, match=r"unknown topic\(s\) \['memes'\]"):
        load_template(path, known_topics=["defi", "security"])
    assert load_template(path, known_topics=["defi", "memes"]).selection.topics == ["defi", "memes"]


def test_only_one_default_template(tmp_path):
    write(tmp_path, "a", MINIMAL + "[selection]\ndefault = true\n")
    write(tmp_path, "b", MINIMAL + "[selection]\ndefault = true\n")
    with pytest.raises(TemplateError, match="only one template may set 'selection.default = true'"):
        load_templates(tmp_path)


def test_missing_folder_and_bad_toml(tmp_path):
    with pytest.raises(TemplateError, match="templates folder not found"):
        load_templates(tmp_path / "nope")
    with pytest.raises(TemplateError, match="not valid TOML"):
        load_template(write(tmp_path, "broken", "[headline\n"))


# --- choosing -----------------------------------------------------------------------


def test_story_size_picks_news_or_analysis(templates):
    assert choose_template(story(1), templates).name == "news"
    assert choose_template(story(2), templates).name == "news"
    assert choose_template(story(3), templates).name == "analysis"


def test_topic_template_wins_by_priority_only_for_its_topics(tmp_path, templates):
    specs = dict(templates)
    specs["regwatch"] = load_template(write(tmp_path, "regwatch", MINIMAL + '[selection]\ntopics = ["regulation"]\npriority = 50\n'))
    assert choose_template(story(1, ["regulation"]), specs).name == "regwatch"
    assert choose_template(story(3, ["security"]), specs).name == "analysis"


def test_no_fitting_template_and_no_default_is_a_clear_error(tmp_path):
    only = {"big": load_template(write(tmp_path, "big", MINIMAL + "[selection]\nmin_sources = 5\n"))}
    with pytest.raises(TemplateError, match=r"no template fits story 's1' .*1 source"):
        choose_template(story(1), only)


# --- validation: every rule fails and passes ----------------------------------------------


def test_valid_article_has_no_violations(news):
    assert validate_article(valid_news(), news, SOURCES) == []


def test_headline_length(news):
    long = valid_news().model_copy(update={"headline": "x" * 95})
    assert validate_article(long, news, SOURCES) == ["headline is 95 characters; the limit is 90"]
    exact = valid_news().model_copy(update={"headline": "x" * 90})
    assert validate_article(exact, news, SOURCES) == []


def test_lead_sentence_count_and_words(news):
    three = valid_news().model_copy(update={"lead": " ".join([sentence(10)] * 3)})
    assert validate_article(three, news, SOURCES) == ["lead has 3 sentences; it must have 1–2"]
    wordy = valid_news().model_copy(update={"lead": sentence(51)})
    assert validate_article(wordy, news, SOURCES) == ["lead has 51 words; the limit is 50"]
    empty = valid_news().model_copy(update={"lead": ""})
    assert validate_article(empty, news, SOURCES) == ["lead has 0 sentences; it must have 1–2"]
    assert validate_article(valid_news().model_copy(update={"lead": sentence(50)}), news, SOURCES) == []


def test_body_paragraph_count(news):
    article = valid_news()
    two = article.model_copy(update={"body": article.body[:2]})
    assert validate_article(two, news, SOURCES) == ["body has 2 paragraphs; it must have 3–5"]
    six = article.model_copy(update={"body": article.body * 2})
    assert validate_article(six, news, SOURCES) == ["body has 6 paragraphs; it must have 3–5"]


def test_body_paragraph_words_and_citation(news):
    article = valid_news()
    body = list(article.body)
    body[1] = Paragraph(text=sentence(7), citations=[2])
    body[2] = Paragraph(text=sentence(91), citations=[1, 3])
    assert validate_article(article.model_copy(update={"body": body}), news, SOURCES) == [
        "body paragraph 2 has 7 words; it must have 8–90",
        "body paragraph 3 has 91 words; it must have 8–90",
    ]
    body[1], body[2] = Paragraph(text=sentence(8), citations=[2]), Paragraph(text=sentence(90), citations=[1, 3])
    assert validate_article(article.model_copy(update={"body": body}), news, SOURCES) == []
    body = list(article.body)
    body[0] = Paragraph(text=sentence(40), citations=[])
    # Source 1 is still cited by paragraph 3, so only the missing citation is reported.
    assert validate_article(article.model_copy(update={"body": body}), news, SOURCES) == [
        "body paragraph 1 cites no source; every body paragraph must cite at least 1 source [n]"
    ]


def test_inline_markers_count_as_citations_but_not_as_words(news):
    article = valid_news()
    body = list(article.body)
    body[0] = Paragraph(text=sentence(90) + " [1]", citations=[])
    assert count_words(body[0].text) == 90
    assert validate_article(article.model_copy(update={"body": body}), news, SOURCES) == []


def test_insight_count_words_and_citation(news):
    article = valid_news()
    one = article.model_copy(update={"insights": article.insights[:1]})
    assert validate_article(prune_uncited_sources(one), news, SOURCES) == ["insights has 1 item; it must have 2–4"]
    long = article.model_copy(update={"insights": [Insight(text=sentence(31), citations=[2]), article.insights[1]]})
    assert validate_article(long, news, SOURCES) == ["insight 1 has 31 words; the limit is 30"]
    uncited = article.model_copy(update={"insights": [Insight(text=sentence(10), citations=[]), article.insights[1]]})
    assert validate_article(uncited, news, SOURCES) == ["insight 1 cites no source; every insight must cite at least one source [n]"]


# --- citation integrity ---------------------------------------------------------------------


def test_unknown_source_number_is_flagged_in_lists_and_inline_markers(news):
    article = valid_news()
    body = list(article.body)
    body[0] = Paragraph(text=sentence(40), citations=[1, 7])
    insights = [Insight(text=sentence(10) + " [9]", citations=[2]), article.insights[1]]
    problems = validate_article(article.model_copy(update={"body": body, "insights": insights}), news, SOURCES)
    assert problems == [
        "body paragraph 1 cites [7], but there is no source 7 (provided sources: 1, 2, 3)",
        "insight 1 cites [9], but there is no source 9 (provided sources: 1, 2, 3)",
    ]


def test_uncited_sources_are_flagged_then_pruned(news):
    article = valid_news()
    body = [Paragraph(text=sentence(40), citations=[1]), Paragraph(text=sentence(30), citations=[2]), Paragraph(text=sentence(50), citations=[1])]
    insights = [Insight(text=sentence(12), citations=[2]), Insight(text=sentence(20), citations=[1])]
    stale = article.model_copy(update={"body": body, "insights": insights})
    assert validate_article(stale, news, SOURCES) == ["source [3] is listed but never cited; cite it or drop it from the sources list"]
    pruned = prune_uncited_sources(stale)
    assert [r.n for r in pruned.sources] == [1, 2]
    assert validate_article(pruned, news, SOURCES) == []


def test_cited_source_missing_from_list(news):
    article = valid_news().model_copy(update={"sources": [ref(1), ref(2)]})
    assert validate_article(article, news, SOURCES) == ["source [3] is cited but missing from the sources list"]


def test_sources_list_must_carry_the_provided_urls(news):
    wrong = ref(2).model_copy(update={"url": "https://phish.example/lumen"})
    article = valid_news().model_copy(update={"sources": [ref(1), wrong, ref(3)]})
    assert validate_article(article, news, SOURCES) == [
        "sources list entry [2] has URL 'https://phish.example/lumen', but source 2 is 'https://ledgerline.example/lumen'"
    ]
    # Trailing slash and scheme case are the same URL.
    same = ref(2).model_copy(update={"url": "HTTPS://ledgerline.example/lumen/"})
    assert validate_article(valid_news().model_copy(update={"sources": [ref(1), same, ref(3)]}), news, SOURCES) == []


def test_sources_list_entry_for_an_unprovided_source(news):
    ghost = SourceRef(n=5, title="Ghost", outlet="Nowhere", url="https://nowhere.example/x")
    article = valid_news().model_copy(update={"sources": [ref(1), ref(2), ref(3), ghost]})
    assert validate_article(article, news, SOURCES) == [
        "sources list entry [5] is not a provided source (provided sources: 1, 2, 3)",
        "source [5] is listed but never cited; cite it or drop it from the sources list",
    ]


def test_foreign_urls_in_text_are_flagged_source_urls_are_not(news):
    article = valid_news()
    body = list(article.body)
    body[0] = Paragraph(text=sentence(30) + " Claim your airdrop at https://claim-lumen.example/now.", citations=[1])
    body[1] = Paragraph(text=sentence(30) + " The statement is at https://ledgerline.example/lumen.", citations=[2])
    problems = validate_article(article.model_copy(update={"body": body, "lead": sentence(20) + " Details at www.evil.example/x today."}), news, SOURCES)
    assert problems == [
        "lead contains URL 'www.evil.example/x', which is not a source URL; only the sources' own URLs may appear",
        "body paragraph 1 contains URL 'https://claim-lumen.example/now', which is not a source URL; only the sources' own URLs may appear",
    ]


def test_duplicate_sources_list_entry(news):
    article = valid_news().model_copy(update={"sources": [ref(1), ref(2), ref(2), ref(3)]})
    assert validate_article(article, news, SOURCES) == ["sources list has source [2] more than once"]


def house_article(path: Path) -> tuple[str, Article, list[SourceDoc]]:
    """A past article (markdown with front matter, inline [n] markers) as an Article and its sources."""
    _, front, text = path.read_text(encoding="utf-8").split("---\n", 2)
    meta = yaml.safe_load(front)
    prose, _, insight_block = text.partition("## Insights")
    paragraphs = [p.strip() for p in prose.strip().split("\n\n") if p.strip()]
    sources = [SourceDoc(n=i, item_id=str(i), title=s["title"], outlet=s["outlet"], published=T, url=s["url"], text="")
               for i, s in enumerate(meta["sources"], 1)]
    article = Article(
        headline=meta["headline"],
        lead=paragraphs[0],
        body=[Paragraph(text=p, citations=[]) for p in paragraphs[1:]],
        insights=[Insight(text=line[2:].strip(), citations=[]) for line in insight_block.strip().splitlines() if line.startswith("- ")],
        sources=[SourceRef(n=s.n, title=s.title, outlet=s.outlet, url=s.url) for s in sources],
    )
    return meta["template"], article, sources


@pytest.mark.parametrize("path", HOUSE_ARTICLES, ids=lambda p: p.stem)
def test_past_house_style_articles_fit_their_template(path, templates):
    """The templates describe the house style: the articles the writer is fine-tuned on must pass them."""
    template, article, sources = house_article(path)
    assert validate_article(article, templates[template], sources) == []


# --- structured-output schema --------------------------------------------------------------


def test_json_schema_carries_the_item_counts(templates):
    for spec in templates.values():
        schema = article_json_schema(spec)
        body = schema["properties"]["body"]
        insights = schema["properties"]["insights"]
        assert (body["minItems"], body["maxItems"]) == (spec.body.min_paragraphs, spec.body.max_paragraphs)
        assert (insights["minItems"], insights["maxItems"]) == (spec.insights.min_count, spec.insights.max_count)
        paragraph = schema["$defs"][body["items"]["$ref"].rsplit("/", 1)[-1]]
        assert paragraph["properties"]["citations"]["minItems"] == spec.body.min_citations
        assert str(spec.headline.max_chars) in schema["properties"]["headline"]["description"]


def test_derived_model_is_an_article_and_enforces_counts(news):
    model = article_model(news)
    data = valid_news().model_dump()
    assert isinstance(model.model_validate(data), Article)
    data["body"] = data["body"][:2]
    with pytest.raises(ValidationError, match="at least 3 items"):
        model.model_validate(data)


def pack_sources(*numbers: int) -> list[SourceDoc]:
    return [SourceDoc(n=n, item_id=f"i{n}", title=f"Source {n}: \"quoted\" title", outlet=f"Outlet {n}", url=f"https://outlet{n}.example/a",
                      published=datetime(2025, 3, 1, tzinfo=timezone.utc), text="Text.") for n in numbers]


def test_a_schema_filled_blindly_cites_and_lists_only_the_provided_sources(templates):
    """Issue 14: a naive decoder follows the schema and nothing else; citations, the sources list and the counts
    are then always right, and only what JSON schema cannot say (words, sentences) is left to the validator."""
    import random

    from pipeline.services.llm import strict_json_schema
    from tests.fakes.naive_server import fill

    sources = pack_sources(2, 3, 7)
    for spec in templates.values():
        model = article_model(spec, sources)
        assert model is article_model(spec, list(reversed(sources))) and model is not article_model(spec)
        strict = strict_json_schema(model)
        for seed in range(40):
            article = model.model_validate(fill(strict, random.Random(seed)))
            assert {ref.n for ref in article.sources} <= {2, 3, 7}
            assert all((ref.title, ref.outlet, ref.url) == (f"Source {ref.n}: \"quoted\" title", f"Outlet {ref.n}", f"https://outlet{ref.n}.example/a")
                       for ref in article.sources)
            # The writer stores the sources list rebuilt from the citations (duplicates in the model's own list vanish).
            problems = validate_article(article.model_copy(update={"sources": source_refs(article, sources)}), spec, sources)
            assert [p for p in problems if not re.search(r"\b(words?|sentences?)\b", p)] == []


def test_a_pack_smaller_than_the_citation_rule_still_gets_a_satisfiable_schema(templates):
    spec = templates["news"].model_copy(update={"body": templates["news"].body.model_copy(update={"min_citations": 2})})
    schema = article_json_schema(spec, pack_sources(1))
    citations = schema["$defs"]["NewsParagraph"]["properties"]["citations"]
    assert citations["minItems"] <= citations["maxItems"] == 1
    assert article_json_schema(spec)["$defs"]["NewsParagraph"]["properties"]["citations"]["minItems"] == 2
