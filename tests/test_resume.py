"""Resumable, idempotent runs (issue 7): SIGKILL a real `run.py once` at every stage boundary and
in the middle of every stage, run again, and check that nothing was duplicated, lost or paid twice.

One workspace (the bundled sample feeds) goes through a chain of runs. Each run is a real
subprocess running every stage, and each is killed one point further along, so every run
resumes what the killed one left:

* boundaries and the non-LLM middles are hit with the runner's test hook
  (NEWSDESK_TEST_KILL_AT: "<stage>:after", or "<stage>:commit:<n>" = just before the
  stage's n-th ledger commit);
* the LLM middles are hit with the fake OpenAI-compatible server answering some requests
  and holding the rest unanswered: the test kills the run once the ledger shows the answered
  ones recorded and cached (draft, check), or the hook kills it between the commits that
  follow the one answer it got (classify).

Then one run finishes everything and a last run over the unchanged feeds must do nothing.
The chain runs once per module (about 40 s on two cores); the tests below check its record.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from tests.fakes.newsroom_model import NewsroomModel, role_of
from tests.fakes.openai_server import FakeOpenAIServer, Fault

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "NEWSDESK_RESUME_TEST_KEY"
MAX_STORIES = 10  # more than the sample feeds hold for the desk's beat: every story is drafted at once
WAIT_S = 120  # only a ceiling for a run that hangs; no step depends on how fast anything is


# --- the fake model, with requests the test can hold -----------------------------------------


@dataclass
class Request:
    key: str          # model + messages: what the provider would be paid for
    role: str
    answered: bool
    messages: list


class HoldingModel:
    """NewsroomModel behind a switch: `policy(role, body)` True means "hold this request unanswered"."""

    def __init__(self) -> None:
        # A security desk: five stories in the sample feeds, all drafted in one run.
        self.model = NewsroomModel(beat=("security",))
        self.log: list[Request] = []
        self.held = 0
        self._policy: Policy | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()

    def hold(self, policy: "Policy") -> None:
        with self._lock:
            self._policy, self._release, self.held = policy, threading.Event(), 0

    def release(self) -> None:
        with self._lock:
            self._policy = None
            self._release.set()

    def __call__(self, body: dict):
        role = role_of(body)
        key = json.dumps([body.get("model"), body.get("messages")], sort_keys=True)
        with self._lock:
            policy, release = self._policy, self._release
            hold = policy is not None and policy(role, body)
            if hold:
                self.held += 1
                self.log.append(Request(key, role, False, body["messages"]))
        if hold:
            release.wait(WAIT_S)  # the run is killed meanwhile; nobody reads this answer
            return Fault(503, "held by the test")
        content = self.model(body)
        with self._lock:
            self.log.append(Request(key, role, True, body["messages"]))
        return content


Policy = Callable[[str, dict], bool]


def answer_first(role: str, n: int, hold: tuple[str, ...] = ()) -> Callable[["Chain"], Policy]:
    """Answer the first `n` requests of `role`, hold every later one, and every request of the roles in `hold`."""

    def make(_chain: "Chain") -> Policy:
        seen = Counter()

        def policy(request_role: str, _body: dict) -> bool:
            if request_role in hold:
                return True
            if request_role != role:
                return False
            seen[role] += 1
            return seen[role] > n

        return policy

    return make


# --- the ledger, read from outside the runs ---------------------------------------------------


class LedgerView:
    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, *args) -> list[tuple]:
        if not self.path.exists():
            return []
        with sqlite3.connect(self.path, timeout=30) as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def one(self, sql: str, *args):
        rows = self.rows(sql, *args)
        return rows[0][0] if rows else 0

    def snapshot(self) -> dict:
        return {
            "sources": self.one("select count(*) from sources"),
            "items": self.one("select count(*) from items"),
            "items_by_state": dict(self.rows("select state, count(*) from items group by state")),
            "unindexed": self.one("select count(*) from items where chunk_count is null"),
            "stories": self.one("select count(*) from stories"),
            "drafts_by_state": dict(self.rows("select state, count(*) from drafts group by state")),
            "publications": self.one("select count(*) from publications"),
            "llm_calls": self.one("select count(*) from llm_calls"),
            "llm_cache": self.one("select count(*) from llm_cache"),
        }


# --- the chain ----------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    kill_at: str | None = None                        # the runner's test hook
    hold: Callable[["Chain"], Policy] | None = None   # which requests the fake model holds
    kill_when: Callable[["Chain", dict], bool] | None = None   # (chain, snapshot before the run)


@dataclass
class Outcome:
    step: Step
    exit_code: int
    before: dict
    after: dict
    calls: list[tuple]    # llm_calls rows of this run: (role, cache_hit, outcome, prompt)
    outbox: list[str]
    requests: list[Request]
    output: str           # what the run printed


@dataclass
class Chain:
    workspace: Path
    ledger: LedgerView
    model: HoldingModel
    outcomes: list[Outcome] = field(default_factory=list)
    step_requests: int = 0    # where the current run's requests start in model.log
    step_first_call: int = 0  # the last llm_calls id before the current run

    @property
    def config_path(self) -> Path:
        return self.workspace / "config.toml"

    def outbox(self) -> list[str]:
        folder = self.workspace / "outbox"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def checked_drafts(self) -> int:
        return self.ledger.one("select count(*) from drafts where state = 'checked'")

    def run(self, step: Step) -> Outcome:
        before = self.ledger.snapshot()
        first_call = self.step_first_call = self.ledger.one("select coalesce(max(id), 0) from llm_calls")
        first_request = self.step_requests = len(self.model.log)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NEWSDESK_TEST_KILL_AT"))}
        env[KEY_ENV] = "sk-resume-test-0000"
        if step.kill_at:
            env["NEWSDESK_TEST_KILL_AT"] = step.kill_at
        if step.hold:
            self.model.hold(step.hold(self))
        log = open(self.workspace / f"run-{len(self.outcomes) + 1}.log", "w")
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "once", "--config", str(self.config_path)],
            cwd=self.workspace, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            if step.kill_when:
                self._kill_when(process, step, before)
            process.wait(WAIT_S)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            self.model.release()
            log.close()
        output = (self.workspace / f"run-{len(self.outcomes) + 1}.log").read_text()
        if (step.kill_at or step.kill_when) and process.returncode != -signal.SIGKILL:
            pytest.fail(f"step '{step.name}': the run was not killed (exit {process.returncode}):\n{output[-3000:]}")
        calls = self.ledger.rows(
            "select role, cache_hit, outcome, prompt from llm_calls where id > ? order by id", first_call
        )
        outcome = Outcome(step, process.returncode, before, self.ledger.snapshot(), calls, self.outbox(),
                          self.model.log[first_request:], output)
        self.outcomes.append(outcome)
        return outcome

    def _kill_when(self, process: subprocess.Popen, step: Step, before: dict) -> None:
        deadline = time.monotonic() + WAIT_S
        while not step.kill_when(self, before):
            if process.poll() is not None:
                if step.kill_at and process.returncode == -signal.SIGKILL:
                    return  # the runner's hook got there first
                pytest.fail(f"step '{step.name}': the run ended (exit {process.returncode}) before the kill point")
            if time.monotonic() > deadline:
                pytest.fail(f"step '{step.name}': the kill point was not reached within {WAIT_S}s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)


def cached_and_held(chain: Chain, before: dict) -> bool:
    """At least one answer of this run is in the cache and at least one request is held."""
    return chain.ledger.one("select count(*) from llm_cache") > before["llm_cache"] and chain.model.held >= 1


def draft_saved_and_held(chain: Chain, before: dict) -> bool:
    """One draft of this run is saved (drafts land as they are written) and another writer is held."""
    held_writers = sum(1 for r in chain.model.log[chain.step_requests:] if r.role == "writer" and not r.answered)
    return chain.ledger.one("select count(*) from drafts") > sum(before["drafts_by_state"].values()) and held_writers >= 1


def batch_saved_and_held(chain: Chain, before: dict) -> bool:
    """Another batch is held and every item this run got an answer for (paid or cached) is saved.
    Reached only if the classifier saves a batch in fewer commits than the kill hook counts."""
    answered = sum(
        len(classifier_items(r.messages)) for r in chain.model.log[chain.step_requests:] if r.answered and r.role == "classifier"
    )
    cached = sum(
        len(classifier_items(json.loads(prompt)))
        for (prompt,) in chain.ledger.rows(
            "select prompt from llm_calls where id > ? and role = 'classifier' and cache_hit", chain.step_first_call
        )
    )
    saved = before["items_by_state"].get("fetched", 0) - chain.ledger.snapshot()["items_by_state"].get("fetched", 0)
    return chain.model.held >= 1 and answered > 0 and saved >= answered + cached


def classifier_items(messages: list) -> list[tuple[str, str]]:
    """(source, title) of every item in a classifier prompt: prompts may number items instead of naming their ids."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    return [
        (re.search(r"^Source: (.*)$", block, re.M).group(1), re.search(r"^Title: (.*)$", block, re.M).group(1))
        for block in re.findall(r"<item id=[^>]*>\n(.*?)\n</item>", user, re.DOTALL)
    ]


