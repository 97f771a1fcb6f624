"""Editorial quality: how well the pipeline does the newsroom's judgement calls, offline and deterministic.

Each metric is one section: a function that runs what it measures on the
labelled sets and returns printable rows. Add a section by writing its
function and registering it in SECTIONS.

- `clusters`: story clustering (issue 13). Fetch, classify and group the items
  of each labelled set with a fixed editorial clock, then score the grouping
  with B-cubed precision, recall and F1 against the labels. Sets:
  `sample` (examples/feeds, labels examples/story_groups.json; an item in no
  group is its own story) and `near_miss` (examples/near_miss: same beat, same
  day, different actors, plus same-event coverage in different words; its
  labels list every item). Goal: F1 >= 0.95 on both.

- `drafts`: run fetch → check offline on each set with every story drafted,
  then count per sentence what an editor would strike (bench/draft_metrics.py):
  off-story sentences written as story fact, repeated facts, paragraphs that
  open on an unresolved reference, split quotes, headlines copied from a
  source, unframed background. Goal: 0 of each.
- `offstory`: the checker's recall on sentences planted from other stories,
  and its false alarms on faithful drafts (bench/offstory.py). Goal: recall
  >= 0.95, false alarms <= 5 %.

    python bench/editorial.py [all|clusters|drafts|offstory] [--set sample|near_miss|all] [--verbose]

"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Hashable, Mapping

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXAMPLES = ROOT / "examples"


# --- labelled sets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledSet:
    name: str
    folder: Path  # copied whole into a scratch workspace; holds config.toml
    labels: Path  # [{"event", "topics", "links", "facts"}]; a link in no group is its own story
    as_of: datetime  # the editorial clock the set is replayed at


SETS = {
    "sample": LabelledSet("sample", EXAMPLES, EXAMPLES / "story_groups.json", datetime(2026, 11, 22, 21, 0, tzinfo=timezone.utc)),
    "near_miss": LabelledSet(
        "near_miss", EXAMPLES / "near_miss", EXAMPLES / "near_miss" / "labels.json", datetime(2026, 11, 27, 21, 0, tzinfo=timezone.utc)
    ),
}


def load_labels(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- B-cubed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BCubed:
    precision: float
    recall: float
    f1: float
    items: int


def bcubed(predicted: Mapping[Hashable, Hashable], gold: Mapping[Hashable, Hashable]) -> BCubed:
    """B-cubed precision, recall and F1 of a clustering against gold labels (Bagga & Baldwin 1998).

    Both map every item to its cluster id over the same items. Per item,
    precision is the share of its predicted cluster that shares its gold
    cluster, recall the share of its gold cluster that shares its predicted
    cluster; each is averaged over items, and F1 is their harmonic mean.
    """
    if set(predicted) != set(gold):
        raise ValueError(f"predicted and gold cover different items: {sorted(map(str, set(predicted) ^ set(gold)))[:5]}")
    if not gold:
        return BCubed(1.0, 1.0, 1.0, 0)
    by_pred: dict[Hashable, set] = {}
    by_gold: dict[Hashable, set] = {}
    for item in gold:
        by_pred.setdefault(predicted[item], set()).add(item)
        by_gold.setdefault(gold[item], set()).add(item)
    precision = recall = 0.0
    for item in gold:
        same_pred, same_gold = by_pred[predicted[item]], by_gold[gold[item]]
        both = len(same_pred & same_gold)
        precision += both / len(same_pred)
        recall += both / len(same_gold)
    precision, recall = precision / len(gold), recall / len(gold)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return BCubed(precision, recall, f1, len(gold))


# --- the clustering section --------------------------------------------------------------------


@dataclass
class ClusterResult:
    name: str
    score: BCubed
    predicted: dict[str, str]  # link -> story key (or the link itself when the item was not clustered)
    gold: dict[str, str]  # link -> labelled event (or the link itself for a singleton)
    titles: dict[str, str]
    unclustered: list[str]  # labelled links the pipeline did not put in any story
    seconds: float


def cluster_labelled_set(labelled: LabelledSet, workdir: Path) -> ClusterResult:
    """Fetch, classify and group one set offline in a scratch copy, then score it against its labels."""
    from sqlalchemy import select

    from pipeline.core import schema
    from pipeline.core.clock import fixed_clock
    from pipeline.core.config import load_config
    from pipeline.flow.runner import Run
    from agents.editor import assign_stories

    started = time.perf_counter()
    workspace = Path(workdir) / labelled.name
    if workspace.exists():
        shutil.rmtree(workspace)
    shutil.copytree(labelled.folder, workspace, ignore=shutil.ignore_patterns("data", "outbox"))
    run = Run(load_config(workspace / "config.toml"), command=f"bench-{labelled.name}", clock=fixed_clock(labelled.as_of))
    run.run_stages(["fetch", "classify"])
    failed = [(r.stage, r.errors) for r in run.reports if not r.ok]
    if failed:
        raise RuntimeError(f"{labelled.name}: stages failed: {failed}")
    assign_stories(run.config, run.ledger, run.store.embed, now=run.now())
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.canonical_url, schema.items.c.story_key, schema.items.c.title)).all()
    run.finish()

    groups = load_labels(labelled.labels)
    gold_of = {link: group["event"] for group in groups for link in group["links"]}
    story_of = {url: key for url, key, _ in rows}
    titles = {url: title for url, _, title in rows}
    missing = sorted(set(gold_of) - set(story_of))
    if missing:
        raise RuntimeError(f"{labelled.name}: labelled links never fetched: {missing[:3]}")
    # Scored items: every item the pipeline put in a story, plus every labelled one it did not.
    universe = {url for url, key in story_of.items() if key is not None} | set(gold_of)
    predicted = {url: story_of[url] or f"unclustered:{url}" for url in universe}
    gold = {url: gold_of.get(url, f"single:{url}") for url in universe}
    unclustered = sorted(url for url in gold_of if story_of[url] is None)
    return ClusterResult(labelled.name, bcubed(predicted, gold), predicted, gold, titles, unclustered, time.perf_counter() - started)


def cluster_errors(result: ClusterResult) -> list[str]:
    """Pairs grouped that the labels keep apart, and labelled pairs left apart."""
    lines = []
    urls = sorted(result.gold)
    for i, a in enumerate(urls):
        for b in urls[i + 1:]:
            same_pred, same_gold = result.predicted[a] == result.predicted[b], result.gold[a] == result.gold[b]
            if same_pred and not same_gold:
                lines.append(f"  merged: {result.titles.get(a)!r} + {result.titles.get(b)!r}")
            elif same_gold and not same_pred:
                lines.append(f"  split:  {result.titles.get(a)!r} / {result.titles.get(b)!r}")
    return lines


def clusters_section(args) -> tuple[list[str], float]:
    names = list(SETS) if args.set == "all" else [args.set]
    lines, worst = [], 1.0
    with tempfile.TemporaryDirectory(prefix="newsdesk-editorial-") as scratch:
        for name in names:
            result = cluster_labelled_set(SETS[name], Path(scratch))
            s = result.score
            stories = len(set(result.predicted.values()))
            gold_stories = len(set(result.gold.values()))
            lines.append(
                f"clusters {name:<10} B-cubed P {s.precision:.4f}  R {s.recall:.4f}  F1 {s.f1:.4f}  "
                f"({s.items} items, {stories} stories vs {gold_stories} labelled, {result.seconds:.1f}s)"
            )
            if result.unclustered:
                lines.append(f"  {len(result.unclustered)} labelled items not clustered (classified off-beat?): {result.unclustered}")
            if args.verbose:
                lines.extend(cluster_errors(result))
            worst = min(worst, s.f1)
    lines.append(f"clusters: lowest B-cubed F1 {worst:.4f} over {', '.join(names)} (goal >= 0.95)")
    return lines, worst


# --- the drafts section ----------------------------------------------------------------------

def draft_labelled_set(labelled: LabelledSet, workdir: Path) -> tuple[list[dict], int, int]:
    """Run fetch → check offline on one set (every waiting story drafted), then measure each draft.

    Returns the per-draft metrics, the number of sentences drafted and the fact-check claims."""
    from sqlalchemy import select

    from bench.draft_metrics import draft_metrics, sentences
    from pipeline.core import schema
    from pipeline.core.clock import fixed_clock
    from pipeline.core.config import load_config
    from pipeline.core.models import Article, ResearchPack
    from pipeline.flow.runner import Run

    workspace = Path(workdir) / f"drafts-{labelled.name}"
    if workspace.exists():
        shutil.rmtree(workspace)
    shutil.copytree(labelled.folder, workspace, ignore=shutil.ignore_patterns("data", "outbox", "near_miss"))
    config_path = workspace / "config.toml"
    config = load_config(config_path)
    config.stories.max_per_run = 50  # every multi-source story and the singles too: the bench reads them all
    run = Run(config, command=f"bench-drafts-{labelled.name}", clock=fixed_clock(labelled.as_of))
    run.run_stages(["fetch", "classify", "draft", "check"])
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.drafts.c.article, schema.drafts.c.research, schema.drafts.c.factcheck)).all()
    run.finish()
    measured, sentence_count, claims = [], 0, 0
    for article, research, factcheck in rows:
        article, pack = Article.model_validate(article), ResearchPack.model_validate(research)
        measured.append(draft_metrics(article, pack))
        sentence_count += len(sentences(article))
        claims += ((factcheck or {}).get("totals") or {}).get("claims", 0)
    return measured, sentence_count, claims


def drafts_section(args) -> tuple[list[str], float]:
    names = list(SETS) if args.set == "all" else [args.set]
    lines, defects = [], 0
    with tempfile.TemporaryDirectory(prefix="newsdesk-editorial-") as scratch:
        for name in names:
            started = time.perf_counter()
            measured, sentence_count, claims = draft_labelled_set(SETS[name], Path(scratch))
            from bench.draft_metrics import DRAFT_KEYS

            totals = {k: sum(int(m[k]) for m in measured) for k in DRAFT_KEYS}
            n, per = len(measured), max(1, sentence_count)
            lines.append(
                f"drafts {name:<10} {n} drafts, {sentence_count} sentences: "
                f"off-story sentence rate {totals['off_story_sentences'] / per:.3f} ({totals['off_story_sentences']}), "
                f"repeated-fact rate {totals['repeated_facts'] / per:.3f} ({totals['repeated_facts']}), "
                f"dangling-opening rate {totals['dangling_openings'] / per:.3f} ({totals['dangling_openings']}), "
                f"quote splits {totals['quote_splits']}, headline copied {totals['headline_copied']}/{n}, "
                f"unframed background {totals['unframed_background']}, "
                f"full names repeated {totals['full_name_repeated']}, short names first {totals['short_name_first']} "
                f"({time.perf_counter() - started:.1f}s)"
            )
            defects += sum(totals.values())
    lines.append(f"drafts: {defects} editorial defects over {', '.join(names)} (goal 0)")
    return lines, float(defects)


def offstory_section(args) -> tuple[list[str], float]:
    from bench.offstory import section

    return section(args)


def all_sections(args) -> tuple[list[str], float]:
    lines: list[str] = []
    for name in ("clusters", "drafts", "offstory"):
        section_lines, _ = SECTIONS[name](args)
        lines.extend(section_lines)
    return lines, 0.0


# name -> function(args) -> (lines, headline figure)
SECTIONS: dict[str, Callable] = {
    "clusters": clusters_section,
    "drafts": drafts_section,
    "offstory": offstory_section,
    "all": all_sections,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", nargs="?", default="all", choices=sorted(SECTIONS), help="which metric to run (default: all)")
    parser.add_argument("--set", default="all", choices=["all", *SETS], help="labelled set (clusters)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list every wrongly merged or split pair")
    args = parser.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # stage logs would bury the figures
    lines, _ = SECTIONS[args.section](args)
    for line in lines:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
