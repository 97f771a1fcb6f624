"""Off-story and unresolved-reference detection (issue 13 part 4): does the checker check the story, not just the sentence?

Faithful drafts:
- the demo's offline drafts: the sample feeds (examples/) through fetch, classify and draft with the editorial
  clock fixed at 2026-11-22 21:00 UTC, exactly as `run.py demo` drafts them (whatever the writer produces now);
- the same for the near-miss set (examples/near_miss, as of 2026-11-27 21:00 UTC): pairs of events on the same
  beat and day with different actors (two exchange hacks, two ETF rulings, two penalties, two depegs, two
  funding rounds), the hardest material to tell "another event" from "this story" with;
- hand-written faithful drafts over the same sample items (HAND_DRAFTS): copied story sentences, paragraph
  openers that an earlier sentence resolves ("The exchange said ...", "The penalty ..." after the penalty,
  "Lindqvist said she ..."), and background framed as such ("Separately, Arcspan said ...");
- every item of every story, of both sets, as a draft of its own story: its title the headline, its first
  paragraph the lead, its other paragraphs the body, the story's items as story sources and two other items of
  the set as background distractors. A reporter's own article is faithful to its story, and its paragraph
  openers ("The exchange said", "She said", "It expects") are what the reference rule must not trip on;
- the 12 past house-style articles (examples/articles), each checked against its own text as its one story
  source: only the reference rule can fire there. They were not looked at while the rules were written (held out).

Planted variants: into each faithful draft, one sentence of another story's item, with that item added to the
pack as a background source (as the researcher would) and cited, in three places: appended to a body paragraph,
as a new body paragraph, and as a new insight. A planted sentence counts as caught when the checker labels it
off_story or unresolved_reference; "with its source" when the off_story verdict cites the planted item.
Sentences that name one of the story's own actors are about the story's subject by the issue's definition
("its subject entity must be the story's"): they are left out of the recall and reported on their own line.

False alarms, on the faithful drafts, claims labelled off_story or unresolved_reference:
- hand-written drafts: every such label is a false alarm;
- demo drafts: only claims in parts that cite story sources alone count (a part citing a background source is the
  writer's use of background, which may well be off-story: reported, not scored). An unresolved_reference there is
  not counted as a false alarm when the sentence was torn from its context: in its own source it follows a sentence
  that the draft does not have before it (e.g. "The penalty is a fraction ..." without the penalty). Every
  label on the demo drafts is listed with --verbose, so the call can be checked by eye.

Rules mode, lexical retrieval (no embeddings, no model): deterministic.

    python bench/offstory.py [--seed 13] [--verbose]

`measure()` returns the numbers (bench/editorial.py can call it, or register `section`). The last line printed is
the headline: `off-story: recall R (caught/planted) false alarms F (flagged/faithful claims)`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.fact_checker import EvidenceIndex, check_article, render_draft, sources_from_pack, strip_citation_markers  # noqa: E402
from pipeline.core.models import Article, ClaimVerdict, FactCheckReport, Insight, Paragraph, ResearchPack, SourceDoc  # noqa: E402
from pipeline.text.sentences import split_sentences  # noqa: E402

AS_OF = datetime(2026, 11, 22, 21, 0, tzinfo=timezone.utc)
EXAMPLES = ROOT / "examples"
# name -> (folder, editorial clock); "sample" is the demo's own data, prepared exactly as `run.py demo` prepares it.
SETS = {
    "sample": (EXAMPLES, AS_OF),
    "near_miss": (EXAMPLES / "near_miss", datetime(2026, 11, 27, 21, 0, tzinfo=timezone.utc)),
}
STORY_LABELS = ("off_story", "unresolved_reference")
PLACEMENTS = ("body_append", "body_paragraph", "insight")
WINDOW_SENTENCES = 4


# --- material ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    text: str
    outlet: str
    url: str
    published: datetime
    story_key: str | None


@dataclass
class Case:
    name: str
    origin: str                  # "demo" | "hand" | "source" | "house"
    story_key: str
    article: Article
    pack: ResearchPack
    set_name: str = "sample"     # planted sentences come from items of the same set


def demo_material(workdir: Path, set_name: str = "sample") -> tuple[list[Case], dict[str, Item]]:
    """A set's offline drafts (fetch, classify, draft at the set's clock) and every relevant item by URL."""
    from sqlalchemy import select

    from pipeline.core import schema
    from pipeline.core.clock import fixed_clock
    from pipeline.core.config import load_config
    from pipeline.cli.demo import prepare_workspace
    from pipeline.core.ledger import as_utc
    from pipeline.flow.runner import Run

    folder, as_of = SETS[set_name]
    if set_name == "sample":
        workspace = prepare_workspace(workdir / "demo")
    else:
        workspace = workdir / set_name
        shutil.copytree(folder, workspace, ignore=shutil.ignore_patterns("data", "outbox"))
    config = load_config(workspace / "config.toml")
    run = Run(config, command="bench-offstory", clock=fixed_clock(as_of))
    try:
        reports = run.run_stages(["fetch", "classify", "draft"])
    finally:
        run.finish()
    errors = [e for r in reports for e in r.errors]
    if errors:
        print(f"warning: demo stages reported: {'; '.join(errors)[:400]}", file=sys.stderr)
    with run.ledger.engine.connect() as connection:
        drafts = connection.execute(select(schema.drafts).order_by(schema.drafts.c.created)).all()
        rows = connection.execute(select(schema.items).where(schema.items.c.state == "clustered")).all()
    items = {
        r.canonical_url: Item(r.id, r.title, r.text, r.source, r.url, as_utc(r.published), r.story_key) for r in rows
    }
    cases = [
        Case(Article.model_validate(d.article).headline, "demo", d.story_key, Article.model_validate(d.article),
             ResearchPack.model_validate(d.research), set_name)
        for d in drafts if d.research is not None
    ]
    return cases, items


# Hand-written faithful drafts: sentences from the stories' own items (a few lightly edited), openers an earlier
# sentence resolves, and background framed as background. Sources are numbered in the order of story + background.
HAND_DRAFTS = [
    {
        "story": ["https://chainledger.example/news/2026/11/18/korvex-hot-wallet-breach",
                  "https://satoshiwire.example/news/2026/11/18/korvex-attacker-stolen-key",
                  "https://blockstreet.example/2026/11/18/korvex-halts-withdrawals"],
        "background": ["https://defidispatch.example/posts/arcspan-bridge-signature-replay"],
        "headline": "Korvex exchange drained of $48.2 million in hot-wallet breach",
        "lead": "Korvex, a Lisbon-based cryptocurrency exchange with about 1.3 million registered users, said attackers "
                "drained $48.2 million from its hot wallets early on Wednesday, November 18, in the largest exchange "
                "breach of the year so far.",
        "body": [
            ("The exchange said its monitoring systems flagged unusual outflows at 03:42 UTC. By 04:05 UTC it had "
             "paused all withdrawals across the platform.", [1]),
            ("It expects to reopen withdrawals within 72 hours once its wallets have been rebuilt with new keys. "
             "Chief executive Marta Lindqvist said Korvex would cover the full loss from its $210 million Secure "
             "Asset Reserve.", [1, 2]),
            ("Korvex's hot wallets were protected by a 2-of-3 multisignature scheme, in which any two of three keys "
             "must approve a transfer. Halvane said the attacker had one of those keys and was able to trick the "
             "exchange's automated withdrawal system into supplying a second approval.", [2]),
            ("The breach is the largest at a centralized exchange this year. Korvex said it had reported the theft "
             "to Portuguese police.", [3]),
            ("Separately, Arcspan said it would compensate affected users from its treasury, which holds about "
             "$19 million.", [4]),
        ],
        "insights": [
            ("Korvex keeps roughly 94% of customer assets in offline cold storage, which the company said was "
             "untouched.", [3]),
            ("Lindqvist said she expected withdrawals to restart within 72 hours.", [3]),
        ],
    },
    {
        "story": ["https://chainledger.example/news/2026/11/20/judge-rules-latt-resales-not-securities",
                  "https://blockstreet.example/2026/11/20/lattice-partial-victory-fdmc",
                  "https://satoshiwire.example/news/2026/11/20/coleman-ruling-lattice-penalty"],
        "background": [],
        "headline": "Judge rules Lattice token resales were not securities offerings",
        "lead": "A federal judge on Friday, November 20, ruled that sales of Lattice Protocol's LATT token on crypto "
                "exchanges were not securities transactions, handing the company a partial win in its fight with "
                "the Federal Digital Markets Commission.",
        "body": [
            ("U.S. District Judge Harriet Coleman found that buyers on secondary markets did not enter into "
             "investment contracts with Lattice Protocol Inc., because they could not know who was selling to them "
             "and were not promised any share of the company's efforts.", [1]),
            ("The judge ordered Lattice to pay a civil penalty of $12.5 million, far below the amount the regulator "
             "had sought when it filed the case in March 2025.", [1]),
            ("The penalty is a fraction of what the commission had sought, and Lattice said it could pay it from "
             "existing reserves without selling tokens.", [3]),
            ("She found that $212 million of LATT sold directly to institutional investors in 2023 and 2024 were "
             "unregistered securities offerings, because those buyers signed agreements with Lattice and expected "
             "the company's work to increase the token's value.", [3]),
            ('The FDMC is "reviewing the decision and considering our options," agency spokesperson Dana Whitfield '
             "said.", [3]),
        ],
        "insights": [
            ("LATT rose 18% in the hours after the ruling.", [1]),
            ("The commission, which filed the lawsuit in March 2025, had asked for a far larger sum and for a ban on "
             "further token sales, which the judge declined to order.", [2]),
        ],
    },
    {
        "story": ["https://defidispatch.example/posts/tidepool-usdv-pool-imbalance",
                  "https://satoshiwire.example/news/2026/11/21/usdv-loses-peg-raman-promises-audit",
                  "https://chainledger.example/news/2026/11/21/usdv-slips-to-91-cents"],
        "background": ["https://chainledger.example/news/2026/11/18/korvex-hot-wallet-breach"],
        "headline": "USDV slips to 91 cents as redemptions hit $640 million",
        "lead": "USDV, the dollar-pegged stablecoin issued by Vantor Labs, fell as low as $0.913 on Saturday, "
                "November 21, after holders rushed to redeem $640 million of the token in 24 hours.",
        "body": [
            ("The slide began after Vantor said its monthly reserve attestation, prepared by accounting firm "
             "Brightwater & Co. and due on November 15, had been delayed. The token touched its low at 09:15 UTC.", [3]),
            ('Vantor CEO Priya Raman said every USDV is backed "one-to-one by cash and short-dated Treasury bills" '
             'and called the delay "administrative, not financial". She promised a full audit within 30 days.', [1]),
            ("USDV had climbed back to $0.987 by 16:00 UTC. Vantor said it had paid every redemption request in full "
             "and on time, and that it would keep processing redemptions through the weekend.", [2]),
            ("On Tidepool, the pool that pairs USDV with USDC grew lopsided, with USDV making up 82% of its balance "
             "as holders swapped out.", [2]),
            ("Separately, Korvex said it had notified law enforcement in Portugal and was working with stablecoin "
             "issuers to freeze any USDC that could still be traced.", [4]),
        ],
        "insights": [
            ("Attestations are the main way stablecoin issuers show that their tokens are fully backed.", [2]),
            ("Several lending markets paused new USDV deposits as a precaution.", [3]),
            ('"The coin got hit by a paperwork problem, but the market will want to see the paper," said Ben Hollis, '
             "a stablecoin analyst at research firm Cairnfield Analytics.", [2]),
        ],
    },
]


def source_doc(n: int, item: Item, role: str) -> SourceDoc:
    return SourceDoc(n=n, item_id=item.id, title=item.title, outlet=item.outlet, published=item.published,
                     url=item.url, text=item.text, role=role)  # type: ignore[arg-type]


def hand_cases(items: dict[str, Item]) -> list[Case]:
    cases = []
    for spec in HAND_DRAFTS:
        urls = [*spec["story"], *spec["background"]]
        missing = [u for u in urls if u not in items]
        if missing:
            print(f"warning: hand draft {spec['headline'][:40]!r} skipped: items not found: {missing}", file=sys.stderr)
            continue
        sources = [source_doc(n, items[u], "story" if u in spec["story"] else "background") for n, u in enumerate(urls, 1)]
        article = Article(
            headline=spec["headline"], lead=spec["lead"],
            body=[Paragraph(text=t, citations=c) for t, c in spec["body"]],
            insights=[Insight(text=t, citations=c) for t, c in spec["insights"]],
            sources=[],
        )
        story_key = items[spec["story"][0]].story_key or spec["headline"]
        cases.append(Case(spec["headline"], "hand", story_key,
                          article, ResearchPack(story_key=story_key, sources=sources, budget_tokens=0, used_tokens=0)))
    return cases


def source_cases(items: dict[str, Item], set_name: str, rng: random.Random) -> list[Case]:
    """Each story item written up as a draft of its own story (see the module docstring)."""
    stories: dict[str, list[Item]] = {}
    for item in sorted(items.values(), key=lambda i: i.url):
        if item.story_key:
            stories.setdefault(item.story_key, []).append(item)
    cases = []
    for key, members in sorted(stories.items()):
        others = [i for i in sorted(items.values(), key=lambda i: i.url) if i.story_key != key]
        distractors = rng.sample(others, min(2, len(others)))
        sources = [source_doc(n, item, "story") for n, item in enumerate(members, 1)]
        sources += [source_doc(len(members) + k, item, "background") for k, item in enumerate(distractors, 1)]
        pack = ResearchPack(story_key=key, sources=sources, budget_tokens=0, used_tokens=0)
        for n, item in enumerate(members, 1):
            paragraphs = [p.strip() for p in item.text.split("\n\n") if p.strip()]
            if len(paragraphs) < 2:
                continue
            article = Article(headline=item.title, lead=paragraphs[0],
                              body=[Paragraph(text=p, citations=[n]) for p in paragraphs[1:]], insights=[], sources=[])
            cases.append(Case(f"{item.title} (as a draft)", "source", key, article, pack, set_name))
    return cases


def house_cases() -> list[Case]:
    """The past house-style articles, each with its own text as its only (story) source."""
    import re

    cases = []
    for path in sorted((EXAMPLES / "articles").glob("*.md")):
        _, front, body = path.read_text(encoding="utf-8").split("---", 2)
        found = re.search(r"^headline:\s*(.+)$", front, re.M)
        main, _, tail = body.partition("## Insights")
        paragraphs = [_norm(p) for p in main.strip().split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
        bullets = [_norm(line[2:]) for line in tail.splitlines() if line.startswith("- ")]
        if not found or len(paragraphs) < 2:
            continue
        headline = found.group(1).strip().strip('"')
        article = Article(headline=headline, lead=paragraphs[0], body=[Paragraph(text=p, citations=[1]) for p in paragraphs[1:]],
                          insights=[Insight(text=b, citations=[1]) for b in bullets], sources=[])
        text = "\n\n".join([article.lead, *(p.text for p in article.body), *(i.text for i in article.insights)])
        own = SourceDoc(n=1, item_id=path.stem, title=headline, outlet="house", published=AS_OF,
                        url=f"https://house.example/{path.stem}", text=text)
        cases.append(Case(headline, "house", path.stem, article,
                          ResearchPack(story_key=path.stem, sources=[own], budget_tokens=0, used_tokens=0), "sample"))
    return cases


# --- checking ------------------------------------------------------------------------------------------


def check(article: Article, pack: ResearchPack) -> tuple[FactCheckReport, EvidenceIndex]:
    evidence = EvidenceIndex(sources_from_pack(pack.sources), WINDOW_SENTENCES)
    return asyncio.run(check_article(article, evidence)), evidence


def _norm(text: str) -> str:
    return " ".join(strip_citation_markers(text).split())


# --- planting ------------------------------------------------------------------------------------------


@dataclass
class Plant:
    case: str
    placement: str
    sentence: str
    item_title: str
    n: int
    exempt: bool          # names one of the story's own actors
    verdicts: list[str] = field(default_factory=list)
    with_source: bool = False

    @property
    def caught(self) -> bool:
        return any(v in STORY_LABELS for v in self.verdicts)


def plantable(item: Item, case: Case) -> list[str]:
    """Sentences of another story's item that could be slipped into a draft: whole statements, not fragments."""
    own = {s.url for s in case.pack.sources if s.role == "story"}
    if item.url in own or (item.story_key and item.story_key == case.story_key):
        return []
    out = []
    for s in split_sentences(item.text):
        words = s.text.split()
        if 6 <= len(words) <= 45 and s.text.rstrip()[-1:] in '.!?"”' and not s.text.lstrip().startswith(("“", '"')):
            out.append(" ".join(s.text.split()))
    return out


