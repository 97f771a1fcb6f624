"""Scale-out benchmark (issue 18): the whole pipeline as one queued run, worked by 1, 2 and 4 `run.py worker`
processes on one PostgreSQL ledger and one `chroma run` server, against a model that takes 2 s per call.

Everything is local and started here: PostgreSQL from this machine's binaries and `chroma run` (as the
tests start them, tests/servers.py), the generated news site and the built-in fake OpenAI-compatible model
of bench/pipeline.py (tests/fakes/openai_server.py answering as tests/fakes/newsroom_model.py). Each worker
count gets a fresh database, Chroma collection and outbox; the workers are started (imports done, embedding
model loaded, as a long-running worker has them) before the run is queued, and the clock runs from queueing
to the run's last unit.

    python bench/workers.py [--stories 24] [--sources 2] [--delay 2.0] [--workers 1,2,4] [--concurrency 16]

Prints, per worker count: wall time, stories (drafts) per minute, the speed-up over one worker, and the
exactly-once record: duplicated paid answers, duplicated drafts or documents, and lost units (a unit not
done, a chosen story without a draft, an item left unclassified). The last line is the headline.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from bench.pipeline import NewsSite  # noqa: E402
from pipeline.core import schema  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.ledger import Ledger  # noqa: E402
from pipeline.flow.worker import FINISHED, enqueue_run, queued_run_state  # noqa: E402
from tests.fakes.newsroom_model import NewsroomModel  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402
from tests.servers import running_chroma, running_postgres, toml_dumps  # noqa: E402

STAGES = ["fetch", "classify", "draft", "check", "publish"]
KEY_ENV = "NEWSDESK_BENCH_KEY"


def make_config(workspace: Path, database_url: str, chroma_port: int, site: NewsSite, model: FakeOpenAIServer, args) -> Path:
    beat = [t.model_dump(mode="json") for t in load_config(ROOT / "config.toml").topics]
    collection = f"bench{uuid.uuid4().hex[:10]}"
    config = {
        "newsroom": {"name": "Bench Desk"},
        "feeds": [{"name": f"outlet-{o}", "url": f"{site.base}/o{o}/feed.xml", "full_text": "auto"} for o in range(args.sources)],
        "topics": beat,
        "llm": {"base_url": model.base_url, "api_key_env": KEY_ENV, "concurrency": args.concurrency, "max_retries": 0,
                "timeout": max(30.0, args.delay * 10), "run_budget_usd": 100.0},
        "stories": {"max_per_run": args.stories, "window_hours": 48},
        "limits": {"allow_private_hosts": True, "min_full_text_chars": 800},
        "publishing": {"target": "local", "outbox": "outbox"},
        "store": {"host": "127.0.0.1", "port": chroma_port, "collection": collection},
        "ledger": {"url": database_url},
        "cluster": {"enabled": True, "lease_s": 30.0, "poll_s": 0.2},
    }
    path = workspace / "config.toml"
    path.write_text(toml_dumps(config))
    return path


def fresh_database(server_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def start_workers(n: int, config_path: Path, workspace: Path) -> list[subprocess.Popen]:
    processes = []
    for k in range(n):
        log = (workspace / f"worker-{k}.log").open("w")
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "worker", "--config", str(config_path), "--log-level", "WARNING"],
            cwd=workspace, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, KEY_ENV: "sk-bench"},
        ))
    return processes


def stop_workers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        try:  # the extraction pool of a worker that did not stop cleanly
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def worker_rss(processes: list[subprocess.Popen]) -> float:
    """Mean resident memory of a worker with its extraction pool, in MiB (each worker loads its own embedding model)."""
    import psutil

    totals = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            totals.append(sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
    return sum(totals) / max(len(totals), 1) / 2**20


def wait_until_started(workspace: Path, n: int, deadline_s: float = 120.0) -> None:
    """Each worker logs one line once its config is loaded and it starts claiming."""
    deadline = time.monotonic() + deadline_s
    while sum("stages" in p.read_text() for p in workspace.glob("worker-*.log")) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the workers did not start within {deadline_s:.0f}s; see {workspace}/worker-*.log")
        time.sleep(0.1)


def measure(n: int, server_url: str, chroma_port: int, site: NewsSite, model: FakeOpenAIServer, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"newsdesk-workers-{n}-") as tmp:
        workspace = Path(tmp)
        config_path = make_config(workspace, fresh_database(server_url), chroma_port, site, model, args)
        config = load_config(config_path)
        ledger = Ledger.from_config(config)
        processes = start_workers(n, config_path, workspace)
        try:
            wait_until_started(workspace, n)
            requests_before = len(model.chat_requests)
            started = time.perf_counter()
            run_id = enqueue_run(ledger, "bench/workers.py", STAGES)
            deadline = time.monotonic() + args.deadline
            while queued_run_state(ledger, run_id) != FINISHED:
                if time.monotonic() > deadline or all(p.poll() is not None for p in processes):
                    raise SystemExit(f"{n} worker(s): the run did not finish; see {workspace}/worker-*.log")
                time.sleep(0.05)
            wall = time.perf_counter() - started
            rss = worker_rss(processes)
            # A worker that ended before it was told to: its unit waited a lease for another worker.
            died = {k: p.returncode for k, p in enumerate(processes) if p.poll() is not None}
        finally:
            stop_workers(processes)
        record = exactly_once(ledger, run_id, workspace, config)
        ledger.close()
        record["died"] = {k: (code, log_tail(workspace / f"worker-{k}.log")) for k, code in died.items()}
        # Failures outside a stage a worker lived through (Worker.serve logs each and tries again).
        record["recovered"] = [line for k in range(n) for line in log_lines(workspace / f"worker-{k}.log") if "trying again in" in line]
    record.update(workers=n, wall_s=wall, requests=len(model.chat_requests) - requests_before, rss_mib=rss,
                  per_minute=record["drafts"] / wall * 60)
    return record


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def log_tail(path: Path, lines: int = 12) -> str:
    return "\n".join(log_lines(path)[-lines:]) or f"(no log at {path})"


def exactly_once(ledger: Ledger, run_id: str, workspace: Path, config) -> dict:
    with ledger.engine.connect() as connection:
        claims = connection.execute(select(schema.claims).where(schema.claims.c.run_id == run_id)).all()
        drafts = connection.execute(select(schema.drafts)).all()
        paid = Counter(connection.execute(select(schema.llm_calls.c.request_hash).where(
            schema.llm_calls.c.run_id == run_id, schema.llm_calls.c.cache_hit.is_(False),
            schema.llm_calls.c.outcome == "ok")).scalars())
        publications = connection.execute(select(schema.publications.c.doc_id)).scalars().all()
        unclassified = connection.execute(select(func.count()).select_from(schema.items).where(
            schema.items.c.state == "fetched")).scalar_one()
        chunks = connection.execute(select(func.coalesce(func.sum(schema.items.c.chunk_count), 0))).scalar_one()
    from pipeline.services.store import Store

    draft_units = {c.unit for c in claims if c.stage == "draft"}
    phases: dict[str, list] = {}
    for c in claims:  # a phase's wall time: from its units' enqueueing to its last unit done
        phases.setdefault(c.stage, []).extend([c.created, c.updated])
    documents = [p.stem for p in (workspace / "outbox").glob("*.html")]
    stored = Store.from_config(config).count()
    return {
        "units": len(claims),
        "drafts": len(drafts),
        "duplicate_answers": sum(n - 1 for n in paid.values()),
        "duplicate_drafts": len(drafts) - len({d.story_key for d in drafts}),
        "duplicate_documents": len(documents) - len(set(documents)) + abs(len(set(documents)) - len(set(publications))),
        "lost_units": sum(c.state != "done" for c in claims) + len(draft_units - {d.story_key for d in drafts}) + unclassified,
        "store_mismatch": stored - chunks,
        "owners": len({c.owner for c in claims}),
        "takeovers": sum(max(0, c.attempts - 1) for c in claims),
        "phases": {stage: (max(times) - min(times)).total_seconds() for stage, times in phases.items()},
        "phase_units": Counter(c.stage for c in claims),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stories", type=int, default=24, help="stories in the feeds (default 24)")
    parser.add_argument("--sources", type=int, default=2, help="outlets (feeds) reporting each story (default 2)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the fake model takes per call (default 2.0)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="llm.concurrency for all workers together (default 16: high enough not to be the limit)")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before a run counts as stuck (default 900)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]

    site = NewsSite()
    site.publish(args.stories, args.sources, datetime.now(timezone.utc))
    results = []
    with ExitStack() as stack:
        server_url = stack.enter_context(running_postgres())
        _, chroma_port = stack.enter_context(running_chroma(Path(stack.enter_context(tempfile.TemporaryDirectory()))))
        model = stack.enter_context(FakeOpenAIServer(reply=NewsroomModel(mistake_every=3), delay=args.delay))
        print(f"Workers benchmark: {args.stories} stories x {args.sources} sources, fake model at {args.delay}s/call, "
              f"llm.concurrency {args.concurrency} shared, PostgreSQL ledger, chroma run store, {os.cpu_count()} cores")
        for n in counts:
            result = measure(n, server_url, chroma_port, site, model, args)
            results.append(result)
            print(f"  {n} worker(s): {result['wall_s']:.1f} s, {result['drafts']} stories, {result['per_minute']:.1f} stories/min, "
                  f"{result['units']} units by {result['owners']} worker(s), {result['requests']} model requests; "
                  f"duplicates: answers {result['duplicate_answers']}, drafts {result['duplicate_drafts']}, "
                  f"documents {result['duplicate_documents']}; lost units {result['lost_units']}; "
                  f"store vs ledger chunks {result['store_mismatch']:+d}; {result['rss_mib']:.0f} MiB per worker", flush=True)
            print("    phases: " + ", ".join(f"{stage} {seconds:.1f} s ({result['phase_units'][stage]} units)"
                                          for stage, seconds in result["phases"].items())
                  + f"; units taken over after a lease: {result['takeovers']}"
                  + f"; worker errors lived through: {len(result['recovered'])}", flush=True)
            for line in result["recovered"][:3]:
                print(f"      {line}", flush=True)
            for k, (code, tail) in result["died"].items():
                print(f"    worker {k} ended early (exit {code}); its log ends:\n      " + tail.replace("\n", "\n      "), flush=True)
    site.close()
    base = results[0]
    speedups = {r["workers"]: r["per_minute"] / base["per_minute"] for r in results}
    duplicates = sum(r["duplicate_answers"] + r["duplicate_drafts"] + r["duplicate_documents"] for r in results)
    lost = sum(r["lost_units"] for r in results)
    goals = {2: 1.8, 4: 3.0}
    for r in results[1:]:
        goal = goals.get(r["workers"])
        verdict = "" if goal is None else (f" (goal >= {goal}x: {'met' if speedups[r['workers']] >= goal else 'MISSED'})")
        print(f"  speed-up {r['workers']}/{base['workers']} worker(s): {speedups[r['workers']]:.2f}x{verdict}")
    print(", ".join(f"{r['workers']} worker(s) {r['per_minute']:.1f} stories/min ({speedups[r['workers']]:.2f}x)" for r in results)
          + f"; {duplicates} duplicates, {lost} lost units")
    return 0 if duplicates == 0 and lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
