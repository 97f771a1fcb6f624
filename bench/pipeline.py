"""Whole-pipeline benchmark: generated feeds -> fetch -> classify -> draft -> check -> publish, all local.

A loopback HTTP server serves N generated stories, each reported by several
outlets (one RSS feed per outlet, short teasers, so every article page is
fetched and extracted). By default the model is tests/fakes/openai_server.py
answering through the real openai SDK with a fixed delay per call; its replies
come from tests/fakes/newsroom_model.py (template-valid articles, verbatim judge
quotes and corrections, one article in `--mistake-every` misstating a figure so the
checker has something to correct).

    python bench/pipeline.py [--stories 10] [--sources 3] [--delay 2.0] [--concurrency 8]

`--base-url` runs the same pipeline against your own OpenAI-compatible server
instead (Ollama, vLLM, llama.cpp, or OpenAI itself), with `--model` for every
role, the API key from the variable `--api-key-env` names (none needed by most
local servers), and `--context-window` / `--price-in` / `--price-out` for a model
config does not know:

    python bench/pipeline.py --base-url http://localhost:11434/v1 --model qwen2.5:7b-instruct \
        --context-window 32768 --concurrency 2 --stories 3

Reports per article: model calls by role (first requests) and repair requests,
tokens, cost (config prices) and the time its calls spanned; per stage: wall
time, time waiting on the model and the non-LLM overhead (stage time minus the
time any call of the stage was in flight, from llm_calls.latency_ms), and where
the N-story run spends more than the one-story run. Then checks the issue 14
goals: at most 3 model calls per article on average, at most 1 repair per call,
N stories in at most 1.5x the wall time of one, and a second run over unchanged
feeds with 0 model calls and 0 page fetches. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import json
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from html import escape as html_escape
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from agents.fact_checker import render_draft  # noqa: E402
from pipeline.core import schema  # noqa: E402
from pipeline.core.config import load_config, parse_config  # noqa: E402
from pipeline.core.ledger import as_utc  # noqa: E402
from pipeline.core.models import Article  # noqa: E402
from pipeline.flow.runner import Run  # noqa: E402
from tests.fakes.loopback import LoopbackHTTPServer  # noqa: E402
from tests.fakes.newsroom_model import NewsroomModel  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

STAGES = ["fetch", "classify", "draft", "check", "publish"]
OUTLETS = ["Chain Gazette", "Block Wire", "Ledger Post", "Hash Times", "Token Daily", "Node Report"]
NAMES = [
    "Korvane", "Tidewell", "Brightmoor", "Quillon", "Ostrava Labs", "Pellucid", "Harrowgate", "Veltrix", "Sunmere",
    "Caldera Chain", "Ironleaf", "Morrow Capital", "Zephra", "Lanternfish", "Greyhollow", "Nimbara", "Ashcombe",
    "Rivulet", "Sablefin", "Thornbury", "Wexley", "Orrin Digital", "Palomar", "Juniper Rock",
]
CITIES = ["Lisbon", "Singapore", "Zug", "Toronto", "Dubai", "Seoul", "Tallinn", "Austin", "Dublin", "Nairobi"]
PEOPLE = ["Marta Lindqvist", "Daniel Okoro", "Priya Raman", "Tomas Weber", "Aiko Tanaka", "Lucas Moreau",
          "Hana Kovac", "Rafael Duarte", "Sofia Brandt", "Omar Haddad", "Elena Petrova", "Jonas Berg"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


# --- generated stories -----------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of crypto story: how outlets title it, its lead, and the facts they all report."""

    titles: tuple[str, str, str]
    firm: str
    lead: str                   # "{Name} ... {amount} ..." without subject frame
    facts: tuple[str, ...]      # reported by every outlet, in its own order
    quote: str
    outlook: str


