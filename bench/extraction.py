"""Article-extraction benchmark: run `extract_article` over a dev set and score it.

    python bench/extraction.py --data ../shared/data/article-extraction --out /tmp/pred.json

DIR layout: html/<key>.html.gz and ground-truth.json {key: {"articleBody", "url"}}.
The score is the ScrapingHub article-extraction-benchmark's: \\w+ tokens,
4-token shingles counted as multisets, per-page TP/FP/FN normalised to sum 1,
precision and recall averaged over pages, F1 from the two means. The last line
printed is `F1 <value>` so scripts can read it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
SHINGLE_SIZE = 4


def tokenize(text: str | None) -> list[str]:
    return _TOKEN_RE.findall(text or "")


def shingles(text: str | None, size: int = SHINGLE_SIZE) -> Counter:
    """Overlapping `size`-token shingles as a multiset. A text shorter than
    `size` tokens is one shorter shingle; an empty text has none."""
    toks = tokenize(text)
    return Counter(tuple(toks[i:i + size]) for i in range(max(1, len(toks) - size + 1)) if toks[i:i + size])


def page_counts(expected: str, predicted: str) -> tuple[float, float, float]:
    """(TP, FP, FN) of one page, normalised to sum to 1 (all 0 when both are empty)."""
    truth, pred = shingles(expected), shingles(predicted)
    tp = sum((truth & pred).values())
    fp = sum((pred - truth).values())
    fn = sum((truth - pred).values())
    total = tp + fp + fn
    if total == 0:
        return 0.0, 0.0, 0.0
    return tp / total, fp / total, fn / total


def page_precision(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fp == 0:
        return 0.0
    return tp / (tp + fp)


def page_recall(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fn == 0:
        return 0.0
    return tp / (tp + fn)


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    accuracy: float
    pages: int


def score(expected: dict[str, str], predicted: dict[str, str]) -> Score:
    """Benchmark score of `predicted` ({key: text}) against `expected` ({key: text}).
    A key missing from `predicted` counts as an empty prediction."""
    if not expected:
        raise ValueError("no expected pages to score against")
    precisions, recalls, exact = [], [], []
    for key, truth in expected.items():
        guess = predicted.get(key, "")
        counts = page_counts(truth, guess)
        precisions.append(page_precision(*counts))
        recalls.append(page_recall(*counts))
        exact.append(tokenize(truth) == tokenize(guess))
    precision = statistics.mean(precisions)
    recall = statistics.mean(recalls)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1, statistics.mean(exact), len(expected))


def fold_of(key: str) -> int:
    """Stable 2-fold split by key hash, so the halves are the same on every run."""
    return hashlib.sha256(key.encode()).digest()[0] % 2


def load_ground_truth(data_dir: Path) -> dict[str, dict]:
    path = data_dir / "ground-truth.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (expected the article-extraction data layout)")
    return json.loads(path.read_text(encoding="utf-8"))


def run(data_dir: Path, out: Path, limit: int | None = None) -> Score:
    from pipeline.text.extract import extract_article

    truth = load_ground_truth(data_dir)
    keys = sorted(truth)[:limit] if limit else sorted(truth)
    predictions: dict[str, dict[str, str]] = {}
    elapsed = cpu = 0.0
    for key in keys:
        page = data_dir / "html" / f"{key}.html.gz"
        try:
            html = gzip.decompress(page.read_bytes())
        except (OSError, EOFError) as exc:
            print(f"warning: cannot read {page}: {exc}", file=sys.stderr)
            html = b""
        started, cpu_started = time.perf_counter(), time.process_time()
        result = extract_article(html, url=truth[key].get("url"))
        elapsed += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        predictions[key] = {"articleBody": result.text}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(predictions, ensure_ascii=False, indent=1), encoding="utf-8")

    expected = {key: truth[key]["articleBody"] for key in keys}
    predicted = {key: predictions[key]["articleBody"] for key in keys}
    overall = score(expected, predicted)
    for fold in (0, 1):
        part = [key for key in keys if fold_of(key) == fold]
        if part:
            half = score({k: expected[k] for k in part}, predicted)
            print(f"fold {fold}: pages {half.pages} precision {half.precision:.4f} recall {half.recall:.4f} F1 {half.f1:.4f}")
    print(f"pages {overall.pages}")
    print(f"precision {overall.precision:.4f}")
    print(f"recall {overall.recall:.4f}")
    print(f"accuracy {overall.accuracy:.4f}")
    print(f"ms/page {1000 * elapsed / max(len(keys), 1):.1f}")
    # CPU time stays meaningful when other jobs share the machine.
    print(f"cpu ms/page {1000 * cpu / max(len(keys), 1):.1f}")
    print(f"F1 {overall.f1:.4f}")
    return overall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="article-extraction data directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write {key: {articleBody}} JSON")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N pages (sorted by key)")
    args = parser.parse_args(argv)
    run(args.data, args.out, args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
