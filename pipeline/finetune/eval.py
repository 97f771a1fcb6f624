"""`finetune eval`: the validation stories drafted by two writer models, side by side.

Both models get the same stories, the same numbered sources and the same
prompts, through the real gateway and the real writer (`agents.writer.write_draft`);
only the writer model differs (`PinnedWriterGateway`). The writer's request
cache is off for the eval so every draft is a fresh answer and repair rounds
are counted honestly. Per model:

* template compliance on the first try: the first reply passed the schema
  and the template rules (no repair needed);
* compliance after repair, and the repair rounds used (replies - 1);
* fact-check pass rate: the rules-based checker (`agents.fact_checker.check_draft`
  without a model, so both models are judged by the same deterministic rules):
  supported claims / all claims;
* similarity to the approved version: the word-level edit rate of `sync`
  (share of the draft's words an editor would change to reach the approved text);
* tokens and cost, priced from `llm.prices`.

"At least as good" (what `finetune use` requires) means no measure is worse:
no more failed drafts, first-try and after-repair compliance and the fact-check
pass rate not lower, mean edit rate not higher.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.core.config import Config
from pipeline.text.editdiff import article_text, edit_rate
from pipeline.finetune.dataset import Case, DatasetError
from pipeline.core.ledger import Ledger, utcnow
from pipeline.services.llm import Gateway, LLMError, ModelReply, ModelRequest
from pipeline.text.templates import load_templates
from agents.writer import write_draft
from agents.fact_checker import check_draft


class PinnedWriterGateway(Gateway):
    """A gateway whose writer role always uses `writer_model`, whatever the ledger's active model is."""

    def __init__(self, *args: Any, writer_model: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writer_model = writer_model

    def model_for(self, role: str) -> str:
        return self.writer_model if role == "writer" else super().model_for(role)


@dataclass
class _Tally:
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_CURRENT: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar("finetune_eval_tally", default=None)


class TallyingBackend:
    """Wraps the provider backend and counts, per eval case, the replies and tokens its requests got."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def complete(self, request: ModelRequest) -> ModelReply:
        reply = await self.inner.complete(request)
        tally = _CURRENT.get()
        if tally is not None:
            tally.replies += 1
            tally.prompt_tokens += reply.prompt_tokens
            tally.completion_tokens += reply.completion_tokens
        return reply

    async def aclose(self) -> None:
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()


# --- results --------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseResult(_Record):
    case_id: str
    origin: str
    model: str
    first_try_compliant: bool = False
    compliant: bool = False
    repair_rounds: int = 0
    violations: list[str] = []
    claims: int = 0
    supported: int = 0
    edit_rate: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None


class ModelScore(_Record):
    model: str
    stories: int
    errors: int
    first_try_compliant: int
    compliant: int
    repair_rounds: int
    claims: int
    supported: int
    mean_edit_rate: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def first_try_rate(self) -> float:
        return self.first_try_compliant / self.stories if self.stories else 0.0

    @property
    def compliant_rate(self) -> float:
        return self.compliant / self.stories if self.stories else 0.0

    @property
    def factcheck_pass_rate(self) -> float | None:
        return self.supported / self.claims if self.claims else None

    @property
    def mean_repair_rounds(self) -> float:
        drafted = self.stories - self.errors
        return self.repair_rounds / drafted if drafted else 0.0


class Verdict(_Record):
    at_least_as_good: bool
    reasons: list[str]


class EvalReport(_Record):
    dataset_id: str
    created: str
    candidate: str
    baseline: str
    stories: int
    scores: dict[str, ModelScore]   # keyed "candidate" and "baseline"
    verdict: Verdict
    cases: list[CaseResult]

    def summary(self) -> str:
        """One line for the ledger setting `writer_model_eval` and `run.py status`."""
        c, b = self.scores["candidate"], self.scores["baseline"]
        n = self.stories

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.0%}"

        return (
            f"{self.created[:10]} on {n} {'story' if n == 1 else 'stories'} of dataset {self.dataset_id} vs {self.baseline}: "
            f"first-try compliant {c.first_try_compliant}/{n} vs {b.first_try_compliant}/{n}, "
            f"fact-check {pct(c.factcheck_pass_rate)} vs {pct(b.factcheck_pass_rate)}, "
            f"edit rate {pct(c.mean_edit_rate)} vs {pct(b.mean_edit_rate)}"
            + ("" if self.verdict.at_least_as_good else " (worse)")
        )


def score(model: str, results: list[CaseResult]) -> ModelScore:
    rates = [r.edit_rate for r in results if r.edit_rate is not None]
    return ModelScore(
        model=model,
        stories=len(results),
        errors=sum(1 for r in results if r.error),
        first_try_compliant=sum(r.first_try_compliant for r in results),
        compliant=sum(r.compliant for r in results),
        repair_rounds=sum(r.repair_rounds for r in results),
        claims=sum(r.claims for r in results),
        supported=sum(r.supported for r in results),
        mean_edit_rate=round(sum(rates) / len(rates), 4) if rates else None,
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        cost_usd=round(sum(r.cost_usd for r in results), 6),
    )


def compare(candidate: ModelScore, baseline: ModelScore) -> Verdict:
    """At least as good: no measure worse than the baseline's. Reasons name each measure that is worse."""
    worse = []
    if candidate.errors > baseline.errors:
        worse.append(f"more drafts failed ({candidate.errors} vs {baseline.errors})")
    if candidate.first_try_rate < baseline.first_try_rate:
        worse.append(f"lower first-try compliance ({candidate.first_try_rate:.0%} vs {baseline.first_try_rate:.0%})")
    if candidate.compliant_rate < baseline.compliant_rate:
        worse.append(f"lower compliance after repair ({candidate.compliant_rate:.0%} vs {baseline.compliant_rate:.0%})")
    c_pass, b_pass = candidate.factcheck_pass_rate, baseline.factcheck_pass_rate
    if b_pass is not None and (c_pass is None or c_pass < b_pass):
        worse.append(f"lower fact-check pass rate ({'n/a' if c_pass is None else f'{c_pass:.0%}'} vs {b_pass:.0%})")
    c_edit, b_edit = candidate.mean_edit_rate, baseline.mean_edit_rate
    if b_edit is not None and (c_edit is None or c_edit > b_edit):
        worse.append(f"further from the approved versions (edit rate {'n/a' if c_edit is None else f'{c_edit:.1%}'} vs {b_edit:.1%})")
    return Verdict(at_least_as_good=not worse, reasons=worse or ["no measure is worse than the baseline's"])


# --- running ----------------------------------------------------------------------------------


def eval_config(config: Config) -> Config:
    """The config with the writer's request cache off: a cached answer would hide the repair rounds it took."""
    roles = list(dict.fromkeys([*config.llm.cache_disabled_roles, "writer"]))
    return config.model_copy(update={"llm": config.llm.model_copy(update={"cache_disabled_roles": roles})})


async def _draft_case(case: Case, spec, gateway: PinnedWriterGateway, config: Config) -> CaseResult:

    model = gateway.writer_model
    tally = _Tally()
    _CURRENT.set(tally)  # each case runs in its own task, so this tally is the case's alone
    result = CaseResult(case_id=case.id, origin=case.origin, model=model)
    try:
        draft = await write_draft(case.story, case.pack, spec, gateway)
    except LLMError as exc:
        result.error = str(exc).splitlines()[0][:300]
    else:
        result.violations = list(draft.violations)
        result.compliant = not draft.violations
        # The gateway returns the first reply that passes; one reply and no violations means it passed first time.
        result.first_try_compliant = result.compliant and tally.replies == 1
        result.repair_rounds = max(0, tally.replies - 1)
        result.edit_rate = round(edit_rate(article_text(draft.article), article_text(case.article)), 4)
        outcome = await check_draft(draft, case.pack, spec, config=config, gateway=None)
        result.claims = len(outcome.report.verdicts)
        result.supported = sum(1 for v in outcome.report.verdicts if v.verdict == "supported")
    result.prompt_tokens, result.completion_tokens = tally.prompt_tokens, tally.completion_tokens
    result.cost_usd = round(gateway.cost(model, tally.prompt_tokens, tally.completion_tokens), 6)
    return result


async def draft_cases(
    config: Config, ledger: Ledger, cases: list[Case], model: str, *, backend: Any = None, run_id: str | None = None
) -> list[CaseResult]:
    """Every case drafted by `model` as the writer; failures are recorded per case, never raised."""
    templates = load_templates(config.templates_dir, config.topic_names or None)
    unknown = sorted({c.template for c in cases} - set(templates))
    if unknown:
        raise DatasetError(f"the dataset uses template(s) no longer in the templates folder: {', '.join(unknown)}")
    config = eval_config(config)
    gateway = PinnedWriterGateway(config, ledger, run_id, backend=backend, writer_model=model)
    if gateway.backend is None:
        raise LLMError(f"drafting needs a model, but none is available: {gateway.unavailable_reason}")
    gateway.backend = TallyingBackend(gateway.backend)
    try:
        return list(await asyncio.gather(*(_draft_case(c, templates[c.template], gateway, config) for c in cases)))
    finally:
        await gateway.aclose()


async def evaluate(
    config: Config,
    ledger: Ledger,
    cases: list[Case],
    dataset_id: str,
    candidate: str,
    baseline: str,
    *,
    backend: Any = None,
    run_id: str | None = None,
) -> EvalReport:
    if not cases:
        raise DatasetError(f"dataset {dataset_id} has no validation stories to evaluate on; build it with finetune.valid_fraction > 0")
    run_id = run_id or f"finetune-eval-{utcnow().strftime('%Y%m%dT%H%M%S')}"
    ours = await draft_cases(config, ledger, cases, candidate, backend=backend, run_id=run_id)
    theirs = await draft_cases(config, ledger, cases, baseline, backend=backend, run_id=run_id)
    scores = {"candidate": score(candidate, ours), "baseline": score(baseline, theirs)}
    return EvalReport(
        dataset_id=dataset_id, created=utcnow().isoformat(timespec="seconds"), candidate=candidate, baseline=baseline,
        stories=len(cases), scores=scores, verdict=compare(scores["candidate"], scores["baseline"]), cases=[*ours, *theirs],
    )


# --- storing and finding evals ------------------------------------------------------------------------


def evals_dir(config: Config) -> Path:
    return config.data_dir / "finetune" / "evals"


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:80]


