"""Language detection (issue 19): the detector, the newsroom.language key, and the language stored at ingest."""

from __future__ import annotations

from pathlib import Path

import feedparser
import pytest
from sqlalchemy import select

from agents.fetcher import plain_text, run_fetch
from pipeline.core import schema
from pipeline.core.config import ConfigError, parse_config
from pipeline.text.language import DETECTOR_LANGUAGES, _identifier, detect, foreign_language, primary

ROOT = Path(__file__).resolve().parent.parent
MIXED = ROOT / "examples" / "multilingual"
SAMPLE_FEEDS = sorted((ROOT / "examples" / "feeds").glob("*.xml")) + sorted((MIXED / "feeds").glob("*.xml"))


def sample_items() -> list[tuple[str, str, str]]:
    """(declared language, title, text) of every entry of the mixed-language sample; the outlet declares the language."""
    out = []
    for path in SAMPLE_FEEDS:
        parsed = feedparser.parse(str(path))
        declared = parsed.feed.get("language") or "en"
        for entry in parsed.entries:
            body = entry.get("content", [{}])[0].get("value", "") or entry.get("summary", "")
            out.append((primary(declared), entry.title, plain_text(body)))
    return out


def test_the_listed_languages_are_exactly_the_installed_detector_s():
    assert DETECTOR_LANGUAGES == set(_identifier().labels)


def test_newsroom_language_defaults_to_english_and_takes_bcp47_tags(tmp_path):
    assert parse_config({}, root=tmp_path).newsroom.language == "en"
    assert parse_config({"newsroom": {"language": "pt-BR"}}, root=tmp_path).newsroom.language == "pt-BR"


@pytest.mark.parametrize("value, words", [
    ("english", "must be a BCP 47 language tag"),
    ("e", "must be a BCP 47 language tag"),
    ("qq", "language 'qq' is not one the language detector knows"),
])
def test_a_bad_newsroom_language_stops_the_run_with_a_message_naming_the_key(tmp_path, value, words):
    with pytest.raises(ConfigError) as caught:
        parse_config({"newsroom": {"language": value}}, root=tmp_path)
    assert "'newsroom.language'" in str(caught.value) and words in str(caught.value)


def test_detection_on_every_item_of_the_mixed_language_sample():
    cases = sample_items()
    assert {lang for lang, _, _ in cases} == {"en", "de", "es"}
    right = sum(detect(f"{title}\n{text}").language == lang for lang, title, text in cases)
    assert right / len(cases) >= 0.98, f"{right}/{len(cases)}"


def test_too_little_text_is_undetermined_not_guessed():
    assert detect("Korvex 48.2").language == "und"
    assert detect("").language == "und"


def test_a_sentence_is_called_foreign_only_when_it_clearly_is():
    assert foreign_language("Die Börse will die Auszahlungen innerhalb von 72 Stunden wieder freigeben.", "en") == "de"
    assert foreign_language("Los fondos empezarán a cotizar en Atlas Exchange a partir del 24 de noviembre.", "en") == "es"
    assert foreign_language("Korvex paused withdrawals at 04:05 UTC after the attack.", "en") is None
    # Names and figures alone carry no language.
    assert foreign_language("Kowalski said.", "en") is None
    assert foreign_language("Marta Lindqvist, Korvex.", "de") is None
    # The target need not be English.
    assert foreign_language("Korvex paused all withdrawals after the attack on its wallets.", "de-DE") == "en"
    assert foreign_language("Die Börse will die Auszahlungen wieder freigeben.", "de-DE") is None


def _rss(title: str, text: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>t</title><link>https://a.example/</link>'
        f"<description>d</description><item><title>{title}</title><link>https://a.example/1</link>"
        f"<pubDate>Wed, 18 Nov 2026 15:10:00 +0000</pubDate><description>{text}</description></item></channel></rss>"
    )


def test_the_fetch_stage_stores_each_item_s_language_and_redetects_it_when_the_source_rewrites_it(tmp_path, ledger):
    feeds = [{"name": path.name.split(".")[0], "url": str(path), "full_text": "feed"} for path in sorted((MIXED / "feeds").glob("*.xml"))]
    feed = tmp_path / "rewritten.xml"
    feed.write_text(_rss("Korvex halts withdrawals", "Korvex paused all withdrawals on Wednesday after attackers drained its hot wallets of $48.2 million, the exchange said."))
    feeds.append({"name": "rewritten", "url": str(feed), "full_text": "feed"})
    config = parse_config({"feeds": feeds, "ledger": {"url": "sqlite:///ledger.sqlite"}}, root=tmp_path)

    report = run_fetch(config, ledger)
    assert report.errors == []
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.source, schema.items.c.language)).all()
    assert {(source, language) for source, language in rows} == {("krypto_kurier", "de"), ("diario_cadena", "es"), ("rewritten", "en")}

    feed.write_text(_rss("Korvex stoppt Auszahlungen", "Die Börse Korvex hat am Mittwoch alle Auszahlungen gestoppt, nachdem Angreifer 48,2 Millionen Dollar erbeutet hatten."))
    run_fetch(config, ledger)
    with ledger.engine.connect() as connection:
        language = connection.execute(select(schema.items.c.language).where(schema.items.c.source == "rewritten")).scalar_one()
    assert language == "de"
