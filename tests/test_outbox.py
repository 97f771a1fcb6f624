"""The local publisher: Markdown and self-contained HTML in the outbox, escaped, idempotent, written atomically."""

from __future__ import annotations

import errno
import os
import re
from html.parser import HTMLParser

import pytest

import pipeline.services.outbox as outbox
from agents.publisher import publish_ready
from pipeline.core.config import parse_config
from pipeline.services.gdocs import layout_draft
from pipeline.core.ledger import Ledger
from pipeline.core.models import Paragraph, SourceRef
from pipeline.services.outbox import parse_markdown, render_markdown
from tests.test_publisher import draft_row, insert_draft, make_draft, publication_row, set_draft

XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "&lt;script&gt;alert(2)&lt;/script&gt;",
    '"><svg onload=alert(3)>',
]


@pytest.fixture
def setup(tmp_path):
    config = parse_config({"publishing": {"target": "local", "outbox": "out"}}, root=tmp_path)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield config, ledger, tmp_path / "out"
    ledger.close()


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_local_publish_writes_markdown_and_html_with_every_section(setup):
    config, ledger, folder = setup
    draft, report = make_draft(unicode=True)
    insert_draft(ledger, draft, report)

    result = publish_ready(config, ledger)

    stem = "2024-03-12-storydra-bitcoin-tops-70k-as-zurich-cafe-owners-cheer"
    assert result.errors == [] and result.items_out == 1
    assert files_in(folder) == [f"{stem}.html", f"{stem}.md"]
    assert result.notes[f"link {draft.id[:8]}"] == str(folder / f"{stem}.html")
    markdown = (folder / f"{stem}.md").read_text(encoding="utf-8")
    lines = [line for line in markdown.splitlines() if line]
    assert lines[1] == f"# {draft.article.headline}"
    assert lines[2].startswith("###### Story ") and "1 contradicted" in lines[2]
    assert lines[3] == f"**{draft.article.lead}**"
    assert "- Volatility 📈 is likely to stay high [1]" in lines
    assert "1. [Zürich cafés 😀 embrace bitcoin](https://letemps.example/a) — Le Temps" in lines
    assert [line for line in lines if line.startswith("## ")] == ["## Insights", "## Sources", "## Fact-check"]
    assert '<mark class="contradicted">ETF inflows of $2 billion</mark>' in markdown
    assert "Contradicted: “ETF inflows of $2 billion”" in markdown.replace('<mark class="contradicted">', "").replace("</mark>", "")

    page = (folder / f"{stem}.html").read_text(encoding="utf-8")
    collector = TagCollector()
    collector.feed(page)
    tags = [t for t, _ in collector.tags]
    assert tags.count("h1") == 1 and tags.count("h2") == 3
    assert tags.count("ul") == 1 and tags.count("ol") == 1 and tags.count("li") == 4
    assert '<mark class="contradicted">ETF inflows of $2 billion</mark>' in page
    assert '<mark class="unverifiable">Regulators in 東京 stayed silent.</mark>' in page
    assert '<p class="lead"><strong>Prices rose 12% — the biggest jump since 2021 𝔘𝔫𝔦𝔠𝔬𝔡𝔢.</strong></p>' in page
    assert draft_row(ledger, draft.id).state == "published"
    assert (publication_row(ledger, draft.id).target, publication_row(ledger, draft.id).doc_id) == ("local", stem)


