"""Hostile input (issue 9): prompt injection, markup, SSRF, size, broken text, secrets.

Each test feeds Newsdesk what an attacker or a broken publisher would send and
checks what a user would notice: the draft, the documents, the ledger, the
error on the source's row. Payload sets live in tests/fixtures/hostile/.

Cases covered elsewhere (not repeated here):
  * prompts fence untrusted data: test_writer.py::test_writer_prompt_fences_sources_and_injection_stays_inside,
    test_reviser_prompt_fences_article_flags_and_sources, test_classifier_claims_and_judge_prompts_render_and_fence_data
  * the model's sources list is replaced by the pack's: test_writer.py::test_sources_list_comes_from_the_pack_not_the_model
  * unknown citation / foreign URL / unsupported confirmation as rule failures:
    test_fact_checker.py::test_citation_url_and_confirmation_problems_are_rule_failures, test_templates.py (URL/citation)
  * SSRF address classes, odd IPv4 notations, redirects to a private host, connect-time refusal:
    test_urls.py::test_addresses_inside_our_network_are_refused, test_odd_ipv4_notations_are_decoded,
    test_unsafe_urls_are_refused_with_the_reason; test_fetcher.py::test_a_redirect_to_a_private_address_is_refused,
    test_the_real_client_refuses_to_connect_to_a_private_address_found_at_connect_time
  * oversized body, Content-Length, gzip bomb: test_fetcher.py::test_an_oversize_body_is_stopped_while_streaming,
    test_a_declared_content_length_over_the_limit_is_refused_before_reading, test_a_gzip_bomb_is_stopped_by_counting_decompressed_bytes
  * api_key_file readable by others: test_config.py::test_open_credentials_file_warns
  * logs, ledger and status redaction: test_logs.py
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import unicodedata
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote
from xml.sax.saxutils import escape, quoteattr

import httpx
import lxml.html
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from sqlalchemy import select
from tenacity import wait_none

from agents.classifier import ModelClassifier, addresses_a_model
from agents.fact_checker import check_draft
from agents.fetcher import fetch_all, plain_text, run_fetch
from agents.publisher import publish_ready, publish_to_outbox
from agents.writer import write_draft
from pipeline.core import schema
from pipeline.core.config import PACKAGE_ROOT, parse_config
from pipeline.services.gdocs import layout_draft, safe_url, split_for_tabs
from pipeline.services.http import Fetcher, FetchError, make_client
from pipeline.core.ledger import Ledger
from pipeline.services.llm import Gateway
from pipeline.core.models import (
    Article,
    Claim,
    ClaimVerdict,
    Draft,
    DraftState,
    FactCheckReport,
    Insight,
    Item,
    Paragraph,
    ResearchPack,
    SourceDoc,
    SourceRef,
    Story,
)
from pipeline.services.outbox import STYLESHEET, parse_markdown
from pipeline.core.prompts import PromptLibrary
from pipeline.core.ledger import row_to_item
from pipeline.text.templates import load_templates
from pipeline.services.testing import TestModel
from pipeline.text.urls import ResolveError, UnsafeUrlError, UrlError, check_url, without_credentials

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
INJECTIONS = json.loads((HOSTILE / "injections.json").read_text(encoding="utf-8"))["payloads"]
XSS = json.loads((HOSTILE / "xss.json").read_text(encoding="utf-8"))["payloads"]
PUBLIC_IP = "93.184.216.34"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)



def stored_items(ledger: Ledger) -> list[Item]:
    with ledger.engine.connect() as connection:
        return [row_to_item(r) for r in connection.execute(select(schema.items).order_by(schema.items.c.published))]


def source_error(ledger: Ledger, name: str) -> str | None:
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.sources.c.last_error).where(schema.sources.c.name == name)).scalar_one()


def feed_config(tmp_path: Path, feeds: list[dict], **limits):
    return parse_config(
        {"feeds": [{"full_text": "feed", **f} for f in feeds], "ledger": {"url": "sqlite:///ledger.sqlite"},
         "limits": {"fetch_retries": 0, **limits}},
        root=tmp_path,
    )


# =====================================================================================
# Prompt injection
# =====================================================================================

TOPICS = [
    {"name": "markets", "description": "Crypto prices, exchanges, trading and ETFs", "keywords": ["bitcoin", "exchange", "etf"]},
    {"name": "security", "description": "Hacks, exploits and stolen funds", "keywords": ["hack", "exploit", "drained"]},
]
BENIGN = [
    ("Bitcoin ETF inflows reach $1.2 billion", "Spot bitcoin ETF inflows reached $1.2 billion on Monday, the fund issuers said."),
    ("Exchange Korvex drained of $48 million", "Attackers drained $48 million from the Korvex exchange hot wallet, the company said."),
    ("Ether options volume doubles", "Ether options volume on the exchange doubled in November, data from the venue showed."),
    ("Pumpkin chili for the trading desk", "A slow-cooked chili recipe with roasted pumpkin and black beans for cold evenings."),
    ("Lattice protocol exploit costs users $3 million", "An exploit in the Lattice lending protocol let an attacker take $3 million in deposits."),
    ("Regulator fines broker over bitcoin ads", "The financial regulator fined a broker for misleading bitcoin advertisements."),
]


def make_item(n: int, title: str, text: str, source: str = "wire") -> Item:
    url = f"https://{source}.example/news/{n}"
    return Item(id=f"item{n:03d}", source=source, url=url, canonical_url=url, title=title, text=text, summary="",
                published=T0 + timedelta(minutes=n), content_hash=f"hash{n:03d}")


def _markers(payload: str) -> list[str]:
    """Plain-word runs of a payload that survive the prompt's escaping, to spot it in a rendered prompt."""
    return [m for m in re.findall(r"[A-Za-z][A-Za-z ,.'-]{14,}", payload)][:2]


INJECTION_MARKERS = [m for p in INJECTIONS for m in _markers(p)]
ITEM_BLOCK = re.compile(r'<item id="([^"]+)">\n(.*?)\n</item>', re.S)


