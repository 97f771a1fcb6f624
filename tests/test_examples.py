"""The bundled sample data under examples/ is what the offline demo and several
stage tests run on, so it has to be well-formed and say what it claims: feeds
parse cleanly, crypto items carry full text (the demo cannot fetch pages), the
documented story groups, duplicates and hostile items really exist, and the
house-style articles follow the article structure the fine-tuning builder expects.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import feedparser
import pytest
import yaml
from bs4 import BeautifulSoup

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FEEDS = EXAMPLES / "feeds"
README = EXAMPLES / "README.md"
URL = re.compile(r"https://[^\s`'\"<>)]+")
WINDOW = (dt.date(2026, 11, 18), dt.date(2026, 11, 22))


def plain_text(html: str) -> str:
    return BeautifulSoup(html, "html.parser").get_text(" ")


def readme_sections() -> dict[str, str]:
    """README body keyed by its level-2 headings."""
    parts = re.split(r"^## (.+)$", README.read_text(encoding="utf-8"), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def readme_links(section: str) -> list[str]:
    return URL.findall(readme_sections()[section])


def readme_story_groups() -> list[list[str]]:
    subsections = re.split(r"^### .+$", readme_sections()["Overlapping story groups"], flags=re.M)[1:]
    return [links for links in (URL.findall(body) for body in subsections) if links]


def without_tracking(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("utm_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture(scope="module")
def feeds() -> dict[str, feedparser.FeedParserDict]:
    return {path.name: feedparser.parse(str(path)) for path in sorted(FEEDS.glob("*.xml"))}


@pytest.fixture(scope="module")
def entries(feeds) -> dict[str, tuple[str, feedparser.FeedParserDict]]:
    """Every entry by its link, with the name of the feed file it came from."""
    by_link = {}
    for name, parsed in feeds.items():
        for entry in parsed.entries:
            assert entry.link not in by_link, f"link {entry.link} appears twice"
            by_link[entry.link] = (name, entry)
    return by_link


def body_text(entry) -> str:
    return plain_text(entry.content[0].value) if entry.get("content") else ""


def test_every_feed_parses_cleanly(feeds):
    for name, parsed in feeds.items():
        assert not parsed.bozo, f"{name}: {parsed.get('bozo_exception')}"
        assert parsed.version in {"rss20", "atom10"}, f"{name}: unexpected format {parsed.version!r}"
        assert parsed.entries, f"{name} has no entries"


def test_sample_set_has_enough_feeds_entries_outlets_and_both_formats(feeds):
    assert len(feeds) >= 4
    assert sum(len(parsed.entries) for parsed in feeds.values()) >= 40
    versions = {parsed.version for parsed in feeds.values()}
    assert {"rss20", "atom10"} <= versions
    assert sum(parsed.version == "rss20" for parsed in feeds.values()) >= 2
    assert len({parsed.feed.title for parsed in feeds.values()}) == len(feeds), "each feed is its own outlet"


def test_every_feed_file_announces_it_is_fictional_sample_data():
    for path in FEEDS.glob("*.xml"):
        head = path.read_text(encoding="utf-8")[:600]
        assert "SAMPLE DATA" in head and "FICTIONAL" in head, f"{path.name} lacks the sample-data notice"


def test_every_link_uses_the_reserved_example_domain(entries):
    for link in entries:
        assert urlsplit(link).hostname.endswith(".example"), link


def test_crypto_items_carry_full_text_and_offbeat_items_are_the_documented_ones(entries):
    offbeat = set(readme_links("Off-beat items"))
    assert len(offbeat) >= 3 and offbeat <= set(entries)
    for link, (name, entry) in entries.items():
        words = len(body_text(entry).split())
        if link in offbeat:
            assert words > 0, f"{link} has no body"
        else:
            assert 150 <= words <= 500, f"{name}: {link} has {words} words of full text"


def test_dates_fall_in_the_demo_window_and_only_documented_items_lack_one(entries):
    undated = {link for link, (_, entry) in entries.items() if not entry.get("published_parsed")}
    assert undated == set(readme_links("Missing dates"))
    for link, (_, entry) in entries.items():
        if link not in undated:
            published = dt.date(*entry.published_parsed[:3])
            assert WINDOW[0] <= published <= WINDOW[1], f"{link} dated {published}"


def test_story_groups_json_matches_readme_and_exists_in_feeds(entries):
    groups = json.loads((EXAMPLES / "story_groups.json").read_text(encoding="utf-8"))
    assert len(groups) >= 5
    assert [sorted(g["links"]) for g in groups] == [sorted(links) for links in readme_story_groups()]
    seen: set[str] = set()
    for group in groups:
        assert group["event"]
        missing = [link for link in group["links"] if link not in entries]
        assert not missing, f"{group['event']}: not in any feed: {missing}"
        outlets = {entries[link][0] for link in group["links"]}
        assert 2 <= len(outlets) == len(group["links"]) <= 4, f"{group['event']}: one item per outlet, 2-4 outlets"
        assert not seen & set(group["links"]), "an item belongs to at most one story group"
        seen |= set(group["links"])
    assert not seen & set(readme_links("Off-beat items"))


def test_story_group_members_agree_on_the_shared_facts(entries):
    """The fact-checker compares drafts against these sources: conflicting figures would make it unusable."""
    for group in json.loads((EXAMPLES / "story_groups.json").read_text(encoding="utf-8")):
        assert len(group["facts"]) >= 5
        for link in group["links"]:
            text = entries[link][1].title + "\n" + body_text(entries[link][1])
            absent = [fact for fact in group["facts"] if fact not in text]
            assert not absent, f"{link} does not state {absent}"


def test_syndicated_copies_repeat_the_original_under_a_tracking_url(entries):
    pairs = [URL.findall(line) for line in readme_sections()["Syndicated duplicates"].splitlines()]
    pairs = [pair for pair in pairs if pair]
    assert len(pairs) == 2
    for original, copy in pairs:
        assert original in entries and copy in entries
        assert "utm_" in copy and without_tracking(copy) == original
        (original_feed, original_entry), (copy_feed, copy_entry) = entries[original], entries[copy]
        assert original_feed != copy_feed, "a syndicated copy comes from a different feed"
        assert body_text(original_entry) == body_text(copy_entry)
        assert original_entry.title == copy_entry.title
        assert original_entry.id != copy_entry.id


def test_hostile_items_carry_their_payloads(entries):
    injection, script = readme_links("Hostile items")
    assert "Ignore previous instructions" in body_text(entries[injection][1])
    assert "<script>" in entries[script][1].title
    raw = (FEEDS / entries[script][0]).read_text(encoding="utf-8")
    assert "<script>document.location" in raw, "the script body must reach the pipeline's own sanitiser"


def test_every_item_link_in_the_readme_exists_in_the_feeds(entries):
    for link in URL.findall(README.read_text(encoding="utf-8")):
        if urlsplit(link).path.strip("/"):
            assert link in entries, f"README names {link}, which no feed contains"


# --- past house-style articles ----------------------------------------------


def split_article(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path.name}: no front matter"
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


ARTICLES = sorted((EXAMPLES / "articles").glob("*.md"))


def test_there_are_twelve_past_articles_in_both_templates():
    assert len(ARTICLES) == 12
    templates = [split_article(path)[0]["template"] for path in ARTICLES]
    assert set(templates) == {"news", "analysis"}


@pytest.mark.parametrize("path", ARTICLES, ids=lambda p: p.stem)
def test_past_article_follows_the_house_structure(path):
    assert "SAMPLE DATA" in path.read_text(encoding="utf-8").split("---\n")[1]
    front, body = split_article(path)
    assert set(front) == {"headline", "date", "template", "sources"}
    assert front["headline"].strip()
    assert isinstance(front["date"], dt.date) and front["date"] < WINDOW[0], "past articles predate the feeds"
    assert front["template"] in {"news", "analysis"}
    assert front["sources"]
    for source in front["sources"]:
        assert set(source) == {"title", "url", "outlet"} and all(source.values())
        assert urlsplit(source["url"]).hostname.endswith(".example")

    prose, _, insights = body.partition("## Insights")
    assert insights, "missing the Insights section"
    paragraphs = [p.strip() for p in prose.strip().split("\n\n") if p.strip()]
    bullets = [line for line in insights.splitlines() if line.startswith("- ")]
    assert 4 <= len(paragraphs) <= 6, f"lead plus 3-5 body paragraphs, got {len(paragraphs)}"
    assert len(bullets) >= 2
    for part in paragraphs + bullets:
        assert re.search(r"\[\d+\]", part), f"uncited: {part[:60]!r}"
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", body)}
    assert cited == set(range(1, len(front["sources"]) + 1)), "citations must match the sources list"