STEPS = [
    Step("mid-fetch: two feeds stored, the third feed's transaction lost", kill_at="fetch:commit:3"),
    Step("boundary fetch | classify", kill_at="fetch:after"),
    # Classify indexes what fetch stored while its first requests are out: the first chunk counts are lost
    # after their chunks were upserted into Chroma.
    Step("mid-index: chunks in Chroma, their counts not in the ledger", kill_at="index:commit:1"),
    # The test config turns the embedding prefilter off, so the classify stage's first commits are the
    # first answered batch's: the gateway's llm_calls row, its cache row, then the items' classifications.
    Step("mid-classify: a batch answered and recorded as paid, its cache write lost",
         kill_at="classify:commit:2", hold=answer_first("classifier", 1)),
    Step("mid-classify: a batch answered, part of its items saved, the other batches in flight",
         kill_at="classify:commit:5", hold=answer_first("classifier", 1), kill_when=batch_saved_and_held),
    Step("boundary classify | draft", kill_at="classify:after"),
    # Drafting and checking stream: the saved draft's check call may go out before the kill. It is held, so the
    # kill finds every call still in flight unanswered, as the test's accounting (paid == served) assumes.
    Step("mid-draft: stories clustered, one article written and saved, the other writers and its check in flight",
         hold=answer_first("writer", 1, hold=("judge",)), kill_when=draft_saved_and_held),
    # Checks stream beside drafting, so when the draft stage ends some check calls are out: they are held, so the
    # kill at the boundary finds none answered and unrecorded (in flight, which a rerun may pay for once more).
    Step("boundary draft | check", kill_at="draft:after", hold=answer_first("judge", 0)),
    # Drafts are checked concurrently, one check call each. Two checks are answered, the others held. Each answer
    # is one commit (llm_calls row and cache entry) and each save another, the save after its answer: of the first
    # three commits, whatever their order, two are answers and one a save. Killed before the fourth, one draft is
    # checked and the other's answer is paid and cached but its save is lost.
    Step("mid-check: one draft checked, the next one's check answered and cached, its save lost, the others held",
         kill_at="check:commit:4", hold=answer_first("judge", 2)),
    Step("boundary check | publish", kill_at="check:after"),
    Step("mid-publish: one draft published, the next one's files written but its commit lost",
         kill_at="publish:commit:2"),
    Step("boundary publish | sync", kill_at="publish:after"),
    Step("a run to the end"),
    Step("a run over unchanged feeds"),
]