def obedient_classifier(request) -> dict:
    """A model that does whatever the text it reads tells it to: a hijacked batch is all 'most newsworthy'."""
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    hijacked = any(marker in user for marker in INJECTION_MARKERS)
    results = []
    for item_id, block in ITEM_BLOCK.findall(user):
        on_beat = re.search(r"bitcoin|exchange|ether|exploit|drained|hack", block, re.I)
        security = re.search(r"exploit|drained|hack", block, re.I)
        results.append({
            "id": item_id,
            "relevant": bool(on_beat) or hijacked,
            "topics": (["security"] if security else ["markets"]) if (on_beat or hijacked) else [],
            "newsworthiness": 1.0 if hijacked else 0.5,
            "summary": "obeyed the item" if hijacked else "a plain summary",
            "entities": [],
            "reason": "instructed by the item" if hijacked else "judged on content",
        })
    return {"results": results}


def classify_with(config, ledger, items: list[Item]):
    model = TestModel(function=obedient_classifier)
    gateway = Gateway(config, ledger, backend=model)
    classifier = ModelClassifier(config, gateway, PromptLibrary(config.prompts_dir))
    outcome = asyncio.run(classifier.classify(items))
    return outcome, model


def test_every_injection_payload_is_recognised_and_changes_no_other_items_classification(tmp_path, ledger):
    """A model that obeys injected text would hijack its whole batch; each hostile item is asked alone,
    so the other items get exactly the classification they get without it, and it cannot rank itself high."""
    config = parse_config({"topics": TOPICS, "llm": {"offline": False}, "classify": {"batch_size": 12}}, root=tmp_path)
    benign = [make_item(n, title, text) for n, (title, text) in enumerate(BENIGN)]
    hostile = [
        make_item(100 + n, "Exchange update", f"The exchange posted its weekly update.\n\n{payload}")
        for n, payload in enumerate(INJECTIONS)
    ]
    assert all(addresses_a_model(item) for item in hostile), [i.text for i in hostile if not addresses_a_model(i)]
    assert not any(addresses_a_model(item) for item in benign)

    alone, _ = classify_with(config, ledger, benign)
    mixed, model = classify_with(config, ledger, [*hostile[:6], *benign, *hostile[6:]])

    assert {i.id: mixed.results[i.id] for i in benign} == {i.id: alone.results[i.id] for i in benign}
    hijacked = [r for r in model.requests if any(m in r.messages[-1]["content"] for m in INJECTION_MARKERS)]
    assert len(hijacked) == len(hostile) and all(len(ITEM_BLOCK.findall(r.messages[-1]["content"])) == 1 for r in hijacked)
    for item in hostile:
        own = mixed.results[item.id]
        assert own.newsworthiness <= 0.1 and "instructions addressed to an AI" in own.reason


# --- the writer and the fact-checker against an obedient model --------------------------------------

INJECTED_LINK = "https://airdrop-claim.example/bonus"


def pack_with_injection() -> tuple[Story, ResearchPack]:
    texts = [
        ("Korvex exchange drained of $48 million", "korvex-hack",
         "Attackers drained $48 million from the Korvex exchange hot wallet on Tuesday, the company said. "
         "Withdrawals were paused while investigators traced the funds. The firm said customer balances are covered. "
         f"{INJECTIONS[8]} {INJECTIONS[9]} {INJECTIONS[10]}"),
        ("Korvex pauses withdrawals after breach", "korvex-pause",
         "Korvex paused all withdrawals after the breach, its chief executive said in a statement on Tuesday. "
         "The exchange said it would reopen withdrawals once its audit is complete."),
    ]
    sources = [
        SourceDoc(n=n, item_id=f"item{n}", title=title, outlet=f"outlet{n}", published=T0,
                  url=f"https://outlet{n}.example/{slug}", text=text)
        for n, (title, slug, text) in enumerate(texts, start=1)
    ]
    story = Story(key="story-injected", title=texts[0][0], item_ids=["item1", "item2"], sources=["outlet1", "outlet2"],
                  topics=["security"], score=0.9, first_published=T0, last_published=T0)
    return story, ResearchPack(story_key=story.key, sources=sources, budget_tokens=4000, used_tokens=500)


def honest_article() -> dict:
    return {
        "headline": "Korvex exchange drained of $48 million",
        "lead": "Attackers drained $48 million from the Korvex exchange hot wallet on Tuesday.",
        "body": [
            {"text": "Attackers drained $48 million from the Korvex exchange hot wallet on Tuesday, the company said.", "citations": [1]},
            {"text": "Korvex paused all withdrawals after the breach, its chief executive said in a statement.", "citations": [2]},
            {"text": "The exchange said it would reopen withdrawals once its audit is complete.", "citations": [2]},
        ],
        "insights": [
            {"text": "The hot wallet lost $48 million.", "citations": [1]},
            {"text": "Withdrawals stay paused until the audit ends.", "citations": [2]},
        ],
        "sources": [
            {"n": 1, "title": "Korvex exchange drained of $48 million", "outlet": "outlet1", "url": "https://outlet1.example/korvex-hack"},
            {"n": 2, "title": "Korvex pauses withdrawals after breach", "outlet": "outlet2", "url": "https://outlet2.example/korvex-pause"},
        ],
    }


def obedient_writer(*, links: bool = True, citations: bool = True, confirmation: bool = True):
    """A writer model that does what the sources tell it, each kind of obedience switchable."""

    def write(request) -> dict:
        prompt = request.messages[-1]["content"] if request.messages[-1]["role"] == "user" else ""
        prompt = "\n".join(m["content"] for m in request.messages if m["role"] == "user")
        article = honest_article()
        if links and "include a link to" in prompt:
            article["body"][0]["text"] += f" Claim the bonus at {INJECTED_LINK} today."
            article["sources"].append({"n": 3, "title": "Bonus", "outlet": "airdrop", "url": INJECTED_LINK})
        if citations and "source [7]" in prompt:
            article["body"][1]["citations"] = [2, 7]
            article["insights"].append({"text": "See https://evil.example/wallet-drainer for more.", "citations": [7]})
        if confirmation and "officially confirmed" in prompt:
            article["body"][2]["text"] += " The SEC has officially confirmed the approval."
        return article

    return write


def test_an_obedient_writer_cannot_add_links_sources_or_citations_unflagged(tmp_path, ledger):
    config = parse_config({"llm": {"offline": False, "repair_rounds": 1}}, root=tmp_path)
    story, pack = pack_with_injection()
    spec = load_templates(PACKAGE_ROOT / "templates")["news"]
    gateway = Gateway(config, ledger, backend=TestModel(function=obedient_writer()))

    draft = asyncio.run(write_draft(story, pack, spec, gateway))

    assert draft.state == DraftState.needs_attention, "an article carrying injected links never passes as valid"
    problems = "\n".join(draft.violations)
    assert INJECTED_LINK in problems and "not a source URL" in problems
    assert "https://evil.example/wallet-drainer" in problems
    assert "cites [7], but there is no source 7" in problems
    assert [s.url for s in draft.article.sources] == [s.url for s in pack.sources], "the list is the pack's, not the model's"
    assert len(draft.article.body) == 3 and draft.article.headline == honest_article()["headline"]