def test_untrusted_text_is_escaped_and_only_http_links_survive(setup):
    config, ledger, folder = setup
    draft, _ = make_draft()
    article = draft.article.model_copy(update={
        "headline": XSS[0],
        "lead": XSS[1],
        "body": [Paragraph(text=payload, citations=[1]) for payload in XSS[2:]] + [Paragraph(text="[1]: javascript:alert(4)", citations=[])],
        "sources": [
            SourceRef(n=1, title="Evil <b>source</b>", outlet="X", url="javascript:alert(1)"),
            SourceRef(n=2, title="Data URL", outlet="Y", url="data:text/html,<script>alert(1)</script>"),
            SourceRef(n=3, title="Quote breaker", outlet="Z", url='https://ok.example/a"onmouseover="alert(1)'),
            SourceRef(n=4, title="Fine", outlet="W", url="https://ok.example/b?x=1&y=2"),
        ],
    })
    insert_draft(ledger, draft.model_copy(update={"article": article}), None)
    assert publish_ready(config, ledger).errors == []
    [html_file] = folder.glob("*.html")
    [md_file] = folder.glob("*.md")
    page = html_file.read_text(encoding="utf-8")

    collector = TagCollector()
    collector.feed(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "article", "h1", "h2", "p", "ul", "ol", "li",
               "a", "strong", "mark"}
    assert {t for t, _ in collector.tags} <= allowed
    for tag, attrs in collector.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "a":
            assert attrs["href"].startswith("https://") and attrs["rel"] == "nofollow noopener noreferrer"
    hrefs = [attrs["href"] for tag, attrs in collector.tags if tag == "a"]
    assert hrefs == ['https://ok.example/a"onmouseover="alert(1)', "https://ok.example/b?x=1&y=2"]
    text = "".join(collector.text)
    for payload in XSS:
        assert payload in text, "the payload shows as text"
    assert "Content-Security-Policy" in page and "script-src" not in page and "default-src 'none'" in page
    assert page.count("<style>") == 1 and "<script" not in page.lower()

    markdown = md_file.read_text(encoding="utf-8")
    assert re.findall(r"(?<!\\)<(?!!--|/?mark\b)", markdown) == [], "every < from the draft is escaped"
    assert "\\<img src=x onerror=alert(1)\\>" in markdown
    assert "](javascript:" not in markdown and "](data:" not in markdown
    assert "\\[1\\]: javascript:alert(4)" in markdown, "a link definition in the text stays escaped"
    assert "\\&lt;script\\&gt;" in markdown
    assert "(link omitted: not an http(s) URL)" in markdown
    # Escaping round-trips: reading the Markdown back gives the draft's text exactly.
    _, blocks = parse_markdown(markdown)
    assert blocks[0].text == XSS[0] and blocks[2].text == XSS[1]
    assert [b.text for b in blocks[3:5]] == [f"{p} [1]" for p in XSS[2:]]


def test_republish_overwrites_the_same_files_and_a_new_headline_replaces_them(setup):
    config, ledger, folder = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish_ready(config, ledger)
    first = files_in(folder)

    set_draft(ledger, draft.id, state="checked", factcheck=None)
    publish_ready(config, ledger)
    assert files_in(folder) == first
    assert "This draft was not fact-checked." in (folder / first[1]).read_text(encoding="utf-8")

    renamed = draft.article.model_copy(update={"headline": "Bitcoin slips back"})
    set_draft(ledger, draft.id, state="checked", article=renamed.model_dump(mode="json"))
    publish_ready(config, ledger)
    stem = "2024-03-12-storydra-bitcoin-slips-back"
    assert files_in(folder) == [f"{stem}.html", f"{stem}.md"]
    assert publication_row(ledger, draft.id).doc_id == stem


def test_a_full_disk_leaves_the_previous_files_whole_and_the_draft_ready(setup, monkeypatch):
    config, ledger, folder = setup
    draft, report = make_draft()
    insert_draft(ledger, draft, report)
    publish_ready(config, ledger)
    before = {name: (folder / name).read_bytes() for name in files_in(folder)}

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outbox.os, "fsync", disk_full)
    revised = draft.article.model_copy(update={"lead": "A different lead entirely."})
    set_draft(ledger, draft.id, state="checked", article=revised.model_dump(mode="json"))
    result = publish_ready(config, ledger)

    assert result.items_out == 0 and "No space left on device" in result.errors[0]
    assert {name: (folder / name).read_bytes() for name in files_in(folder)} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no temp file is left behind"
    assert draft_row(ledger, draft.id).state == "checked"

    monkeypatch.undo()
    assert publish_ready(config, ledger).errors == []
    assert "A different lead entirely." in (folder / files_in(folder)[1]).read_text(encoding="utf-8")


@pytest.mark.parametrize("unicode", [False, True])
def test_markdown_reads_back_as_the_layout_it_was_written_from(unicode):
    draft, report = make_draft(unicode=unicode)
    blocks = layout_draft(draft, report)
    marker, parsed = parse_markdown(render_markdown(blocks, draft.id))
    assert marker == draft.id
    assert [(b.text, b.style, b.list_kind) for b in parsed] == [(b.text, b.style, b.list_kind) for b in blocks]


def test_file_names_are_safe_whatever_the_headline():
    from datetime import date

    stem = outbox.file_stem(date(2024, 1, 2), "../../etc", "../../passwd 😀 Ünïcödé!")
    assert stem == "2024-01-02-etc-passwd-unicode"
    assert outbox.file_stem(date(2024, 1, 2), "abc", "😀😀") == "2024-01-02-abc-draft"