def planted_variant(case: Case, item: Item, sentence: str, placement: str, rng: random.Random) -> tuple[Article, ResearchPack, int]:
    pack = case.pack
    existing = next((s.n for s in pack.sources if s.item_id == item.id), None)
    if existing is None:
        n = max((s.n for s in pack.sources), default=0) + 1
        pack = pack.model_copy(update={"sources": [*pack.sources, source_doc(n, item, "background")]})
    else:  # research already packed it (perhaps cut): the planted sentence must be in what the pack holds
        n = existing
        pack = pack.model_copy(update={"sources": [source_doc(n, item, "background") if s.n == n else s for s in pack.sources]})
    article = case.article
    body = list(article.body)
    insights = list(article.insights)
    if placement == "body_append" and body:
        i = rng.randrange(len(body))
        p = body[i]
        body[i] = Paragraph(text=f"{p.text.rstrip()} {sentence}", citations=sorted({*p.citations, n}))
    elif placement in ("body_paragraph", "body_append"):
        body.insert(rng.randrange(1, len(body) + 1) if body else 0, Paragraph(text=sentence, citations=[n]))
    else:
        insights.insert(rng.randrange(len(insights) + 1), Insight(text=sentence, citations=[n]))
    return article.model_copy(update={"body": body, "insights": insights}), pack, n