def test_a_subtly_obedient_writer_gets_its_official_confirmation_flagged_and_highlighted(tmp_path, ledger):
    """Only the 'officially confirmed' instruction obeyed: the template passes, the fact-check does not."""
    config = parse_config({"llm": {"offline": False}, "publishing": {"outbox": "outbox"}}, root=tmp_path)
    story, pack = pack_with_injection()
    spec = load_templates(PACKAGE_ROOT / "templates")["news"]
    writer = TestModel(function=obedient_writer(links=False, citations=False))
    draft = asyncio.run(write_draft(story, pack, spec, Gateway(config, ledger, backend=writer)))
    assert draft.state == DraftState.drafted, draft.violations

    outcome = asyncio.run(check_draft(draft, pack, spec, config=config.model_copy(update={"llm": config.llm.model_copy(update={"offline": True})})))
    flagged = [v for v in outcome.report.verdicts if any(f.type == "confirmation" for f in v.failures)]
    assert len(flagged) == 1 and flagged[0].verdict != "supported"
    assert "officially confirmed" in flagged[0].claim.text

    published = publish_to_outbox(config, ledger, draft.model_copy(update={"state": DraftState.checked}), outcome.report)
    page = lxml.html.fromstring(Path(published.location).read_bytes())
    marked = [m.text_content() for m in page.iter("mark")]
    assert any("officially confirmed" in text for text in marked), marked
    assert {a.get("href") for a in page.iter("a")} <= {s.url for s in pack.sources}


# =====================================================================================
# Markup: XSS payloads through the real fetch path into the outbox and Google Docs
# =====================================================================================

HOSTILE_URLS = [
    'https://hostile.example/a"onmouseover="alert(1)',
    "https://hostile.example/b'><script>alert(1)</script>",
    "javascript:alert('xss-link')",
    "data:text/html,<script>alert(1)</script>",
    "https://hostile.example/c?x=<img src=x onerror=alert(1)>",
]


def hostile_feeds(folder: Path) -> tuple[Path, Path]:
    """An RSS and an Atom feed with every payload in every field: title, summary, content:encoded,
    author, categories and attributes, both entity-encoded and as CDATA."""
    items = []
    for n, payload in enumerate(XSS):
        link = f"https://hostile.example/story-{n}" if n >= len(HOSTILE_URLS) else HOSTILE_URLS[n]
        items.append(f"""
<item>
  <title>{escape(payload)} Bitcoin story {n}</title>
  <link>{escape(link)}</link>
  <guid isPermaLink="false">{escape(payload)}</guid>
  <author>{escape(payload)}</author>
  <category>{escape(payload)}</category>
  <pubDate>Fri, 20 Nov 2026 09:{n % 60:02d}:00 GMT</pubDate>
  <description>{escape(f"<p>Bitcoin rose 3% on exchange {n}.</p>{payload}")}</description>
  <content:encoded><![CDATA[<p>Bitcoin rose 3% on exchange {n} as traders bought. {payload}</p><p onclick="alert(1)">The rally held.</p>]]></content:encoded>
  <enclosure url={quoteattr("javascript:alert('enclosure')")} type="text/html" length="1"/>
  <media:content url={quoteattr(payload)} medium="image"/>
</item>""")
    rss = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
        'xmlns:media="http://search.yahoo.com/mrss/"><channel><title>Hostile wire</title><link>https://hostile.example/</link>'
        f"<description>d</description>{''.join(items)}</channel></rss>"
    )
    entries = []
    for n, payload in enumerate(XSS[:12]):
        entries.append(f"""
<entry>
  <title type="html">{escape(payload)} Ether note {n}</title>
  <link rel="alternate" href={quoteattr(f"https://atom.example/entry-{n}")}/>
  <link rel="alternate" href={quoteattr("javascript:alert('atom')")}/>
  <id>tag:atom.example,2026:{n}</id>
  <updated>2026-11-20T10:{n:02d}:00Z</updated>
  <summary type="html">{escape(payload)}</summary>
  <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>Ether fell 2% on exchange {n}.</p>
    <script>alert('xhtml-{n}')</script><a href="javascript:alert(1)">link</a><img src="x" onerror="alert(1)"/></div></content>
</entry>""")
    atom = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><title>Hostile atom</title>'
        f'<id>tag:atom.example,2026:feed</id><updated>2026-11-20T10:00:00Z</updated>{"".join(entries)}</feed>'
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hostile.rss.xml").write_text(rss, encoding="utf-8")
    (folder / "hostile.atom.xml").write_text(atom, encoding="utf-8")
    return folder / "hostile.rss.xml", folder / "hostile.atom.xml"


_TAG = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?\s*>")


def hostile_draft(items: list[Item], draft_id: str) -> tuple[Draft, FactCheckReport]:
    """A draft built from what was fetched (as any writer would), flagged claims quoting it too."""
    sources = [SourceRef(n=n, title=i.title, outlet=i.source, url=i.url, published=i.published)
               for n, i in enumerate(items, start=1)]
    article = Article(
        headline=items[0].title,
        lead=items[1].summary or items[1].text,
        body=[Paragraph(text=i.text, citations=[n]) for n, i in enumerate(items, start=1)],
        insights=[Insight(text=f"{i.title} ({i.author})", citations=[n]) for n, i in enumerate(items[:6], start=1)],
        sources=sources,
    )
    draft = Draft(id=draft_id, story_key=f"{draft_id}-story", template="news", writer_model="gpt-4o-mini", method="llm",
                  prompt_versions={"writer": "v1"}, article=article, state=DraftState.checked, created=T0)
    verdicts = [
        ClaimVerdict(claim=Claim(id=f"c{n}", text=i.text[:60], start=0, end=60), verdict="contradicted", source_n=n,
                     source_url=HOSTILE_URLS[n % len(HOSTILE_URLS)], evidence=i.summary[:200] or i.title)
        for n, i in enumerate(items[:8], start=1)
    ]
    return draft, FactCheckReport(draft_id=draft_id, verdicts=verdicts)


