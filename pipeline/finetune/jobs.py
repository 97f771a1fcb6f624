"""Fine-tuning jobs through the OpenAI SDK's fine-tuning API: upload, create, follow, cancel.

Only `files.create` and `fine_tuning.jobs.{create,retrieve,list_events,cancel}`
are used, so any provider that speaks that API works. Every job is recorded
in the ledger's `finetune_jobs` table; `follow_job` keeps that row in step
with the provider and stores `fine_tuned_model` when the job succeeds, or the
provider's error message when it fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from sqlalchemy import insert, select, update

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.finetune.dataset import DatasetError, read_manifest
from pipeline.core.ledger import Ledger, as_utc, utcnow
from pipeline.services.llm import redact

log = logging.getLogger("newsdesk.finetune")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_POLL_S = 20.0


class JobError(Exception):
    """A fine-tuning request the provider refused or could not answer. The message is the provider's."""


@dataclass
class JobView:
    """What the CLI shows about a job: the provider's state, in plain fields."""

    id: str
    status: str
    model: str
    fine_tuned_model: str | None = None
    error: str | None = None
    trained_tokens: int | None = None
    estimated_finish: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass
class EventView:
    id: str
    created: datetime
    level: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> tuple[int, int] | None:
        """(step, total_steps) of a metrics event, when the provider sends them."""
        step, total = self.data.get("step"), self.data.get("total_steps")
        return (int(step), int(total)) if isinstance(step, int) and isinstance(total, int) and total > 0 else None


def method_body(config: Config) -> dict[str, Any]:
    """The `method` of the create request: supervised, hyperparameters from [finetune]."""
    settings = config.finetune
    return {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": settings.epochs,
                "batch_size": settings.batch_size,
                "learning_rate_multiplier": settings.learning_rate_multiplier,
            }
        },
    }


async def _provider(call: Awaitable[Any], what: str) -> Any:
    """Run one SDK call; turn its errors into JobError carrying the provider's own message."""
    import openai

    try:
        return await call
    except openai.APIStatusError as exc:
        raise JobError(f"{what}: provider answered HTTP {exc.status_code}: {_detail(exc)}") from None
    except openai.APITimeoutError:
        raise JobError(f"{what}: the provider did not answer in time") from None
    except openai.APIConnectionError as exc:
        raise JobError(f"{what}: cannot reach the provider: {exc.__cause__ or exc}") from None