def planted_verdicts(report: FactCheckReport, sentence: str) -> list[ClaimVerdict]:
    target = _norm(sentence)
    return [v for v in report.verdicts if len(v.claim.text) > 10 and _norm(v.claim.text) in target]


# --- false alarms --------------------------------------------------------------------------------------


@dataclass
class Label:
    case: str
    origin: str
    verdict: str
    section: str
    text: str
    scored: bool          # counts in the false-alarm rate
    false_alarm: bool
    note: str = ""


def part_citations(article: Article) -> dict[tuple[str, int], set[int]]:
    out: dict[tuple[str, int], set[int]] = {}
    rendered = render_draft(article)
    for s in rendered.sentences:
        out.setdefault((s.section, s.part), set()).update(s.citations)
    for i, p in enumerate(article.body):
        out.setdefault(("body", i), set()).update(p.citations)
    for i, x in enumerate(article.insights):
        out.setdefault(("insights", i), set()).update(x.citations)
    return out


def torn_from_context(sentence: str, earlier: list[str], pack: ResearchPack) -> str | None:
    """The sentence follows, in its own story source, a sentence the draft does not have right before it."""
    target = _norm(sentence)
    for src in pack.sources:
        if src.role != "story":
            continue
        sentences = [_norm(s.text) for s in split_sentences(src.text)]
        for k, s in enumerate(sentences):
            if s == target and k > 0:
                previous = sentences[k - 1]
                if not earlier or _norm(earlier[-1]) != previous:
                    return f"in source [{src.n}] it follows: {previous[:100]}"
    return None