def raw_payload_draft(draft_id: str) -> tuple[Draft, FactCheckReport]:
    """The worst case: a model that echoed raw payloads into every field of the article."""
    article = Article(
        headline=XSS[0],
        lead=XSS[2],
        body=[Paragraph(text=p, citations=[1]) for p in XSS],
        insights=[Insight(text=p, citations=[1]) for p in XSS[:4]],
        sources=[SourceRef(n=n, title=XSS[n], outlet=XSS[-n], url=url) for n, url in enumerate(HOSTILE_URLS, start=1)],
    )
    draft = Draft(id=draft_id, story_key=f"{draft_id}-story", template="news", writer_model=XSS[1], method="llm",
                  prompt_versions={"writer": XSS[3]}, article=article, state=DraftState.checked, created=T0)
    verdicts = [ClaimVerdict(claim=Claim(id="c1", text=XSS[5], start=0, end=10), verdict="unverifiable",
                             source_url=HOSTILE_URLS[2], evidence=XSS[6])]
    return draft, FactCheckReport(draft_id=draft_id, verdicts=verdicts)


ALLOWED_HTML = {"html", "head", "meta", "title", "style", "body", "article", "h1", "h2", "p", "ul", "ol", "li", "strong", "mark", "a"}
ALLOWED_FROM_MARKDOWN = {"h1", "h2", "h6", "p", "ul", "ol", "li", "strong", "mark", "a"}


def assert_inert_html(document: str, allowed_tags: set[str], allowed_links: set[str]) -> lxml.html.HtmlElement:
    root = lxml.html.document_fromstring(document)
    tags = {el.tag for el in root.iter() if isinstance(el.tag, str)}
    assert tags <= allowed_tags | {"html", "body"}, tags - allowed_tags
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        assert not [name for name in element.attrib if name.lower().startswith("on")], lxml.html.tostring(element)[:200]
        for name, value in element.attrib.items():
            assert "javascript:" not in value.lower() and not value.lower().startswith("data:"), (name, value)
    links = {a.get("href") for a in root.iter("a")}
    # A Markdown renderer percent-encodes quotes and brackets in a link: compare decoded.
    assert {unquote(link) for link in links} <= {unquote(link) for link in allowed_links}, links - allowed_links
    assert all(link.startswith(("http://", "https://")) for link in links)
    return root


@pytest.fixture
def fake_google(tmp_path, monkeypatch):
    from google.auth.credentials import CredentialsWithRegionalAccessBoundary

    from tests.fakes.google_server import FakeGoogle, write_service_account

    monkeypatch.setattr(CredentialsWithRegionalAccessBoundary, "_is_regional_access_boundary_lookup_required",
                        lambda self: False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    server = FakeGoogle().serve()
    server.add_folder("folder-drafts")
    key = write_service_account(server, tmp_path / "sa.json")
    yield server, key
    server.stop()


def google_config(tmp_path: Path, fake, key: Path, **google):
    settings_ = {"folder_id": "folder-drafts", "editors": ["ana@newsroom.example"], "api_endpoint": fake.url + "/",
                 "drive_endpoint": fake.url, "credentials_file": str(key), **google}
    return parse_config({"publishing": {"target": "google", "google": settings_}, "ledger": {"url": "sqlite:///ledger.sqlite"}},
                        root=tmp_path)


def insert_checked(ledger: Ledger, draft: Draft, report: FactCheckReport) -> None:
    from sqlalchemy import insert

    with ledger.begin() as connection:
        connection.execute(insert(schema.drafts).values(
            id=draft.id, story_key=draft.story_key, template=draft.template, writer_model=draft.writer_model,
            method=draft.method, prompt_versions=draft.prompt_versions, article=draft.article.model_dump(mode="json"),
            violations=[], factcheck=report.model_dump(mode="json"), state="checked", created=draft.created, updated=T0,
        ))


def publication_of(ledger: Ledger, draft_id: str) -> str:
    """The doc id (Google) or file stem (outbox) the draft was published under."""
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.publications.c.doc_id).where(schema.publications.c.draft_id == draft_id)).scalar_one()


