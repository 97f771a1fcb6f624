"""Run the fact-checker over a JSONL set of claims and score it when labels are present.

Input lines: {"id", "claim", "sources": [{"id", "text", ...}], ...}; extra fields
(label, error_type, split) are used for scoring when present and ignored otherwise.
Output lines: {"id", "verdict", "source_id", "evidence"}.

Scoring: an injected error counts as caught when the verdict is not `supported`;
a faithful claim is a false alarm when the verdict is not `supported`. The last
line printed is the headline: `<split>: min-recall R false-alarms F`.

    python bench/factcheck.py --cases /tmp/factcheck.jsonl --out /tmp/verdicts.jsonl --split heldout
    python bench/factcheck.py --cases /tmp/factcheck.jsonl --out /tmp/verdicts.jsonl --with-model --config config.toml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.text.factrules import SourceIndex, verify_offline  # noqa: E402

ERROR_TYPES = ("number", "date", "entity", "negation", "quote", "addition")
# The errors a model makes when it paraphrases (issue 15): direction reversed, order/time changed, roles
# swapped, scale or unit changed. Their faithful twins carry a "variant" and are reported on their own line.
PARAPHRASE_TYPES = ("direction", "order", "role", "scale")


def load_cases(path: Path, split: str | None) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"error: cases file {path} not found")
    cases = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                case = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"error: {path}:{n}: not valid JSON ({exc.msg})")
            missing = [k for k in ("id", "claim", "sources") if k not in case]
            if missing:
                raise SystemExit(f"error: {path}:{n}: case lacks {', '.join(missing)}")
            if split and case.get("split") != split:
                continue
            cases.append(case)
    return cases


def rules_verdicts(cases: list[dict]) -> tuple[list[dict], float]:
    """Verdicts in rules mode, reusing one index per distinct set of sources."""
    indexes: dict[str, SourceIndex] = {}
    out = []
    spent = 0.0
    per_claim: list[float] = []   # verify_offline alone, index building left out
    for case in cases:
        try:
            sources = [(str(s.get("id", i)), s["text"]) for i, s in enumerate(case["sources"])]
        except (KeyError, TypeError, AttributeError):
            print(f"warning: case {case['id']}: sources must be objects with a text; marked unverifiable", file=sys.stderr)
            out.append({"id": case["id"], "verdict": "unverifiable", "source_id": None, "evidence": ""})
            continue
        key = hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()
        t0 = time.perf_counter()
        if key not in indexes:
            indexes[key] = SourceIndex.build(sources)
        t1 = time.perf_counter()
        try:
            v = verify_offline(case["claim"], indexes[key])
            row = {"id": case["id"], "verdict": v.verdict, "source_id": v.source_id, "evidence": v.evidence}
        except (TypeError, ValueError) as exc:
            print(f"warning: case {case['id']}: {exc}; marked unverifiable", file=sys.stderr)
            row = {"id": case["id"], "verdict": "unverifiable", "source_id": None, "evidence": ""}
        spent += time.perf_counter() - t0
        per_claim.append(1000 * (time.perf_counter() - t1))
        out.append(row)
    if per_claim:
        ranked = sorted(per_claim)
        print(f"verify_offline per claim: p50 {ranked[len(ranked) // 2]:.2f} ms, p95 {ranked[int(0.95 * (len(ranked) - 1))]:.2f} ms, "
              f"max {ranked[-1]:.2f} ms (index building excluded)")
    return out, (1000 * spent / len(cases) if cases else 0.0)


def model_verdicts(cases: list[dict], config_path: Path, ledger_url: str | None, use_embeddings: bool) -> tuple[list[dict], float]:
    """Verdicts from the model judge plus the rules, against the model configured in `config_path`.

    LLM calls are recorded (and cached) in a ledger of their own, by default
    `<data_dir>/bench-factcheck.sqlite`, so benchmark runs never mix with the newsroom's.
    """
    import asyncio

    try:
        from agents.fact_checker import check_claims_with_model
        from pipeline.core.config import ConfigError, load_config
        from pipeline.core.ledger import Ledger, LedgerError
        from pipeline.services.llm import Gateway
    except ImportError as exc:
        raise SystemExit(f"error: --with-model needs the LLM gateway (pipeline/services/llm.py) and the fact-checker agent: {exc}")

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}")
    if config.llm.offline:
        raise SystemExit(f"error: {config_path} sets llm.offline = true; --with-model needs a model")
    url = ledger_url or f"sqlite:///{config.data_dir / 'bench-factcheck.sqlite'}"
    try:
        ledger = Ledger(url)
    except LedgerError as exc:
        raise SystemExit(f"error: {exc}")
    gateway = Gateway(config, ledger, run_id=f"bench-factcheck-{int(time.time())}")
    if not gateway.available:
        raise SystemExit(f"error: {gateway.unavailable_reason}")
    embed = None
    if use_embeddings:
        from pipeline.services.embeddings import EmbeddingError, embedding_function_from_config

        try:
            embed = embedding_function_from_config(config).embed
        except EmbeddingError as exc:
            print(f"warning: embeddings unavailable ({exc}); retrieval is lexical only", file=sys.stderr)
    t0 = time.perf_counter()
    rows = asyncio.run(check_claims_with_model(cases, gateway, embed=embed))
    spent = time.perf_counter() - t0
    print(f"model {gateway.model_for('judge')}: {gateway.totals.summary()}", file=sys.stderr)
    return rows, (1000 * spent / len(cases) if cases else 0.0)


def score(cases: list[dict], verdicts: list[dict]) -> dict[str, dict]:
    """Per split: recall per error type and the false-alarm rate on faithful claims."""
    by_id = {v["id"]: v["verdict"] for v in verdicts}
    tallies: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    exact: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # verdict == label, the stricter reading
    variants: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    labelled: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # errors given their exact label
    for case in cases:
        if "label" not in case:
            continue
        split = case.get("split") or "all"
        kind = case.get("error_type") or "faithful"
        flagged = by_id.get(case["id"]) != "supported"
        for bucket in (split, "all") if split != "all" else ("all",):
            t = tallies[bucket][kind]
            t[0] += int(flagged)
            t[1] += 1
            if kind == "faithful":
                v = variants[bucket][case.get("variant") or "original"]
                v[0] += int(flagged)
                v[1] += 1
            if kind != "faithful":
                labelled[bucket][kind] += int(by_id.get(case["id"]) == case["label"])
            exact[bucket][0] += int(by_id.get(case["id"]) == case["label"])
            exact[bucket][1] += 1
    report = {}
    for split, kinds in tallies.items():
        recall = {k: c / n for k, (c, n) in kinds.items() if k != "faithful" and n}
        fa = kinds.get("faithful", [0, 0])
        report[split] = {
            "recall": recall,
            "counts": {k: tuple(v) for k, v in kinds.items()},
            "false_alarms": fa[0] / fa[1] if fa[1] else None,
            "min_recall": min(recall.values()) if recall else None,
            "label_accuracy": exact[split][0] / exact[split][1] if exact[split][1] else None,
            "faithful_variants": {k: tuple(v) for k, v in variants[split].items()},
            "labelled": dict(labelled[split]),
        }
    return report


def print_report(report: dict[str, dict], headline_split: str, ms_per_claim: float, n: int) -> None:
    order = [s for s in ("dev", "heldout") if s in report] + [s for s in report if s not in ("dev", "heldout", "all")]
    if "all" in report and len(order) != 1:
        order.append("all")
    for split in order:
        r = report[split]
        print(f"[{split}]")
        known = (*ERROR_TYPES, *PARAPHRASE_TYPES)
        for kind in (*known, *sorted(k for k in r["counts"] if k not in known and k != "faithful")):
            if kind in r["counts"]:
                c, total = r["counts"][kind]
                exact_n = (r.get("labelled") or {}).get(kind)
                label = f", {exact_n} given their label" if kind in PARAPHRASE_TYPES and exact_n is not None else ""
                print(f"  recall {kind:<9} {c / total:.3f}  ({c}/{total}{label})")
        if "faithful" in r["counts"]:
            c, total = r["counts"]["faithful"]
            print(f"  false alarms      {c / total:.3f}  ({c}/{total} faithful flagged)")
            fv = r.get("faithful_variants") or {}
            if len(fv) > 1:
                for name in sorted(fv, key=lambda k: (k != "original", k)):
                    c, total = fv[name]
                    print(f"    {name:<19} {c / total:.3f}  ({c}/{total})")
        if r["label_accuracy"] is not None:
            print(f"  verdict == label  {r['label_accuracy']:.3f}")
    print(f"{n} claims, {ms_per_claim:.2f} ms per claim")
    r = report.get(headline_split) or report[order[-1]]
    name = headline_split if headline_split in report else order[-1]
    mr = "n/a" if r["min_recall"] is None else f"{r['min_recall']:.2f}"
    fa = "n/a" if r["false_alarms"] is None else f"{r['false_alarms']:.2f}"
    print(f"{name}: min-recall {mr} false-alarms {fa}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--with-model", action="store_true", help="judge with the model configured in --config (rules still run)")
    ap.add_argument("--config", type=Path, default=Path("config.toml"), help="config whose llm section names the model (--with-model)")
    ap.add_argument("--ledger", help="ledger URL for the model calls (--with-model); default <data_dir>/bench-factcheck.sqlite")
    ap.add_argument("--no-embed", action="store_true", help="--with-model: retrieve evidence without embeddings")
    ap.add_argument("--split", help="only cases of this split (e.g. dev, heldout)")
    args = ap.parse_args(argv)

    cases = load_cases(args.cases, args.split)
    if not cases:
        raise SystemExit(f"error: no cases in {args.cases}" + (f" for split {args.split!r}" if args.split else ""))
    if args.with_model:
        verdicts, ms = model_verdicts(cases, args.config, args.ledger, not args.no_embed)
    else:
        verdicts, ms = rules_verdicts(cases)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for row in verdicts:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = score(cases, verdicts)
    if report:
        headline = args.split or ("heldout" if "heldout" in report else "all")
        print_report(report, headline, ms, len(cases))
    else:
        print(f"{len(cases)} claims checked ({ms:.2f} ms per claim); no labels to score -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