def faithful_labels(case: Case, report: FactCheckReport) -> tuple[list[Label], int]:
    """The story labels on a faithful draft and the number of claims scored."""
    story_ns = {s.n for s in case.pack.sources if s.role == "story"}
    cites = part_citations(case.article)
    rendered = render_draft(case.article)
    part_of = {(s.start, s.end): (s.section, s.part) for s in rendered.sentences}
    earlier_of = {(s.start, s.end): [x.text for x in rendered.sentences[:k]] for k, s in enumerate(rendered.sentences)}
    labels: list[Label] = []
    scored = 0
    for v in report.verdicts:
        key = part_of.get((v.claim.start, v.claim.end), (v.claim.section, 0))
        on_story_part = case.origin != "demo" or cites.get(key, set()) <= story_ns
        if on_story_part:
            scored += 1
        if v.verdict not in STORY_LABELS:
            continue
        note = ""
        false_alarm = on_story_part
        if on_story_part and case.origin == "demo" and v.verdict == "unresolved_reference":
            torn = torn_from_context(v.claim.text, earlier_of.get((v.claim.start, v.claim.end), []), case.pack)
            if torn:
                false_alarm, note = False, f"torn from context ({torn})"
        if not on_story_part:
            note = "part cites a background source: the writer's use of background, not scored"
        labels.append(Label(case.name, case.origin, v.verdict, v.claim.section, v.claim.text, on_story_part, false_alarm, note))
    return labels, scored