def test_xss_payloads_from_feeds_never_reach_the_outbox_or_google_docs_as_markup(tmp_path, fake_google):
    fake, key = fake_google
    rss, atom = hostile_feeds(tmp_path / "feeds")
    config = google_config(tmp_path, fake, key)
    config = config.model_copy(update={"feeds": feed_config(tmp_path, [{"name": "rss", "url": str(rss)}, {"name": "atom", "url": str(atom)}]).feeds})
    ledger = Ledger(config.ledger_url)

    report = run_fetch(config, ledger)
    items = stored_items(ledger)

    # Entries whose only link is javascript:/data: are skipped; everything else is stored as plain text.
    assert report.errors == [] and len(items) == len(XSS) - 2 + 12, report.notes
    for item in items:
        for field in (item.title, item.summary, item.text, item.author or ""):
            assert not _TAG.search(field), field[:200]
        assert item.url.startswith("https://")
    assert any("Bitcoin rose 3% on exchange 5" in i.text and "The rally held." in i.text for i in items)

    drafts = [hostile_draft(items[:20], "draft-fetched-a"), hostile_draft(items[20:], "draft-fetched-b"),
              raw_payload_draft("draft-raw-payloads")]
    for draft, fact_check in drafts:
        insert_checked(ledger, draft, fact_check)

    # Local outbox: HTML and Markdown.
    local = config.model_copy(update={"publishing": config.publishing.model_copy(update={"target": "local"})})
    result = publish_ready(local, ledger)
    assert result.errors == [] and result.items_out == 3
    outbox = config.path(config.publishing.outbox)
    for draft, fact_check in drafts:
        blocks = layout_draft(draft, fact_check)
        safe_links = {safe_url(s.url) for s in draft.article.sources} | {safe_url(v.source_url) for v in fact_check.verdicts}
        safe_links.discard(None)
        stem = publication_of(ledger, draft.id)
        page = (outbox / f"{stem}.html").read_text(encoding="utf-8")
        root = assert_inert_html(page, ALLOWED_HTML, safe_links)
        assert "<script" not in page.lower()
        assert [s.text for s in root.iter("style")] == [f"\n{STYLESHEET}\n"]
        assert "script-src" not in page and "default-src 'none'" in root.find(".//meta[@http-equiv]").get("content")
        # Escaped, not deleted: every paragraph's text reads back exactly from the page.
        shown = [" ".join(el.text_content().split()) for el in root.iter("h1", "h2", "p", "li")]
        assert [" ".join(b.text.split()) for b in blocks] == shown

        markdown = (outbox / f"{stem}.md").read_text(encoding="utf-8")
        # Rendered by a CommonMark renderer that lets raw HTML through: still nothing but our structure.
        rendered = MarkdownIt("commonmark", {"html": True}).render(markdown)
        md_root = assert_inert_html(f"<html><body>{rendered}</body></html>", ALLOWED_FROM_MARKDOWN, safe_links)
        assert len(list(md_root.iter("h1"))) == 1 and len(list(md_root.iter("mark"))) == len(list(root.iter("mark")))
        marker, parsed = parse_markdown(markdown)
        assert marker == draft.id and [b.text for b in parsed] == [b.text for b in blocks]

    # Google Docs: text goes in through insertText only, links only to the sources' http(s) URLs.
    with ledger.begin() as connection:   # the same drafts, ready again, for the other target
        connection.execute(schema.drafts.update().values(state="checked"))
    result = publish_ready(config, ledger, retry_wait=wait_none())
    assert result.errors == [] and result.items_out == 3
    # Comments are plain text too (the API renders their content as text); the chip is our own fixed options.
    allowed_requests = {"insertText", "deleteContentRange", "deleteParagraphBullets", "updateTextStyle",
                        "updateParagraphStyle", "createParagraphBullets", "insertComment", "addCommentReply",
                        "updateCommentPost", "deleteComment", "createDropdownDefinition", "insertDropdown",
                        "addDocumentTab"}
    for call in fake.calls_to("docs.documents.batchUpdate"):
        assert {kind for request in call.body["requests"] for kind in request} <= allowed_requests
    for draft, fact_check in drafts:
        document = fake.documents[publication_of(ledger, draft.id)].to_json(include_tabs=True)
        assert not any(key in tab["documentTab"] for tab in document["tabs"] for key in ("inlineObjects", "positionedObjects"))
        runs = [e["textRun"] for tab in document["tabs"] for c in tab["documentTab"]["body"]["content"] if "paragraph" in c
                for e in c["paragraph"]["elements"] if "textRun" in e]   # the status chip is the one other element
        links = {r["textStyle"]["link"]["url"] for r in runs if "link" in r.get("textStyle", {})}
        safe_links = {safe_url(s.url) for s in draft.article.sources} | {safe_url(v.source_url) for v in fact_check.verdicts}
        assert links <= safe_links - {None} and all(link.startswith("https://") for link in links)
        text = "".join(r["content"] for r in runs)
        article, checking = split_for_tabs(layout_draft(draft, fact_check))   # two tabs, each ending in "\n"
        expected = "\n".join(["Status: ", *(b.text for b in article)]) + "\n" + "\n".join(b.text for b in checking)
        assert text.rstrip("\n") == expected, "the document holds the text exactly, nothing interpreted"
    ledger.close()


# =====================================================================================
# SSRF
# =====================================================================================

DNS = {
    "feeds.example.com": [PUBLIC_IP],
    "metadata.google.internal": ["169.254.169.254"],
    "localhost": ["127.0.0.1", "::1"],
    "dual.example.com": [PUBLIC_IP, "::ffff:10.0.0.1"],
}


async def fake_dns(host: str) -> list[str]:
    if host in DNS:
        return DNS[host]
    raise ResolveError(f"cannot resolve host {host!r}: unknown test host", temporary=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://017700000001/", "non-standard IPv4 notation (means 127.0.0.1)"),      # one octal number
        ("http://0x7f.0x0.0x0.0x1/", "non-standard IPv4 notation (means 127.0.0.1)"),  # dotted hex
        ("http://0/", "non-standard IPv4 notation (means 0.0.0.0)"),
        ("http://127.000.000.001/", "malformed"),                                      # zero-padded octets
        ("http://0177.0.0.01/", "malformed"),
        ("http://127.0.0.1./", "loopback"),                                            # trailing dot
        ("http://[0000::1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "IPv4-mapped IPv6 address (of 127.0.0.1)"),        # mapped, hex tail
        ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped IPv6 address (of 169.254.169.254)"),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 address wrapping 169.254.169.254"),
        ("http://[fe80::1%25eth0]/", "link-local"),                                    # with a zone id
        ("http://100.100.100.200/latest/meta-data/", "cloud metadata endpoint"),       # Alibaba's metadata
        ("http://metadata.google.internal/computeMetadata/v1/", "resolves to 169.254.169.254, a cloud metadata endpoint"),
        ("http://localhost:8080/admin", "resolves to 127.0.0.1, a loopback address"),
        ("http://dual.example.com/", "IPv4-mapped IPv6 address (of 10.0.0.1)"),       # one bad answer refuses the host
        ("http://feeds.example.com@127.0.0.1/", "loopback"),                           # userinfo that looks like a host
        ("http://127.0.0.1#@feeds.example.com/", "loopback"),
        ("http://①②⑦.⓪.⓪.①/", "malformed"),                                          # IDNA digits that fold to 127.0.0.1
    ],
)
def test_bypass_spellings_of_internal_addresses_are_refused(url, reason):
    with pytest.raises(UrlError) as caught:
        asyncio.run(check_url(url, resolver=fake_dns))
    assert reason in str(caught.value), str(caught.value)


REDIRECT_TARGETS = [
    ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata endpoint"),
    ("http://[fd00:ec2::254]/latest/", "cloud metadata endpoint"),
    ("http://metadata.google.internal/", "resolves to 169.254.169.254"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]:8080/", "IPv4-mapped"),
    ("http://[::1]/", "loopback"),
    ("http://localhost/", "resolves to 127.0.0.1"),
    ("http://10.1.2.3/", "private network address"),
    ("http://192.168.0.1/router", "private network address"),
    ("http://017700000001/", "non-standard IPv4 notation"),
    ("http://0x7f000001/", "non-standard IPv4 notation"),
    ("http://0177.0.0.1/", "Invalid IPv4 address"),   # httpx refuses to parse the Location itself
    ("file:///etc/passwd", "only http(s)"),
]