KINDS = [
    Kind(("{Name} loses {amount} in hot wallet hack", "Attackers drain {amount} from {Name} exchange",
          "{Name} halts withdrawals after {amount} hack"),
         "crypto exchange", "lost {amount} in a hack of its hot wallets",
         ("The attacker moved the stolen funds through {count} wallets within an hour.",
          "{Name} paused all withdrawals at {time} UTC while it investigated the breach.",
          "Customer funds in cold storage, about {pct}% of the total, were not affected."),
         "Every customer will be made whole from our own reserves", "{Name} expects to reopen withdrawals within {hours} hours."),
    Kind(("{Name} lending protocol drained of {amount} in oracle exploit", "Oracle exploit costs {Name} users {amount}",
          "{Name} exploit: attacker takes {amount} through price feed"),
         "decentralised lending protocol", "was drained of {amount} through a price oracle exploit",
         ("The attacker pushed the price feed up by {pct}% for a single block before borrowing against it.",
          "Governance voted to freeze {count} lending markets after the exploit.",
          "Liquidity providers lost about {amount} of deposits, the protocol said."),
         "We have traced the funds and are talking to the exchanges involved", "A full post-mortem is due within {hours} hours."),
    Kind(("Regulator approves {Name} spot ether ETF", "{Name} wins approval for staking ether ETF",
          "Ether ETF from {Name} cleared to trade"),
         "asset manager", "won regulator approval for a spot ether ETF that can stake up to {pct}% of its holdings",
         ("The fund will charge a fee of 0.{count} percent and list on {day}.",
          "The regulator approved the fund in a 3-2 vote after a review of {hours} days.",
          "Ether rose {pct2}% in the hour after the approval."),
         "Investors asked for staking inside a regulated product", "Trading is set to begin within {hours} days."),
    Kind(("{Name}USD stablecoin loses its dollar peg", "{Name}USD slips to 9{pct2} cents as redemptions surge",
          "Stablecoin {Name}USD depegs after {amount} in redemptions"),
         "stablecoin issuer", "saw its {Name}USD stablecoin depeg after {amount} in redemptions",
         ("{Name}USD traded as low as 9{pct2} cents on decentralised exchanges.",
          "Liquidity pools holding the stablecoin became {pct}% {Name}USD as holders sold.",
          "The issuer said reserves of {amount} back every token in circulation."),
         "Every token can be redeemed one for one", "{Name} promised an independent audit within {hours} days."),
    Kind(("{Name} sets date for mainnet upgrade", "{Name} network upgrade to cut fees by {pct}%",
          "Validators back {Name} mainnet upgrade"),
         "layer 1 blockchain", "scheduled a mainnet upgrade that cuts transaction fees by {pct}%",
         ("About {count} validators have already installed the new client software.",
          "The upgrade was tested on a public testnet for {hours} days.",
          "The hard fork activates at block {block}."),
         "This upgrade makes the network cheaper for every user", "Node operators must upgrade before the fork or fall out of sync."),
    Kind(("Regulator sues {Name} exchange over unregistered trading", "{Name} faces enforcement lawsuit from regulator",
          "Court filing: regulator accuses {Name} of illegal trading"),
         "crypto exchange", "was sued by a regulator for running an unregistered trading venue",
         ("The lawsuit seeks a penalty of {amount} and a ban on {count} products.",
          "The court set a first hearing for {day}.",
          "The enforcement action follows a review that began {hours} days ago."),
         "We will defend ourselves in court", "{Name} said trading would continue while the case proceeds."),
    Kind(("{Name} Mining buys {count} rigs in {amount} deal", "Miner {Name} orders {count} new machines",
          "{Name} Mining to lift hashrate {pct}% with new rigs"),
         "bitcoin mining company", "agreed to buy {count} mining rigs for {amount}",
         ("The new machines will raise the company's hashrate by {pct}%.",
          "Deliveries start on {day} and finish within {hours} days.",
          "Mining difficulty rose {pct2}% in the last adjustment."),
         "Efficient machines are the only answer to rising difficulty", "{Name} expects the rigs to be running by next quarter."),
    Kind(("{Name} wins MiCA license", "{Name} becomes licensed under MiCA rules",
          "Regulator grants {Name} a MiCA license"),
         "crypto custodian", "received a license under the MiCA rules to serve clients in {count} countries",
         ("The license lets {Name} offer custody and trading services across the bloc.",
          "The regulator reviewed the application for {hours} days.",
          "{Name} holds {amount} of client assets."),
         "Clear rules let us grow with confidence", "{Name} plans to open offices in {count} more cities."),
    Kind(("{Name} rollup opens testnet", "Layer 2 rollup {Name} launches public testnet",
          "{Name} layer 2 testnet goes live"),
         "layer 2 rollup", "launched a public testnet for its layer 2 rollup",
         ("The rollup posts its data to ethereum every {count} seconds.",
          "Fees on the testnet were {pct}% lower than on the main chain.",
          "{Name} raised {amount} from investors last year."),
         "The testnet is open to every developer from today", "A mainnet launch is planned within {hours} days."),
    Kind(("{Name} governance vote cuts lending rates", "{Name} DAO lowers borrowing costs by {pct}%",
          "Lending rates fall at {Name} after governance vote"),
         "DeFi lending protocol", "approved a governance proposal that cuts borrowing rates by {pct}%",
         ("The proposal passed with {pct2}% of votes in favour.",
          "The change applies to {count} lending markets holding {amount} of liquidity.",
          "Yield for depositors falls by a smaller amount, the proposal said."),
         "Lower rates should bring borrowers back", "The new rates take effect on {day}."),
    Kind(("Phishing campaign targets {Name} wallet users", "{Name} warns of phishing kit after {amount} stolen",
          "Fake {Name} airdrop pages steal {amount}"),
         "wallet provider", "warned users of a phishing campaign that has stolen {amount}",
         ("The attackers built {count} fake airdrop pages that copy the {Name} site.",
          "Victims signed transactions that handed the attacker control of their tokens.",
          "Security researchers linked the phishing kit to {pct} earlier thefts."),
         "We will never ask you to sign a transaction to claim an airdrop", "{Name} is adding warnings to its app within {hours} days."),
    Kind(("{Name} token rallies {pct}% on record trading", "Trading in {Name} token hits record as price jumps {pct}%",
          "{Name} rally lifts market cap to {amount}"),
         "crypto project", "saw its token rally {pct}% as trading volume hit a record",
         ("The token's market cap reached {amount} at the peak.",
          "Trading volume on {count} exchanges topped the previous record by {pct2}%.",
          "Bitcoin and ether were little changed over the same period."),
         "Demand came from new users, not from a few large buyers", "Analysts said the price could stay volatile for {hours} days."),
]