# --- the measurement -----------------------------------------------------------------------------------


@dataclass
class OffStoryResult:
    recall: float                 # planted (not exempt) sentences labelled off_story / unresolved_reference
    caught: int
    planted: int
    with_source: int              # caught as off_story citing the planted item
    by_placement: dict[str, tuple[int, int]]
    exempt: int                   # planted sentences naming a story actor (left out of recall)
    exempt_caught: int
    false_alarm_rate: float
    false_alarms: int
    faithful_claims: int
    false_alarms_demo: tuple[int, int]   # (false alarms, scored claims) on the demo drafts
    false_alarms_hand: tuple[int, int]
    false_alarms_source: tuple[int, int]   # on the story items written up as drafts
    source_drafts: int
    false_alarms_house: tuple[int, int]    # on the past house-style articles (held out)
    house_drafts: int
    demo_drafts: dict[str, int]          # by set
    hand_drafts: int
    writer_background_flagged: int       # labels on demo parts citing background (not scored)
    torn_from_context: int               # unresolved references on demo drafts whose source antecedent was dropped
    misses: list[Plant]
    exempt_plants: list[Plant]           # the planted sentences naming a story actor
    labels: list[Label]
    seconds: float


def measure(seed: int = 13, workdir: Path | None = None, sentences_per_placement: int = 1,
            sets: tuple[str, ...] = tuple(SETS)) -> OffStoryResult:
    """Build the faithful and planted drafts, check them all (rules, lexical) and score."""
    started = time.perf_counter()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="offstory-")) if own_dir else workdir
    demo: list[Case] = []
    items_of: dict[str, dict[str, Item]] = {}
    try:
        for name in sets:
            cases_of_set, items_of[name] = demo_material(workdir, name)
            demo += cases_of_set
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    hand = hand_cases(items_of["sample"]) if "sample" in items_of else []
    rng = random.Random(seed)
    written = [c for name in sets for c in source_cases(items_of[name], name, random.Random(seed))] + house_cases()

    labels: list[Label] = []
    scored = {"demo": 0, "hand": 0, "source": 0, "house": 0}
    plants: list[Plant] = []
    for case in written:
        found, n_scored = faithful_labels(case, check(case.article, case.pack)[0])
        labels += found
        scored[case.origin] += n_scored
    for case in demo + hand:
        report, evidence = check(case.article, case.pack)
        found, n_scored = faithful_labels(case, report)
        labels += found
        scored[case.origin] += n_scored
        entities = evidence.story.entities
        names = evidence.story.names
        for item in sorted(items_of[case.set_name].values(), key=lambda i: i.url):
            candidates = plantable(item, case)
            if not candidates:
                continue
            picks = rng.sample(candidates, min(len(candidates), sentences_per_placement * len(PLACEMENTS)))
            for k, sentence in enumerate(picks):
                placement = PLACEMENTS[k % len(PLACEMENTS)]
                article, pack, n = planted_variant(case, item, sentence, placement, rng)
                planted_report, _ = check(article, pack)
                verdicts = planted_verdicts(planted_report, sentence)
                plant = Plant(case.name, placement, sentence, item.title, n, bool(names(sentence) & entities),
                              [v.verdict for v in verdicts],
                              any(v.verdict == "off_story" and v.source_n == n for v in verdicts))
                plants.append(plant)

    scored_plants = [p for p in plants if not p.exempt]
    caught = sum(p.caught for p in scored_plants)
    by_placement = {
        placement: (sum(p.caught for p in scored_plants if p.placement == placement),
                    sum(1 for p in scored_plants if p.placement == placement))
        for placement in PLACEMENTS
    }
    fa_demo = sum(1 for x in labels if x.origin == "demo" and x.false_alarm)
    fa_hand = sum(1 for x in labels if x.origin == "hand" and x.false_alarm)
    fa_source = sum(1 for x in labels if x.origin == "source" and x.false_alarm)
    fa_house = sum(1 for x in labels if x.origin == "house" and x.false_alarm)
    faithful = sum(scored.values())
    return OffStoryResult(
        recall=caught / len(scored_plants) if scored_plants else 0.0,
        caught=caught, planted=len(scored_plants),
        with_source=sum(p.with_source for p in scored_plants),
        by_placement=by_placement,
        exempt=sum(p.exempt for p in plants), exempt_caught=sum(p.caught for p in plants if p.exempt),
        false_alarm_rate=(fa_demo + fa_hand + fa_source + fa_house) / faithful if faithful else 0.0,
        false_alarms=fa_demo + fa_hand + fa_source + fa_house, faithful_claims=faithful,
        false_alarms_demo=(fa_demo, scored["demo"]), false_alarms_hand=(fa_hand, scored["hand"]),
        false_alarms_source=(fa_source, scored["source"]), source_drafts=sum(c.origin == "source" for c in written),
        false_alarms_house=(fa_house, scored["house"]), house_drafts=sum(c.origin == "house" for c in written),
        demo_drafts={name: sum(1 for c in demo if c.set_name == name) for name in sets}, hand_drafts=len(hand),
        writer_background_flagged=sum(1 for x in labels if x.origin == "demo" and not x.scored),
        torn_from_context=sum(1 for x in labels if x.note.startswith("torn")),
        misses=[p for p in scored_plants if not p.caught],
        exempt_plants=[p for p in plants if p.exempt],
        labels=labels,
        seconds=time.perf_counter() - started,
    )


