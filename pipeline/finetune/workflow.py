"""Style fine-tuning: approved articles -> dataset -> job -> eval -> the active writer model.

The loop a content lead runs from the CLI (`run.py finetune ...`):

    build   pipeline.finetune.dataset.build_dataset   data/finetune/<id>/{train,valid}.jsonl + manifest.json
    start   pipeline.finetune.jobs.start_job            upload, create the supervised job, record it
    status  pipeline.finetune.jobs.follow_job           poll job and events; store fine_tuned_model
    cancel  pipeline.finetune.jobs.cancel_job
    eval    pipeline.finetune.eval.evaluate             validation stories drafted by both models
    use     activate_writer_model (below)               ledger setting `writer_model`, guarded by an eval

The gateway's writer role reads the ledger setting `writer_model`
(`Gateway.model_for`); `writer_model_eval` holds the one-line eval summary
that `run.py status` shows beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Config
from pipeline.finetune.dataset import (  # noqa: F401  (the public API, re-exported)
    TITLE_ONLY_TEXT,
    BuildResult,
    Case,
    DatasetError,
    build_dataset,
    dataset_dir,
    min_examples_problem,
    read_cases,
    read_manifest,
    validate_messages,
)
from pipeline.finetune.eval import EvalReport, evaluate, latest_report, save_report  # noqa: F401
from pipeline.finetune.jobs import JobError, cancel_job, follow_job, start_job  # noqa: F401
from pipeline.core.ledger import Ledger

WRITER_MODEL_SETTING = "writer_model"
WRITER_EVAL_SETTING = "writer_model_eval"


def active_writer_model(config: Config, ledger: Ledger) -> str:
    """The writer model drafts use now: the ledger's active model, else config's llm.models.writer."""
    active = ledger.get_setting(WRITER_MODEL_SETTING)
    if isinstance(active, dict):
        active = active.get("model")
    if isinstance(active, str) and active.strip():
        return active.strip()
    return config.llm.models["writer"]


@dataclass
class Activation:
    activated: bool
    model: str
    previous: str
    message: str


def activate_writer_model(config: Config, ledger: Ledger, model: str, *, force: bool = False) -> Activation:
    """Make `model` the writer, if the latest eval of it against the current writer shows it at least as good.

    `force` skips that check; the eval summary then says it was forced.
    """
    model = model.strip()
    current = active_writer_model(config, ledger)
    if model == current:
        return Activation(False, model, current, f"{model} is already the active writer model")
    report = latest_report(config, model)
    problem = None
    if report is None:
        problem = f"no eval of {model} yet; run: run.py finetune eval {model}"
    elif report.baseline != current:
        problem = (
            f"the latest eval of {model} ({report.created[:10]}) compared it with {report.baseline}, "
            f"but the active writer model is {current}; run: run.py finetune eval {model}"
        )
    elif not report.verdict.at_least_as_good:
        problem = f"the eval of {report.created[:10]} shows {model} worse than {current}: " + "; ".join(report.verdict.reasons)
    if problem and not force:
        return Activation(False, model, current, f"not switched: {problem} (--force overrides)")
    summary = report.summary() if report is not None and report.baseline == current else f"no eval against {current}"
    if problem:
        summary = f"forced: {summary}"
    ledger.set_setting(WRITER_MODEL_SETTING, model)
    ledger.set_setting(WRITER_EVAL_SETTING, summary)
    return Activation(True, model, current, f"writer model is now {model} (was {current}); eval: {summary}")


__all__ = [
    "Activation", "BuildResult", "Case", "DatasetError", "EvalReport", "JobError", "TITLE_ONLY_TEXT",
    "WRITER_EVAL_SETTING", "WRITER_MODEL_SETTING", "activate_writer_model", "active_writer_model", "build_dataset",
    "cancel_job", "dataset_dir", "evaluate", "follow_job", "latest_report", "min_examples_problem", "read_cases",
    "read_manifest", "save_report", "start_job", "validate_messages",
]