def write_config(workspace: Path, base_url: str) -> None:
    config = (workspace / "config.toml").read_text()
    config = config.replace(
        "offline = true",
        f'offline = false\nbase_url = "{base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0',
    )
    config = config.replace("max_per_run = 6", f"max_per_run = {MAX_STORIES}")
    assert f'base_url = "{base_url}"' in config and f"max_per_run = {MAX_STORIES}" in config
    # Every item goes to the model, so the classify stage's commits start with the model's answers.
    config += "\n[classify]\nprefilter_threshold = -1.0\n"
    (workspace / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    workspace = prepare_workspace(tmp_path_factory.mktemp("resume") / "workspace")
    model = HoldingModel()
    with FakeOpenAIServer(reply=model) as server:
        write_config(workspace, server.base_url)
        chain = Chain(workspace, LedgerView(workspace / "data" / "ledger.sqlite"), model)
        for step in STEPS:
            chain.run(step)
    return chain


def outcome(chain: Chain, prefix: str) -> Outcome:
    return next(o for o in chain.outcomes if o.step.name.startswith(prefix))


# --- each kill landed where it was meant to ------------------------------------------------------


def test_every_kill_landed_at_its_point(chain):
    mid_fetch, fetched, mid_index = (o.after for o in chain.outcomes[:3])
    assert mid_fetch["sources"] == 2 and 0 < mid_fetch["items"] < fetched["items"]
    # Fetch leaves the indexing to classify, which follows in the same run.
    assert fetched["unindexed"] == fetched["items"] and fetched["items_by_state"] == {"fetched": fetched["items"]}
    assert mid_index["items"] == fetched["items"] and mid_index["unindexed"] == mid_index["items"]
    assert mid_index["items_by_state"] == {"fetched": fetched["items"]}, "nothing classified before the index was done"

    cache_lost, half_saved = (o for o in chain.outcomes if o.step.name.startswith("mid-classify"))
    assert cache_lost.after["items_by_state"] == {"fetched": fetched["items"]}  # nothing saved yet
    assert 0 < half_saved.after["items_by_state"].get("fetched", 0) < fetched["items"]
    assert "fetched" not in outcome(chain, "boundary classify").after["items_by_state"]

    mid_draft = outcome(chain, "mid-draft").after
    stories = mid_draft["stories"]
    assert stories >= 3 and mid_draft["drafts_by_state"] == {"drafted": 1}, "the draft written before the kill was kept"
    assert outcome(chain, "boundary draft").after["drafts_by_state"] == {"drafted": stories}

    mid_check = outcome(chain, "mid-check").after["drafts_by_state"]
    assert mid_check.get("checked", 0) >= 1 and mid_check.get("drafted", 0) >= 1
    assert outcome(chain, "boundary check").after["drafts_by_state"] == {"checked": stories}

    mid_publish = outcome(chain, "mid-publish")
    assert mid_publish.after["publications"] == 1
    assert len([f for f in mid_publish.outbox if f.endswith(".md")]) == 2  # the second draft's files, unrecorded
    assert outcome(chain, "boundary publish").after["drafts_by_state"] == {"published": stories}

    final = outcome(chain, "a run to the end")
    assert final.exit_code == 0, final.output[-3000:]


# --- nothing duplicated -------------------------------------------------------------------------


def test_chroma_holds_each_chunk_once(chain):
    from pipeline.services.store import Store

    config = load_config(chain.config_path)
    store = Store.from_config(config)
    ids = store.collection.get(include=[])["ids"]
    counts = dict(chain.ledger.rows("select id, chunk_count from items"))
    expected = {f"{item}:{i}" for item, n in counts.items() for i in range(n)}
    assert len(ids) == len(set(ids)) == store.count() == sum(counts.values())
    assert set(ids) == expected


def test_one_draft_per_story_and_one_document_per_draft(chain):
    drafts = chain.ledger.rows("select id, story_key, state from drafts")
    assert len(drafts) == chain.ledger.one("select count(*) from stories") >= 3
    assert len({key for _, key, _ in drafts}) == len(drafts)
    drafted_stories = chain.ledger.rows("select key from stories where state = 'drafted'")
    assert sorted(k for (k,) in drafted_stories) == sorted(key for _, key, _ in drafts)

    publications = chain.ledger.rows("select draft_id, doc_id, state from publications")
    assert sorted(p[0] for p in publications) == sorted(d[0] for d in drafts)
    assert {p[2] for p in publications} == {"written"}
    stems = sorted(p[1] for p in publications)
    files = chain.outbox()
    assert sorted(f.removesuffix(".md") for f in files if f.endswith(".md")) == stems
    assert sorted(f.removesuffix(".html") for f in files if f.endswith(".html")) == stems
    assert [f for f in files if not f.endswith((".md", ".html"))] == []  # no temp file left by a kill
    for stem, (draft_id,) in zip(stems, (chain.ledger.rows("select draft_id from publications where doc_id = ?", s)[0] for s in stems)):
        assert f"newsdesk-draft: {draft_id}" in (chain.workspace / "outbox" / f"{stem}.md").read_text()


# --- nothing lost ---------------------------------------------------------------------------------


def test_every_feed_entry_ends_as_an_item_that_moved_on(chain):
    from agents.fetcher import content_hash, parse_feed, to_feed_entry
    from pipeline.core.models import utcnow

    config = load_config(chain.config_path)
    items = chain.ledger.rows("select canonical_url, content_hash, state, chunk_count, story_key from items")
    urls = {row[0] for row in items}
    hashes = {row[1] for row in items}
    entries = 0
    for feed in config.feeds:
        parsed = parse_feed(Path(config.feed_location(feed)).read_bytes(), content_type="application/xml", location="")
        for raw in parsed.entries:
            entry = to_feed_entry(feed.name, raw, base=None, fetched=utcnow(), limits=config.limits)
            entries += 1
            text = max(entry.content, entry.summary, key=len)
            assert entry.canonical_url in urls or content_hash(text) in hashes, f"lost: {entry.url}"
    assert entries > len(items) > 0  # the sample feeds carry syndicated copies, stored once

    states = Counter(row[2] for row in items)
    assert set(states) <= {"clustered", "irrelevant"}, states
    assert all(row[3] is not None for row in items)
    story_keys = {k for (k,) in chain.ledger.rows("select key from stories")}
    assert all(row[4] in story_keys for row in items if row[2] == "clustered")
    stories = Counter(s for (s,) in chain.ledger.rows("select state from stories"))
    assert set(stories) == {"drafted"}


# --- nothing paid twice -----------------------------------------------------------------------------


def paid_calls(chain: Chain, role: str) -> list[str]:
    """Prompts of `role` the provider answered and the ledger recorded as paid, in order, over the chain."""
    return [
        json.dumps(json.loads(prompt), sort_keys=True)
        for o in chain.outcomes
        for call_role, hit, result, prompt in o.calls
        if call_role == role and not hit and result == "ok"
    ]


def test_the_ledger_records_every_answer_the_provider_gave(chain):
    answered = [r for o in chain.outcomes for r in o.requests if r.answered]
    calls = [c for o in chain.outcomes for c in o.calls]
    assert {result for _, _, result, _ in calls} == {"ok"}
    paid = Counter((role, json.dumps(json.loads(p), sort_keys=True)) for role, hit, _, p in calls if not hit)
    served = Counter((r.role, json.dumps(r.messages, sort_keys=True)) for r in answered)
    by_step = {}
    for o in chain.outcomes:  # where they differ, named by step (a kill with an answer not yet recorded)
        step_paid = Counter((role, json.dumps(json.loads(p), sort_keys=True)) for role, hit, _, p in o.calls if not hit)
        step_served = Counter((r.role, json.dumps(r.messages, sort_keys=True)) for r in o.requests if r.answered)
        if step_paid != step_served:
            by_step[o.step.name] = ([k[0] for k in step_served - step_paid], [k[0] for k in step_paid - step_served])
    assert paid == served, f"served but not recorded, recorded but not served, by step: {by_step}"


@pytest.mark.parametrize("role", ["writer", "judge"])
def test_paid_answers_are_never_bought_again(chain, role):
    paid = Counter(paid_calls(chain, role))
    assert paid, f"the chain made no {role} call"
    assert max(paid.values()) == 1, f"{sum(n - 1 for n in paid.values())} {role} answer(s) bought twice"


def test_paid_classifications_are_never_bought_again(chain):
    """Each item goes to the model in exactly one paid request, whatever the point of a kill.

    Two kill points of the chain catch what used to pay twice: between the llm_calls row and
    its cache entry (now one transaction), and half way through saving an answered batch
    (now one transaction per batch).
    """
    paid = paid_calls(chain, "classifier")
    assert paid and max(Counter(paid).values()) == 1
    sent = Counter(item for prompt in paid for item in classifier_items(json.loads(prompt)))
    again = sorted(title for (_, title), n in sent.items() if n > 1)
    assert not again, f"{len(again)} item(s) classified by the model twice: {again[:5]}"
    # Every item the ledger says the model classified came from a paid answer or a cached one.
    answers = [json.loads(p) for o in chain.outcomes for r, _, _, p in o.calls if r == "classifier"]
    by_model = chain.ledger.one("select count(*) from items where json_extract(classification, '$.method') = 'llm'")
    assert len({item for messages in answers for item in classifier_items(messages)}) == by_model


def test_reruns_take_answers_already_paid_for_from_the_cache(chain):
    # The draft written before the kill was saved with its answer: the rerun needs neither again.
    written = {
        json.dumps(json.loads(p), sort_keys=True) for r, hit, _, p in outcome(chain, "mid-draft").calls if r == "writer" and not hit
    }
    repaid = {
        json.dumps(json.loads(p), sort_keys=True) for r, hit, _, p in outcome(chain, "boundary draft").calls if r == "writer" and not hit
    }
    assert written and not written & repaid
    for killed, rerun, role in (("mid-check", "boundary check", "judge"),):
        paid_before = {
            json.dumps(json.loads(p), sort_keys=True)
            for r, hit, _, p in outcome(chain, killed).calls
            if r == role and not hit
        }
        hits = [
            json.dumps(json.loads(p), sort_keys=True)
            for r, hit, _, p in outcome(chain, rerun).calls
            if r == role and hit
        ]
        assert hits, f"the rerun after '{killed}' took no {role} answer from the cache"
        # Answers the killed run paid for (a draft it finished checking needs none of them again).
        assert set(hits) <= paid_before


def test_a_run_over_unchanged_feeds_does_nothing(chain):
    idle, final = chain.outcomes[-1], chain.outcomes[-2]
    assert idle.exit_code == 0, idle.output[-3000:]
    assert idle.requests == [] and idle.calls == []
    assert idle.after == final.after
    assert idle.outbox == final.outbox