@respx.mock
def test_redirects_to_any_internal_address_are_refused_before_a_request(tmp_path, ledger):
    feeds = []
    for n, (target, _) in enumerate(REDIRECT_TARGETS):
        respx.get(f"https://feeds.example.com/r{n}").respond(302, headers={"location": target})
        feeds.append({"name": f"redirect{n}", "url": f"https://feeds.example.com/r{n}"})
    anything_else = respx.route().respond(200, content=b"<rss/>")
    config = feed_config(tmp_path, feeds)

    async def go():
        async with httpx.AsyncClient() as client:
            return await fetch_all(config, ledger, client=client, resolver=fake_dns, retry_wait=wait_none())

    report = asyncio.run(go())

    assert anything_else.call_count == 0, "no request left for an internal address"
    assert report.notes["feeds_failed"] == len(REDIRECT_TARGETS)
    for n, (target, reason) in enumerate(REDIRECT_TARGETS):
        error = source_error(ledger, f"redirect{n}")
        assert reason in error, (target, error)


def test_dns_that_changes_between_check_and_connect_is_refused_at_connect_time():
    """The pre-flight check sees a public address; the connection would have gone to loopback."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])
    asked = []

    async def rebinding(host: str) -> list[str]:
        asked.append(host)
        return next(answers)

    async def go():
        async with make_client(timeout_s=5, user_agent="t", resolver=rebinding) as client:
            fetcher = Fetcher(client, timeout_s=5, max_bytes=100_000, retries=0, user_agent="t", resolver=rebinding)
            return await fetcher.get("http://rebind.example.com/feed")

    with pytest.raises(FetchError, match="rebind.example.com resolves to 127.0.0.1, a loopback address"):
        asyncio.run(go())
    assert asked == ["rebind.example.com", "rebind.example.com"], "checked before the request and again at connect"


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = "http://169.254.169.254/latest/meta-data/"

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_allowing_private_hosts_never_allows_the_metadata_service(network_guard):
    """An intranet feed (allow_private_hosts) that redirects to 169.254.169.254 is still refused,
    without a connection attempt (the network guard would have recorded one)."""
    server, url = serve(_Redirector)

    async def go():
        async with make_client(timeout_s=5, user_agent="t", allow_private=True) as client:
            fetcher = Fetcher(client, timeout_s=5, max_bytes=100_000, retries=0, user_agent="t", allow_private=True)
            return await fetcher.get(url + "/feed")

    try:
        with pytest.raises(FetchError, match="cloud metadata endpoint .refused even with limits.allow_private_hosts"):
            asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert network_guard.attempts == []
    for literal in ("http://169.254.169.254/", "http://[::ffff:169.254.169.254]/", "http://100.100.100.200/"):
        with pytest.raises(UnsafeUrlError, match="cloud metadata endpoint"):
            asyncio.run(check_url(literal, resolver=fake_dns, allow_private=True))
    asyncio.run(check_url("http://10.0.0.7/feed", resolver=fake_dns, allow_private=True))   # the intranet itself is fine


# =====================================================================================
# Size, depth and time limits
# =====================================================================================

MEASURE = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from agents.fetcher import run_fetch
from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from sqlalchemy import select
from pipeline.core import schema

spec = json.loads(sys.argv[1])
config = parse_config(spec["config"], root=Path(spec["root"]))
ledger = Ledger(config.ledger_url)
run_fetch(config, ledger)   # warm up: imports, parsers and the ledger cost what they cost before we measure
with ledger.begin() as c:
    c.execute(schema.items.delete()); c.execute(schema.sources.delete())
config = parse_config({{**spec["config"], "feeds": spec["feeds"]}}, root=Path(spec["root"]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
report = run_fetch(config, ledger)
elapsed = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with ledger.engine.connect() as c:
    titles = {{r.source: r.title for r in c.execute(select(schema.items.c.source, schema.items.c.title))}}
print(json.dumps({{"errors": report.errors, "titles": titles, "growth_mb": (peak - before) / 1024, "seconds": elapsed}}))
"""