def _detail(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return redact(str(inner["message"]))
        if isinstance(inner, str):
            return redact(inner)
    return redact(str(getattr(exc, "message", exc)))


def job_view(job: Any) -> JobView:
    error = getattr(job, "error", None)
    message = None
    if error is not None and (getattr(error, "message", None) or getattr(error, "code", None)):
        message = " ".join(str(x) for x in (getattr(error, "code", None), getattr(error, "message", None)) if x)
    finish = getattr(job, "estimated_finish", None)
    return JobView(
        id=job.id, status=job.status, model=job.model, fine_tuned_model=job.fine_tuned_model, error=message,
        trained_tokens=getattr(job, "trained_tokens", None),
        estimated_finish=datetime.fromtimestamp(finish, timezone.utc) if finish else None,
    )


# --- start ------------------------------------------------------------------------------------


async def upload(client: Any, path: Path) -> str:
    """One JSONL file uploaded for fine-tuning; its file id."""
    file = await _provider(
        client.files.create(file=(path.name, path.read_bytes(), "application/jsonl"), purpose="fine-tune"),
        f"uploading {path.name}",
    )
    return file.id


def jobs_for_dataset(ledger: Ledger, dataset_id: str) -> list[Any]:
    table = schema.finetune_jobs
    with ledger.engine.connect() as connection:
        return connection.execute(select(table).where(table.c.dataset_id == dataset_id).order_by(table.c.created)).all()


async def start_job(config: Config, ledger: Ledger, client: Any, directory: Path, *, again: bool = False) -> JobView:
    """Upload a built dataset and create its supervised fine-tuning job; the job lands in the ledger.

    A dataset that already has a job that did not fail is not trained twice
    unless `again` says so: training is paid for.
    """
    manifest = read_manifest(directory)
    dataset_id = manifest["dataset_id"]
    earlier = [row for row in jobs_for_dataset(ledger, dataset_id) if row.status not in ("failed", "cancelled")]
    if earlier and not again:
        row = earlier[-1]
        raise JobError(
            f"dataset {dataset_id} already has job {row.id} ({row.status}); "
            "follow it with `run.py finetune status`, or pass --again to train it once more"
        )
    train_path, valid_path = directory / "train.jsonl", directory / "valid.jsonl"
    if not train_path.exists() or not train_path.read_text(encoding="utf-8").strip():
        raise DatasetError(f"{train_path} is missing or empty; run: run.py finetune build")
    for path in (train_path, valid_path):
        # Only what was validated is trained on: a file edited after the build is refused.
        expected = manifest.get("files", {}).get(path.name)
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        if expected != actual:
            raise DatasetError(f"{path} differs from what `finetune build` validated (sha256 mismatch); build the dataset again")
    training_file = await upload(client, train_path)
    validation_file = None
    if valid_path.exists() and valid_path.read_text(encoding="utf-8").strip():
        validation_file = await upload(client, valid_path)
    settings = config.finetune
    request: dict[str, Any] = {
        "model": settings.base_model,
        "training_file": training_file,
        "suffix": settings.suffix,
        "method": method_body(config),
        "metadata": {"newsdesk_dataset": dataset_id},
    }
    if validation_file:
        request["validation_file"] = validation_file
    job = await _provider(client.fine_tuning.jobs.create(**request), "creating the fine-tuning job")
    view = job_view(job)
    now = utcnow()
    with ledger.begin() as connection:
        connection.execute(insert(schema.finetune_jobs).values(
            id=view.id, dataset_id=dataset_id, base_model=settings.base_model, training_file=training_file,
            validation_file=validation_file, status=view.status, fine_tuned_model=view.fine_tuned_model,
            error=view.error, created=now, updated=now,
        ))
    return view


# --- follow ------------------------------------------------------------------------------------


def record_job(ledger: Ledger, view: JobView) -> None:
    """Bring the job's ledger row in step with the provider (a job started elsewhere gets a row too)."""
    table = schema.finetune_jobs
    values = dict(status=view.status, fine_tuned_model=view.fine_tuned_model, error=view.error, updated=utcnow())
    with ledger.begin() as connection:
        if not connection.execute(update(table).where(table.c.id == view.id).values(**values)).rowcount:
            connection.execute(insert(table).values(id=view.id, dataset_id="(not built here)", base_model=view.model,
                                                    created=utcnow(), **values))


async def poll_job(client: Any, job_id: str, seen: set[str]) -> tuple[JobView, list[EventView]]:
    """The job's state and the events not in `seen` (oldest first); `seen` is updated."""
    job = await _provider(client.fine_tuning.jobs.retrieve(job_id), f"reading job {job_id}")
    page = await _provider(client.fine_tuning.jobs.list_events(job_id, limit=100), f"reading the events of job {job_id}")
    fresh = []
    for event in page.data:
        if event.id in seen:
            continue
        seen.add(event.id)
        data = event.data if isinstance(event.data, dict) else {}
        fresh.append(EventView(id=event.id, created=datetime.fromtimestamp(event.created_at, timezone.utc),
                               level=str(event.level), message=event.message, data=data))
    fresh.sort(key=lambda e: (e.created, e.id))
    return job_view(job), fresh


OnUpdate = Callable[[JobView, list[EventView]], None]


async def follow_job(
    ledger: Ledger,
    client: Any,
    job_id: str,
    on_update: OnUpdate,
    *,
    interval: float = DEFAULT_POLL_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    once: bool = False,
) -> JobView:
    """Poll until the job ends (or once): every poll updates the ledger and calls `on_update`."""
    seen: set[str] = set()
    while True:
        view, events = await poll_job(client, job_id, seen)
        record_job(ledger, view)
        on_update(view, events)
        if view.done or once:
            return view
        await sleep(interval)


async def cancel_job(ledger: Ledger, client: Any, job_id: str) -> JobView:
    job = await _provider(client.fine_tuning.jobs.cancel(job_id), f"cancelling job {job_id}")
    view = job_view(job)
    record_job(ledger, view)
    return view


# --- the ledger's view --------------------------------------------------------------------------


def recorded_jobs(ledger: Ledger, limit: int = 20) -> list[Any]:
    table = schema.finetune_jobs
    with ledger.engine.connect() as connection:
        return connection.execute(select(table).order_by(table.c.created.desc()).limit(limit)).all()


def latest_job_id(ledger: Ledger) -> str | None:
    rows = recorded_jobs(ledger, 1)
    return rows[0].id if rows else None


def record_eval(ledger: Ledger, model: str, summary: dict[str, Any]) -> None:
    """Attach an eval's summary to the job that produced `model`, when we have one."""
    table = schema.finetune_jobs
    with ledger.begin() as connection:
        connection.execute(
            update(table).where(table.c.fine_tuned_model == model).values(eval=json.loads(json.dumps(summary, default=str)), updated=utcnow())
        )


def describe_row(row: Any) -> str:
    when = as_utc(row.created).strftime("%Y-%m-%d %H:%M") if row.created else "?"
    tail = f" -> {row.fine_tuned_model}" if row.fine_tuned_model else ""
    error = f" ({row.error})" if row.error else ""
    return f"{row.id}  {row.status}  dataset {row.dataset_id}  {row.base_model}{tail}  started {when}{error}"


__all__ = [
    "DEFAULT_POLL_S", "EventView", "JobError", "JobView", "TERMINAL", "cancel_job", "describe_row", "follow_job",
    "job_view", "latest_job_id", "method_body", "poll_job", "record_eval", "record_job", "recorded_jobs",
    "start_job", "upload",
]