def report_lines(result: OffStoryResult, verbose: bool = False) -> list[str]:
    r = result
    lines = [
        "faithful drafts: " + ", ".join(f"{n} {name}" for name, n in r.demo_drafts.items())
        + f" (offline writer as of now) + {r.hand_drafts} hand-written + {r.source_drafts} story items as drafts"
        + f" + {r.house_drafts} house-style articles",
        f"planted off-story sentences: {r.planted} (+{r.exempt} naming a story actor, left out: {r.exempt_caught} of them labelled)",
        "  " + "; ".join(f"{p}: {c}/{t}" for p, (c, t) in r.by_placement.items()),
        f"  caught as off_story citing the planted source: {r.with_source}/{r.planted}",
        f"false alarms: demo {r.false_alarms_demo[0]}/{r.false_alarms_demo[1]} claims, "
        f"hand-written {r.false_alarms_hand[0]}/{r.false_alarms_hand[1]}, "
        f"story items as drafts {r.false_alarms_source[0]}/{r.false_alarms_source[1]}, "
        f"house-style articles (held out) {r.false_alarms_house[0]}/{r.false_alarms_house[1]}",
        f"  demo labels not scored: {r.writer_background_flagged} in parts citing background, "
        f"{r.torn_from_context} references torn from their source's context",
        f"{r.seconds:.1f}s",
    ]
    if verbose:
        lines.append("labels on faithful drafts:")
        for x in r.labels:
            flag = "FALSE ALARM " if x.false_alarm else ""
            lines.append(f"  {flag}[{x.origin}] {x.verdict} {x.section}: {x.text[:110]}" + (f"  ({x.note})" if x.note else ""))
        lines.append(f"planted sentences naming a story actor, not scored ({len(r.exempt_plants)}; first 12):")
        for p in r.exempt_plants[:12]:
            lines.append(f"  {p.placement} into {p.case[:40]!r} from {p.item_title[:40]!r}: {p.sentence[:110]} -> {p.verdicts}")
        lines.append(f"missed planted sentences ({len(r.misses)}):")
        for p in r.misses:
            lines.append(f"  {p.placement} into {p.case[:40]!r} from {p.item_title[:40]!r}: {p.sentence[:110]} -> {p.verdicts}")
    return lines


def headline(result: OffStoryResult) -> str:
    return (f"off-story: recall {result.recall:.3f} ({result.caught}/{result.planted}) "
            f"false alarms {result.false_alarm_rate:.3f} ({result.false_alarms}/{result.faithful_claims})")


def section(args) -> tuple[list[str], float]:
    """For bench/editorial.py's SECTIONS: (lines, the recall). Reads args.seed, args.set ("sample", "near_miss" or
    "all") and args.verbose when present."""
    chosen = getattr(args, "set", "all")
    result = measure(seed=getattr(args, "seed", 13), sets=tuple(SETS) if chosen not in SETS else (chosen,))
    return report_lines(result, getattr(args, "verbose", False)) + [headline(result)], result.recall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--set", choices=[*SETS, "all"], default="all", help="which labelled sets to draft from (default: all)")
    parser.add_argument("--verbose", action="store_true", help="list every label on the faithful drafts and every miss")
    args = parser.parse_args(argv)
    result = measure(seed=args.seed, sets=tuple(SETS) if args.set == "all" else (args.set,))
    for line in report_lines(result, args.verbose):
        print(line)
    print(headline(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