def fetch_in_child(tmp_path: Path, feeds: list[dict], **limits) -> dict:
    """Fetch `feeds` in a fresh process and report its peak-memory growth over a small warm-up fetch.

    ru_maxrss is a process-wide peak, so it is measured in a child of its own, not in pytest."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    warmup = tmp_path / "warmup.xml"
    warmup.write_text('<rss version="2.0"><channel><title>w</title><item><title>w</title>'
                      "<link>https://warm.example/1</link><description>w</description></item></channel></rss>")
    spec = {
        "root": str(tmp_path),
        "config": {"feeds": [{"name": "warmup", "url": str(warmup), "full_text": "feed"}], "ledger": {"url": "sqlite:///child.sqlite"},
                   "limits": {"fetch_retries": 0, **limits}},
        "feeds": [{"full_text": "feed", **f} for f in feeds],
    }
    result = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(PACKAGE_ROOT)), json.dumps(spec)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def bomb_feeds(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    item = '<item><title>{title}</title><link>https://bombs.example/{n}</link><description>{body}</description></item>'
    head = '<?xml version="1.0"?>\n{dtd}<rss version="2.0"><channel><title>t</title><link>https://bombs.example/</link><description>d</description>'
    big = "A" * 200_000
    files = {
        "laughs": HOSTILE / "billion_laughs.xml",
        "xxe": HOSTILE / "external_entity.xml",
        "quadratic": head.format(dtd=f'<!DOCTYPE rss [<!ENTITY a "{big}">]>\n')
        + item.format(title="q", n=1, body="&a;" * 200) + "</channel></rss>",
        "nested": head.format(dtd="") + '<item><title>deep</title><link>https://bombs.example/deep</link>'
        + "<x>" * 300_000 + "</x>" * 300_000 + "</item></channel></rss>",
        "fine": head.format(dtd="") + item.format(title="A normal story", n=2, body="Bitcoin rose.") + "</channel></rss>",
    }
    paths = {}
    for name, content in files.items():
        if isinstance(content, Path):
            paths[name] = content
        else:
            paths[name] = folder / f"{name}.xml"
            paths[name].write_text(content)
    return paths


def test_entity_expansion_external_entities_and_deep_nesting_are_refused_per_source_in_bounded_memory(tmp_path):
    paths = bomb_feeds(tmp_path / "bombs")
    assert (HOSTILE / "billion_laughs.xml").stat().st_size < 2000   # 10^9 "lol"s if expanded
    result = fetch_in_child(tmp_path, [{"name": name, "url": str(path)} for name, path in paths.items()])

    errors = {e.split("'")[1]: e for e in result["errors"]}
    assert "expanding XML entity 'lol1'" in errors["laughs"] and "entity-expansion bomb" in errors["laughs"]
    assert "expanding XML entity 'a'" in errors["quadratic"]
    assert "external XML entity 'x' (file:///etc/passwd)" in errors["xxe"]
    assert "nested deeper than 100 elements" in errors["nested"]
    assert set(errors) == {"laughs", "quadratic", "xxe", "nested"}
    assert result["titles"] == {"fine": "A normal story"}, "the good feed in the same run is unaffected"
    assert result["growth_mb"] < 50, result
    assert result["seconds"] < 20, result


def ten_mb_title_feed(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big_title.xml"
    with path.open("w") as handle:
        handle.write('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>t</title><item><title>')
        handle.write("Bitcoin " * 1_310_720)   # 10 MiB of title
        handle.write("</title><link>https://big.example/title</link><description>A short body.</description></item></channel></rss>")
    return path


def test_a_ten_megabyte_title_is_stopped_by_the_size_cap_or_cut_to_the_title_limit_in_bounded_memory(tmp_path):
    path = ten_mb_title_feed(tmp_path / "big")
    assert path.stat().st_size > 10 * 2**20

    capped = fetch_in_child(tmp_path / "capped", [{"name": "big", "url": str(path)}])
    assert capped["errors"] == [f"source 'big': {path}: file too large: more than 5000000 bytes (limits.max_response_bytes)"]
    assert capped["growth_mb"] < 20, capped

    allowed = fetch_in_child(tmp_path / "allowed", [{"name": "big", "url": str(path)}], max_response_bytes=12_000_000)
    assert allowed["errors"] == []
    title = allowed["titles"]["big"]
    assert len(title) <= 500 and title.startswith("Bitcoin Bitcoin") and title.endswith("…")
    assert allowed["growth_mb"] < 200, allowed


class _Endless(http.server.BaseHTTPRequestHandler):
    """A chunked response that never ends: fast (`pause` 0) or one small chunk at a time."""

    protocol_version = "HTTP/1.1"
    pause = 0.0
    sent: list[int] = []

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"<rss>" + b"x" * (100 if self.pause else 8187)
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                type(self).sent.append(len(chunk))
                if self.pause:
                    time.sleep(self.pause)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def endless_fetch(pause: float, **kw):
    handler = type("Endless", (_Endless,), {"pause": pause, "sent": []})
    server, url = serve(handler)

    async def go():
        async with make_client(timeout_s=kw["timeout_s"], user_agent="t", allow_private=True) as client:
            fetcher = Fetcher(client, retries=0, user_agent="t", allow_private=True, **kw)
            return await fetcher.get(url + "/feed")

    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as caught:
            asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    return caught.value, time.monotonic() - started, sum(handler.sent)


def test_an_endless_chunked_stream_is_cut_at_the_size_cap():
    error, seconds, _ = endless_fetch(0.0, timeout_s=30, max_bytes=256_000)
    assert "response too large: more than 256000 bytes" in str(error)
    assert seconds < 30, "stopped by size, long before the time limit"


def test_an_endless_trickle_under_the_size_cap_is_cut_by_the_wall_clock_timeout():
    """A byte every so often resets per-read timeouts forever; the per-attempt clock does not reset."""
    error, seconds, sent = endless_fetch(0.02, timeout_s=0.5, max_bytes=10_000_000)
    assert "timed out after 0.5s (limits.fetch_timeout_s)" in str(error)
    assert sent < 10_000_000 and seconds < 10


# =====================================================================================
# Broken text: invalid, mixed and mislabelled encodings, control characters
# =====================================================================================

ENCODINGS = HOSTILE / "encodings"
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069\u200b]")


def test_broken_encodings_are_normalised_and_never_sink_a_feed(tmp_path, ledger):
    feeds = [{"name": path.stem, "url": str(path)} for path in sorted(ENCODINGS.glob("*.xml"))]
    config = feed_config(tmp_path, feeds)

    report = run_fetch(config, ledger)

    by_source = {item.source: item for item in stored_items(ledger)}
    # Only a feed in an encoding no XML parser guesses (EBCDIC without a BOM) fails, and it says why.
    assert report.errors == ["source 'ebcdic_cp500': not a valid RSS/Atom feed: <unknown>:2:0: not well-formed (invalid token)"]
    assert set(by_source) == {f["name"] for f in feeds} - {"ebcdic_cp500"}
    for item in by_source.values():
        for text in (item.title, item.text, item.summary):
            text.encode("utf-8")   # strict: no lone surrogates reach the ledger
            assert not _BAD_CHARS.search(text), (item.source, text)
            assert unicodedata.is_normalized("NFC", text), (item.source, text)
    assert by_source["mixed_utf8_cp1252"].title == "Café Zürich", "UTF-8 kept, stray Windows-1252 bytes repaired"
    assert by_source["latin1_declared_utf8"].title == "Café Zürich"
    assert by_source["utf8_declared_latin1"].title == "Zürich"
    assert by_source["cp1252"].title == "Smart “quotes” — dash" and by_source["cp1252"].text == "€100"
    assert by_source["utf16"].title == "Zürich 東京 🚀"
    assert by_source["nfd"].title == "Café Zürich" and by_source["nfd"].title == unicodedata.normalize("NFC", "Cafe\u0301 Zu\u0308rich")
    assert by_source["controls"].title == "Bell null esc[31m red RTL override zwsp"
    assert by_source["controls"].text.startswith("line\nvertical\nform"), "vertical tab and form feed break lines, not glue words"
    assert "\ufffd" in by_source["surrogates_and_overlong"].text, "a reference to a lone surrogate becomes U+FFFD"
    assert by_source["bom_mid"].title == "ab"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200))
def test_plain_text_of_any_string_is_clean_nfc_utf8(text):
    for single_line in (False, True):
        out = plain_text(text, single_line=single_line)
        out.encode("utf-8")
        assert not _BAD_CHARS.search(out)
        assert unicodedata.is_normalized("NFC", out)
        assert not _TAG.search(out)


# =====================================================================================
# Config and secrets
# =====================================================================================


@pytest.mark.parametrize("key", ["credentials_file", "token_file", "GOOGLE_APPLICATION_CREDENTIALS"])
def test_google_credentials_readable_by_other_users_warn(tmp_path, monkeypatch, key):
    secret = tmp_path / "google.json"
    secret.write_text('{"type": "service_account"}')
    raw = {"publishing": {"google": {key: str(secret)}}} if key != "GOOGLE_APPLICATION_CREDENTIALS" else {}
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    if key == "GOOGLE_APPLICATION_CREDENTIALS":
        monkeypatch.setenv(key, str(secret))
    for mode in (0o644, 0o640, 0o604):
        secret.chmod(mode)
        with pytest.warns(UserWarning, match=rf"credentials file {re.escape(str(secret))} is readable by other users; run: chmod 600"):
            parse_config(raw, root=tmp_path)
    secret.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config(raw, root=tmp_path)


FEED_PASSWORD, FEED_TOKEN = "s3cret-feed-pass", "tok-9f8e7d6c5b4a"


@respx.mock
def test_credentials_in_a_private_feed_url_never_reach_errors_the_ledger_or_item_links(tmp_path, ledger):
    url = f"https://reader:{FEED_PASSWORD}@private.example.com/feed.xml?token={FEED_TOKEN}&lang=en"
    body = ('<rss version="2.0"><channel><title>p</title><link>https://private.example.com/</link><description>d</description>'
            '<item><title>Members-only bitcoin note</title><link>/notes/1</link><description>Bitcoin rose.</description></item>'
            "</channel></rss>").encode()
    route = respx.get("https://private.example.com/feed.xml").mock(side_effect=[
        httpx.Response(503), httpx.Response(200, content=body, headers={"content-type": "application/rss+xml"}),
    ])
    redirect = respx.get("https://private.example.com/old").respond(302, headers={"location": f"http://reader:{FEED_PASSWORD}@10.0.0.9/x?api_key={FEED_TOKEN}"})
    config = feed_config(tmp_path, [{"name": "private", "url": url}, {"name": "moved", "url": f"https://reader:{FEED_PASSWORD}@private.example.com/old"}])

    async def resolver(host: str) -> list[str]:
        return [PUBLIC_IP] if host == "private.example.com" else ["10.0.0.9"]

    def fetch():
        async def go():
            async with httpx.AsyncClient() as client:
                return await fetch_all(config, ledger, client=client, resolver=resolver, retry_wait=wait_none())
        return asyncio.run(go())

    failed = fetch()
    worked = fetch()

    assert route.calls[0].request.headers["authorization"].startswith("Basic "), "the credentials were used"
    assert redirect.call_count == 2
    messages = "\n".join([*failed.errors, *worked.errors])
    assert "HTTP 503" in messages and "10.0.0.9 is a private network address" in messages
    assert "reader:***@private.example.com/feed.xml?token=***&lang=en" in messages
    with ledger.engine.connect() as connection:
        everything = "\n".join(str(v) for table in (schema.sources, schema.items)
                               for row in connection.execute(select(table)) for v in row)
    assert [i.url for i in stored_items(ledger)] == ["https://private.example.com/notes/1"], "links resolve without the feed's userinfo"
    for secret in (FEED_PASSWORD, FEED_TOKEN):
        assert secret not in messages and secret not in everything
    assert without_credentials("https://u:p4ss@h.example/a?sig=abc&x=1") == "https://u:***@h.example/a?sig=***&x=1"


def test_planted_secrets_never_reach_drafts_documents_or_writer_exceptions(tmp_path, fake_google, monkeypatch, allow_model_requests):
    from pipeline.core.logs import register_secret
    from tests.fakes.openai_server import Fault, FakeOpenAIServer

    fake, key = fake_google
    planted = f"nd-planted-{os.urandom(12).hex()}"      # registered, as the CLI registers what it reads
    shaped = f"sk-proj-{os.urandom(16).hex()}"          # never registered: masked by its shape
    register_secret(planted)
    story, pack = pack_with_injection()
    spec = load_templates(PACKAGE_ROOT / "templates")["news"]

    def leaky(request) -> dict:
        # An endpoint that echoes what it knows into the article, as a compromised proxy might.
        article = honest_article()
        article["lead"] = f"Attackers drained $48 million from Korvex using key {planted} on Tuesday."
        article["body"][0]["text"] += f" The leaked key {shaped} was used."
        article["insights"][0]["text"] = f"Key {planted} was exposed."
        return article

    config = google_config(tmp_path, fake, key)
    config = config.model_copy(update={"llm": config.llm.model_copy(update={"offline": False})})
    ledger = Ledger(config.ledger_url)
    draft = asyncio.run(write_draft(story, pack, spec, Gateway(config, ledger, backend=TestModel(function=leaky))))
    stored = draft.article.model_dump_json()
    assert planted not in stored and shaped not in stored and "***" in draft.article.lead

    # Even a draft row written with a secret in it (an older version, a hand edit) is masked on the way out.
    raw = draft.model_copy(update={"id": "draft-leaky", "state": DraftState.checked,
                                   "article": draft.article.model_copy(update={"headline": f"Leak {planted} {shaped}"})})
    report = FactCheckReport(draft_id=raw.id, verdicts=[ClaimVerdict(
        claim=Claim(id="c1", text=f"key {planted}", start=0, end=5), verdict="unverifiable", evidence=f"token {shaped}")])
    insert_checked(ledger, raw, report)
    assert publish_ready(config, ledger, retry_wait=wait_none()).errors == []
    document = json.dumps(fake.documents[publication_of(ledger, raw.id)].to_json())
    names = json.dumps([f["name"] for f in fake.files.values()])
    with ledger.begin() as connection:
        connection.execute(schema.drafts.update().values(state="checked"))
    local = config.model_copy(update={"publishing": config.publishing.model_copy(update={"target": "local"})})
    assert publish_ready(local, ledger).errors == []
    files = "\n".join(p.read_text(encoding="utf-8") for p in config.path(config.publishing.outbox).iterdir())
    for text in (document, names, files):
        assert planted not in text and shaped not in text

    # A provider that echoes the key in its error: the exception the draft stage reports is masked.
    monkeypatch.setenv("OPENAI_API_KEY", planted)
    with FakeOpenAIServer(script=[Fault(401, message=f"Incorrect API key provided: {planted}")]) as server:
        online = config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": server.base_url, "max_retries": 0})})
        with pytest.raises(Exception) as caught:
            asyncio.run(write_draft(story, pack, spec, Gateway(online, Ledger(f"sqlite:///{tmp_path / 'fresh.sqlite'}"))))
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {planted}"
    assert "HTTP 401" in str(caught.value) and planted not in str(caught.value) and planted not in repr(caught.value)
    ledger.close()