@dataclass(frozen=True)
class Report:
    outlet: int
    title: str
    url: str
    teaser: str
    paragraphs: list[str]
    published: datetime


def story_reports(k: int, sources: int, base: str, now: datetime) -> list[Report]:
    """Story k as reported by `sources` outlets: same facts, each outlet's own words and order."""
    kind = KINDS[k % len(KINDS)]
    name = NAMES[k % len(NAMES)] + ("" if k < len(NAMES) else f" {k // len(NAMES) + 1}")
    values = {
        "Name": name, "amount": f"${12 + 7 * k}.{k % 10} million", "count": str(14 + 3 * k), "pct": str(20 + k % 60),
        "pct2": str(2 + k % 7), "hours": str(48 + 24 * (k % 3)), "day": DAYS[k % len(DAYS)], "block": f"{19_000_000 + 1000 * k:,}",
        "time": f"{3 + k % 6:02d}:{10 + k % 50:02d}",
    }
    person, city = PEOPLE[k % len(PEOPLE)], CITIES[k % len(CITIES)]
    fill = lambda text: text.format(**values)  # noqa: E731
    out = []
    for o in range(sources):
        v = o % 3
        lead = fill(kind.lead)
        leads = [
            f"{name}, a {city}-based {kind.firm}, said on {values['day']} that it {lead}.",
            f"{name} {lead}, the {kind.firm} said on {values['day']}.",
            f"The {city}-based {kind.firm} {name} said on {values['day']} that it {lead}.",
        ]
        quotes = [
            f"\"{fill(kind.quote)},\" {person}, chief executive of {name}, said in a statement.",
            f"{person}, the chief executive, told {OUTLETS[o % len(OUTLETS)]}: \"{fill(kind.quote)}.\"",
            f"\"{fill(kind.quote)},\" chief executive {person} said.",
        ]
        facts = [fill(f) for f in kind.facts]
        facts = facts[v:] + facts[:v]  # each outlet leads with a different fact
        background = [
            f"{name} was founded in {2015 + k % 8} and employs about {40 + 5 * k} people.",
            f"The company has about {1 + k % 5}.{k % 10} million users in {10 + k % 30} countries.",
            f"{name} last raised money in {2019 + k % 5}, when investors valued it at ${100 + 10 * k} million.",
        ]
        paragraphs = [
            leads[v],
            " ".join(facts[:2]),
            quotes[v],
            facts[2] + " " + background[v],
            fill(kind.outlook) + " " + background[(v + 1) % 3],
        ]
        title = fill(kind.titles[v])
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        out.append(Report(o, title, f"{base}/o{o}/{k}-{slug}.html", leads[v], paragraphs,
                          now - timedelta(minutes=7 * k + 3 * o + 5)))
    return out