def save_report(config: Config, report: EvalReport) -> Path:
    folder = evals_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = report.created.replace(":", "").replace("-", "")[:15]
    path = folder / f"{stamp}-{_slug(report.candidate)}-vs-{_slug(report.baseline)}.json"
    data = report.model_dump(mode="json")
    for key, s in report.scores.items():  # the derived rates, for readers of the file
        data["scores"][key].update(first_try_rate=s.first_try_rate, compliant_rate=s.compliant_rate,
                                   factcheck_pass_rate=s.factcheck_pass_rate, mean_repair_rounds=s.mean_repair_rounds)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_reports(config: Config) -> list[EvalReport]:
    folder = evals_dir(config)
    reports = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for s in data.get("scores", {}).values():
                for derived in ("first_try_rate", "compliant_rate", "factcheck_pass_rate", "mean_repair_rounds"):
                    s.pop(derived, None)
            reports.append(EvalReport.model_validate(data))
        except (OSError, ValueError):
            continue  # not one of ours, or damaged: it cannot vouch for a model
    return sorted(reports, key=lambda r: r.created)


def latest_report(config: Config, candidate: str) -> EvalReport | None:
    matching = [r for r in load_reports(config) if r.candidate == candidate]
    return matching[-1] if matching else None


__all__ = [
    "CaseResult", "EvalReport", "ModelScore", "PinnedWriterGateway", "TallyingBackend", "Verdict", "compare",
    "draft_cases", "eval_config", "evaluate", "evals_dir", "latest_report", "load_reports", "save_report", "score",
]