def feed_xml(outlet: int, reports: list[Report], base: str) -> bytes:
    items = "".join(
        f"<item><title>{escape(r.title)}</title><link>{escape(r.url)}</link><guid>{escape(r.url)}</guid>"
        f"<pubDate>{format_datetime(r.published)}</pubDate><description>{escape(r.teaser)}</description></item>"
        for r in reports
    )
    name = OUTLETS[outlet % len(OUTLETS)]
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{escape(name)}</title>'
            f"<link>{base}/o{outlet}/</link>{items}</channel></rss>").encode()


def page_html(report: Report) -> bytes:
    outlet = OUTLETS[report.outlet % len(OUTLETS)]
    body = "".join(f"<p>{html_escape(p)}</p>" for p in report.paragraphs)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html_escape(report.title)} | {html_escape(outlet)}</title>"
        f"<link rel='canonical' href='{html_escape(report.url)}'><meta property='og:title' content='{html_escape(report.title)}'>"
        f"</head><body><header><nav><a href='/'>Home</a> <a href='/markets'>Markets</a> <a href='/policy'>Policy</a></nav></header>"
        f"<main><article><h1>{html_escape(report.title)}</h1><p class='byline'>By staff, {html_escape(outlet)}</p>{body}</article>"
        f"<aside><h2>Most read</h2><ul><li><a href='/x'>Other news</a></li></ul></aside></main>"
        f"<footer><p>Copyright {html_escape(outlet)}. All rights reserved.</p></footer></body></html>"
    ).encode()


class NewsSite:
    """Feeds (with ETag, so an unchanged feed answers 304) and pages on loopback; counts what was served."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.served: Counter = Counter()
        lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                found = site.files.get(path)
                kind = "feed" if path.endswith(".xml") else "page"
                if found is None:
                    self.send_error(404)
                    return
                body, content_type = found
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    with lock:
                        site.served[f"{kind} 304"] += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                with lock:
                    site.served[kind] += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def publish(self, stories: int, sources: int, now: datetime) -> None:
        by_outlet: dict[int, list[Report]] = defaultdict(list)
        for k in range(stories):
            for report in story_reports(k, sources, self.base, now):
                by_outlet[report.outlet].append(report)
                self.files[report.url.removeprefix(self.base)] = (page_html(report), "text/html; charset=utf-8")
        for outlet, reports in by_outlet.items():
            self.files[f"/o{outlet}/feed.xml"] = (feed_xml(outlet, reports, self.base), "application/rss+xml")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- one measured scenario ------------------------------------------------------------------------


@dataclass
class RunResult:
    wall_s: float
    stages: list                                   # StageReports
    calls: list[dict]                              # this run's llm_calls rows
    served: Counter
    model_requests: int


@dataclass
class Scenario:
    stories: int
    first: RunResult
    second: RunResult
    items: int
    articles: list[dict] = field(default_factory=list)


ROLES = ("classifier", "writer", "reviser", "judge")
DEFAULT_MODEL = "gpt-4o-mini"  # what the built-in fake answers as, priced by config.toml's defaults


def bench_config(workspace: Path, site: NewsSite, model_url: str, args, stories: int):
    beat = load_config(ROOT / "config.toml").topics  # the newsroom's own beat and keywords
    fake = not args.base_url
    model = args.model or DEFAULT_MODEL
    llm = {
        "base_url": model_url, "api_key_env": args.api_key_env, "concurrency": args.concurrency,
        "structured_output": args.structured_output, "run_budget_usd": args.budget,
        # The fake never fails; a real server may, and gets the gateway's retries and a timeout it can meet.
        "max_retries": 0 if fake else 2, "timeout": max(30.0, args.delay * 10) if fake else args.timeout,
    }
    if args.model:
        llm["models"] = dict.fromkeys(ROLES, model)
    if args.context_window:
        llm["context_windows"] = {model: args.context_window}
    if args.price_in is not None or args.price_out is not None:
        llm["prices"] = {model: {"input": args.price_in or 0.0, "output": args.price_out or 0.0}}
    return parse_config(
        {
            "newsroom": {"name": "Bench Desk"},
            "topics": [t.model_dump() for t in beat],
            "feeds": [{"name": f"outlet-{o}", "url": f"{site.base}/o{o}/feed.xml", "full_text": "auto"} for o in range(args.sources)],
            "llm": llm,
            "stories": {"max_per_run": max(stories, 1), "window_hours": 48},
            "limits": {"allow_private_hosts": True, "min_full_text_chars": 800},
            "publishing": {"target": "local", "outbox": "outbox"},
        },
        root=workspace,
    )


def reached_provider(call: dict) -> bool:
    """A llm_calls row for a request the model server answered or failed (not a cache hit, budget or breaker stop)."""
    return not call["cache_hit"] and call["outcome"] not in ("budget", "circuit_open")


def is_repair(call: dict) -> bool:
    """A repair request: the conversation sent already holds one of the model's replies."""
    return any(m.get("role") == "assistant" for m in json.loads(call["prompt"] or "[]"))


def run_once(config, site: NewsSite, server: FakeOpenAIServer | None) -> RunResult:
    served_before = Counter(site.served)
    requests_before = len(server.chat_requests) if server is not None else 0
    run = Run(config, command="bench")
    started = time.perf_counter()
    try:
        stages = run.run_stages(STAGES)
    finally:
        run.finish()
    wall = time.perf_counter() - started
    with run.ledger.engine.connect() as connection:
        calls = [dict(r._mapping) for r in connection.execute(
            select(schema.llm_calls).where(schema.llm_calls.c.run_id == run.id).order_by(schema.llm_calls.c.id)
        )]
    run.ledger.close()
    # Requests the server saw; against someone else's server, the gateway's own record of them.
    requests = len(server.chat_requests) - requests_before if server is not None else sum(map(reached_provider, calls))
    return RunResult(wall, stages, calls, site.served - served_before, requests)


def model_server(args):
    """The built-in fake model (a context manager giving the server), or nothing when --base-url names a real one."""
    if args.base_url:
        return contextlib.nullcontext(None)
    return FakeOpenAIServer(reply=NewsroomModel(mistake_every=args.mistake_every), delay=args.delay)


def scenario(stories: int, args) -> Scenario:
    site = NewsSite()
    site.publish(stories, args.sources, datetime.now(timezone.utc))
    with tempfile.TemporaryDirectory(prefix="newsdesk-bench-") as tmp, model_server(args) as server:
        config = bench_config(Path(tmp), site, args.base_url or server.base_url, args, stories)
        first = run_once(config, site, server)
        second = run_once(config, site, server)
        from pipeline.core.ledger import Ledger

        ledger = Ledger.from_config(config)
        with ledger.engine.connect() as connection:
            drafts = connection.execute(select(schema.drafts)).all()
            story_titles = dict(connection.execute(select(schema.stories.c.key, schema.stories.c.title)).all())
            items = connection.execute(select(schema.items.c.id)).all()
        ledger.close()
        result = Scenario(stories, first, second, len(items))
        result.articles = attribute_calls(first.calls, drafts, story_titles)
    site.close()
    return result


def warm_up(args) -> None:
    """One throwaway story through every stage against the built-in fake at no delay: imports, the embedding
    model, Chroma and the HTTP stacks are loaded before anything is timed, so the one-story baseline does not
    carry the cold start (it did: its fetch and classify took 2-3x the 10-story run's)."""
    scenario(1, argparse.Namespace(**{**vars(args), "base_url": None, "delay": 0.0}))


# --- per-article accounting --------------------------------------------------------------------------


def _unfence(text: str) -> str:
    return text.replace("<\\/", "</")


def _user(prompt: str) -> str:
    return next((m["content"] for m in json.loads(prompt) if m["role"] == "user"), "")


def attribute_calls(calls: list[dict], drafts, story_titles: dict[str, str]) -> list[dict]:
    """The model requests of each article: writer by story title, reviser and judge by headline.
    `calls` counts first requests by role, `repairs` the repair requests that followed them."""
    articles = {}
    by_title, by_headline = {}, {}
    for d in drafts:
        article = Article.model_validate(d.article)
        entry = {"story": story_titles.get(d.story_key, d.story_key), "headline": article.headline, "state": d.state,
                 "template": d.template,
                 "revisions": sum(1 for r in (d.factcheck or {}).get("revisions", []) if r.get("spans_revised")),
                 "calls": Counter(), "repairs": 0, "tokens": 0, "cost": 0.0, "spans": []}
        articles[d.id] = entry
        by_title[story_titles.get(d.story_key, "")] = d.id
        by_headline[article.headline] = d.id
        for s in render_draft(article).sentences:
            by_headline.setdefault(s.text, d.id)
    for call in calls:
        if not reached_provider(call):
            continue
        role, prompt = call["role"], call["prompt"] or "[]"
        owner = None
        if role == "writer":
            match = re.search(r"<story>\nTitle: (.*?)\n", _user(prompt))
            owner = by_title.get(_unfence(match.group(1))) if match else None
        elif role == "reviser":
            match = re.search(r'"headline": "(.*?)",', _user(prompt))
            owner = by_headline.get(_unfence(json.loads(f'"{match.group(1)}"'))) if match else None
        elif role == "judge":
            # One check call per draft (or per token-sized part): its prompt names the headline as context.
            match = re.search(r"<context>(.*?)</context>", _user(prompt))
            owner = by_headline.get(_unfence(match.group(1))) if match else None
        if owner is None:
            continue
        entry = articles[owner]
        if is_repair(call):
            entry["repairs"] += 1
        else:
            entry["calls"][role] += 1
        entry["tokens"] += call["prompt_tokens"] + call["completion_tokens"]
        entry["cost"] += call["cost_usd"]
        end = as_utc(call["created"])
        entry["spans"].append((end - timedelta(milliseconds=call["latency_ms"]), end))
    return sorted(articles.values(), key=lambda a: a["story"])


def busy_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """Length of the union of [start, end] intervals: the time at least one call was in flight."""
    total, current = 0.0, None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += (current[1] - current[0]).total_seconds()
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return total


def stage_waits(result: RunResult) -> dict[str, float]:
    by_stage: dict[str, list] = defaultdict(list)
    for call in result.calls:
        if call["cache_hit"] or call["outcome"] in ("budget", "circuit_open"):
            continue
        end = as_utc(call["created"])
        by_stage[call["stage"] or ""].append((end - timedelta(milliseconds=call["latency_ms"]), end))
    return {stage: busy_seconds(spans) for stage, spans in by_stage.items()}


# --- printing -------------------------------------------------------------------------------------------


def print_articles(s: Scenario) -> None:
    print(f"\nPer article (first run, {s.stories} stories, {s.items} items; calls are first requests, repairs counted apart):")
    print(f"  {'story':44} {'template':>8} {'state':>15} {'writer':>6} {'judge':>5} {'revise':>6} {'calls':>5} {'repair':>6} "
          f"{'tokens':>7} {'cost $':>8} {'LLM span s':>10}")
    for a in s.articles:
        c = a["calls"]
        span = (max(e for _, e in a["spans"]) - min(b for b, _ in a["spans"])).total_seconds() if a["spans"] else 0.0
        print(f"  {a['story'][:44]:44} {a['template']:>8} {a['state']:>15} {c['writer']:>6} {c['judge']:>5} {c['reviser']:>6} "
              f"{sum(c.values()):>5} {a['repairs']:>6} {a['tokens']:>7} {a['cost']:>8.4f} {span:>10.1f}")


def print_stages(label: str, result: RunResult) -> None:
    waits = stage_waits(result)
    print(f"\n{label}: wall {result.wall_s:.1f}s, {result.model_requests} model request(s), served {dict(result.served)}")
    print(f"  {'stage':9} {'in':>4} {'out':>4} {'err':>4} {'calls':>5} {'tokens':>7} {'cost $':>8} {'time s':>7} {'model s':>7} {'overhead s':>10}")
    for r in result.stages:
        wait = waits.get(r.stage, 0.0)
        print(f"  {r.stage:9} {r.items_in:>4} {r.items_out:>4} {len(r.errors):>4} {r.llm_calls:>5} {r.tokens:>7} {r.cost_usd:>8.4f} "
              f"{r.duration_s:>7.2f} {wait:>7.2f} {max(0.0, r.duration_s - wait):>10.2f}")
        for error in r.errors[:3]:
            print(f"    error: {error[:200]}")


def print_extra_time(baseline: Scenario, main_run: Scenario, args) -> None:
    """Per stage, how much longer the N-story run took than the one-story run, split into model and other time."""
    one, many = baseline.first, main_run.first
    waits_one, waits_many = stage_waits(one), stage_waits(many)
    times_one = {r.stage: r.duration_s for r in one.stages}
    print(f"\nWhere the {main_run.stories}-story run spends more than the one-story run "
          f"({many.wall_s - one.wall_s:+.1f}s in all; llm.concurrency {args.concurrency}):")
    print(f"  {'stage':9} {'1 story s':>9} {f'{main_run.stories} stories s':>12} {'extra s':>8} {'model s':>8} {'other s':>8} {'waves':>6}")
    for r in many.stages:
        extra = r.duration_s - times_one.get(r.stage, 0.0)
        model = waits_many.get(r.stage, 0.0) - waits_one.get(r.stage, 0.0)
        # Rounds of model calls the cap forces when every article asks at once (writer in draft, judge in check).
        waves = math.ceil(main_run.stories / args.concurrency) if r.stage in ("draft", "check") else ""
        print(f"  {r.stage:9} {times_one.get(r.stage, 0.0):>9.2f} {r.duration_s:>12.2f} {extra:>+8.2f} {model:>+8.2f} "
              f"{extra - model:>+8.2f} {waves:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stories", type=int, default=10, help="stories in the feeds (default 10)")
    parser.add_argument("--sources", type=int, default=3, help="outlets reporting each story (default 3)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the built-in fake model takes per call (default 2.0)")
    parser.add_argument("--concurrency", type=int, default=8, help="llm.concurrency: calls in flight at once (default 8, as config.toml)")
    parser.add_argument("--mistake-every", type=int, default=3, help="built-in fake: every k-th article misstates a figure (0: none)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-story run (no wall-time ratio)")
    parser.add_argument("--repeat", type=int, default=1, help="run the 1-story and N-story scenarios this many times "
                                                              "and report the pair with the median ratio (default 1)")
    own = parser.add_argument_group("your own model server (instead of the built-in fake)")
    own.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://localhost:11434/v1 (Ollama), "
                                        "http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp)")
    own.add_argument("--model", help=f"model name for every role (default {DEFAULT_MODEL})")
    own.add_argument("--api-key-env", default="NEWSDESK_BENCH_KEY",
                     help="environment variable holding the API key (default NEWSDESK_BENCH_KEY; unset is fine for most local servers)")
    own.add_argument("--context-window", type=int, help="the model's context window in tokens (llm.context_windows); "
                                                         "unknown models get llm.default_context_window, 8192")
    own.add_argument("--structured-output", choices=["auto", "json_schema", "json_object"], default="auto",
                     help="llm.structured_output (default auto: strict json_schema, json_object if the server rejects it)")
    own.add_argument("--price-in", type=float, help="USD per million prompt tokens, for cost (unknown models count $0)")
    own.add_argument("--price-out", type=float, help="USD per million completion tokens")
    own.add_argument("--timeout", type=float, default=300.0, help="seconds per request against your server (default 300)")
    own.add_argument("--budget", type=float, default=100.0, help="llm.run_budget_usd per run (default 100)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.stories < 1 or args.sources < 1 or args.sources > len(OUTLETS):
        parser.error(f"--stories must be >= 1 and --sources between 1 and {len(OUTLETS)}")
    if args.stories > len(KINDS):
        print(f"note: more than {len(KINDS)} stories reuse story kinds; similar stories may be clustered together")

    if args.base_url:  # a bad URL is one line naming it, before anything runs
        from pipeline.core.config import ConfigError

        try:
            parse_config({"llm": {"base_url": args.base_url}}, root=ROOT)
        except ConfigError as exc:
            parser.error(f"--base-url: {str(exc).splitlines()[-1].strip(' -')}")
    warm_up(args)
    if args.base_url:
        server = f"{args.base_url}, model {args.model or DEFAULT_MODEL}"
    else:
        server = (f"built-in fake model at {args.delay}s/call, one article in {args.mistake_every or 'no'} misstating a figure")
    print(f"Pipeline benchmark: {args.stories} stories x {args.sources} sources, {server}, llm.concurrency {args.concurrency}")
    ratios = []
    for _ in range(args.repeat):  # one story, then N, in turns: load on a shared machine hits both alike
        baseline = None if args.no_baseline or args.stories == 1 else scenario(1, args)
        main_run = scenario(args.stories, args)
        if baseline is not None:
            ratios.append((main_run.first.wall_s / baseline.first.wall_s, baseline, main_run))
    if ratios:  # the pair with the median ratio is the one reported in detail
        ratios.sort(key=lambda r: r[0])
        _, baseline, main_run = ratios[(len(ratios) - 1) // 2]

    if baseline is not None:
        print_stages("One story, first run", baseline.first)
    print_stages(f"{args.stories} stories, first run", main_run.first)
    print_articles(main_run)
    print_stages(f"{args.stories} stories, second run over unchanged feeds", main_run.second)
    if baseline is not None:
        print_extra_time(baseline, main_run, args)

    articles = [a for a in main_run.articles if a["calls"]]
    per_article = [sum(a["calls"].values()) for a in articles]
    paid = [c for c in main_run.first.calls if reached_provider(c)]
    repairs = [c for c in paid if is_repair(c)]
    first_requests = len(paid) - len(repairs)
    classify_calls = sum(1 for c in paid if c["role"] == "classifier" and not is_repair(c))
    total_tokens = sum(c["prompt_tokens"] + c["completion_tokens"] for c in paid)
    total_cost = sum(c["cost_usd"] for c in paid)
    roles = Counter(c["role"] for c in paid if not is_repair(c))
    repair_roles = Counter(c["role"] for c in repairs)
    mean_calls = sum(per_article) / max(len(per_article), 1)
    article_repairs = sum(a["repairs"] for a in articles)
    repairs_per_call = len(repairs) / max(first_requests, 1)
    states = Counter(a["state"] for a in main_run.articles)
    print("\nTotals, first run: calls " + ", ".join(f"{role} {n}" for role, n in sorted(roles.items())),
          "| repairs " + (", ".join(f"{role} {n}" for role, n in sorted(repair_roles.items())) or "none"),
          f"| {total_tokens} tokens, ${total_cost:.4f} | drafts " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    print(f"Classification: {classify_calls} call(s) for {main_run.items} items = "
          f"{100 * classify_calls / max(main_run.items, 1):.1f} calls per 100 items (batched, not counted per article)")
    print(f"Per article: {mean_calls:.2f} model calls on average (min {min(per_article, default=0)}, max {max(per_article, default=0)}) "
          f"+ {article_repairs / max(len(articles), 1):.2f} repairs; {repairs_per_call:.2f} repairs per call over all "
          f"{first_requests} calls; {total_tokens / max(len(articles), 1):.0f} tokens and ${total_cost / max(len(articles), 1):.4f} "
          f"(all calls incl. classification, per article), {main_run.first.wall_s / max(len(articles), 1):.1f}s of wall time")
    overhead = sum(max(0.0, r.duration_s - stage_waits(main_run.first).get(r.stage, 0.0)) for r in main_run.first.stages)
    print(f"Non-LLM overhead: {overhead:.1f}s for the run = {overhead / max(len(articles), 1):.2f}s per article "
          f"(fetch, extraction, embedding, clustering, research, rules, publishing)")

    goals = []
    goals.append(("<= 3 model calls per article on average", bool(articles) and mean_calls <= 3,
                  f"mean {mean_calls:.2f}, max {max(per_article, default=0)} over {len(articles)} article(s)"))
    goals.append(("<= 1 repair per call", repairs_per_call <= 1, f"{len(repairs)} repair(s) for {first_requests} call(s)"))
    ratio = None
    if baseline is not None:
        ratio = main_run.first.wall_s / baseline.first.wall_s
        every = f" (runs: {', '.join(f'{r:.2f}x' for r, _, _ in ratios)})" if len(ratios) > 1 else ""
        goals.append((f"{args.stories} stories in <= 1.5x the wall time of 1", ratio <= 1.5,
                      f"{main_run.first.wall_s:.1f}s vs {baseline.first.wall_s:.1f}s = {ratio:.2f}x{every}"))
    second = main_run.second
    second_calls = sum(map(reached_provider, second.calls))
    goals.append(("rerun over unchanged feeds: 0 model calls, 0 page fetches",
                  second_calls == 0 and second.model_requests == 0 and second.served.get("page", 0) == 0,
                  f"{second_calls} call(s), {second.model_requests} model request(s), {second.served.get('page', 0)} page fetch(es), "
                  f"feeds {second.served.get('feed', 0)} x 200 / {second.served.get('feed 304', 0)} x 304"))
    print("\nGoals:")
    for name, ok, detail in goals:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")

    speed = f"{args.stories}/1 stories wall ratio {ratio:.2f}x" if ratio is not None else "no baseline"
    at = f"{args.base_url} ({args.model or DEFAULT_MODEL})" if args.base_url else f"{args.delay}s/call"
    print(f"pipeline: {args.stories} stories x {args.sources} sources at {at}: {mean_calls:.2f} model calls/article (goal <= 3), "
          f"{repairs_per_call:.2f} repairs/call (goal <= 1), ${total_cost:.4f} (${total_cost / max(len(articles), 1):.4f}/article), "
          f"{main_run.first.wall_s:.1f}s wall, {speed} (goal <= 1.5x), rerun {second_calls} model calls "
          f"and {second.served.get('page', 0)} page fetches (goal 0/0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
