"""Drafting and checking stream in one run: a draft's check starts the moment the draft is saved.

The model here is the newsroom fake behind the real openai SDK, with one twist: every writer request after
the first is held until a judge request has arrived. Run one stage after the other, the held writers would
wait for a check that only starts once they are done (the test's ceiling ends that as a failed run); streamed,
the first draft's check goes out while the other stories are still being written, and every story is drafted,
checked and reported under its own stage.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select

from pipeline.cli.demo import prepare_workspace
from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import load_config
from pipeline.flow import runner
from pipeline.flow.runner import Run
from pipeline.services.testing import allow_model_requests
from tests.conftest import SAMPLE_AS_OF
from tests.fakes.newsroom_model import NewsroomModel, role_of
from tests.fakes.openai_server import FakeOpenAIServer, Fault

KEY_ENV = "NEWSDESK_STREAMING_TEST_KEY"
CEILING_S = 60  # only for a run that would hang; nothing here depends on how fast anything is


class WritersWaitForAJudge:
    """The newsroom fake; writer requests after the first wait (up to the ceiling) for a judge request."""

    def __init__(self) -> None:
        self.ceiling = CEILING_S
        self.model = NewsroomModel(beat=("security",))
        self.judged = threading.Event()
        self.roles: list[str] = []
        self.writers_answered_after_a_judge = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict):
        role = role_of(body)
        with self._lock:
            self.roles.append(role)
            first_writer = role == "writer" and self.roles.count("writer") == 1
        if role == "judge":
            self.judged.set()
        if role == "writer" and not first_writer:
            if not self.judged.wait(self.ceiling):
                return Fault(503, "no judge request came while this writer was held")
            with self._lock:
                self.writers_answered_after_a_judge += 1
        return self.model(body)


@pytest.fixture
def online_workspace(tmp_path, monkeypatch):
    workspace = prepare_workspace(tmp_path / "ws")
    model = WritersWaitForAJudge()
    with FakeOpenAIServer(reply=model) as server:
        config = (workspace / "config.toml").read_text().replace(
            "offline = true", f'offline = false\nbase_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0')
        (workspace / "config.toml").write_text(config)
        monkeypatch.setenv(KEY_ENV, "sk-streaming-test")
        with allow_model_requests():
            yield workspace, model


def run_all(workspace) -> Run:
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    try:
        run.run_stages(["fetch", "classify", "draft", "check"])
    finally:
        run.close()
    return run


def test_a_draft_is_checked_while_the_other_stories_are_still_being_written(online_workspace):
    workspace, model = online_workspace
    run = run_all(workspace)

    reports = {r.stage: r for r in run.reports}
    assert [r.stage for r in run.reports] == ["fetch", "classify", "draft", "check"]
    assert not reports["draft"].errors, reports["draft"].errors
    assert reports["draft"].items_out >= 3, "the desk's sample stories were drafted"
    assert model.writers_answered_after_a_judge == reports["draft"].items_out - 1
    with run.ledger.engine.connect() as connection:
        states = Counter(connection.execute(select(schema.drafts.c.state)).scalars())
    assert states.get("drafted", 0) == 0, f"every draft was checked in the same run: {dict(states)}"
    assert reports["check"].items_out == reports["draft"].items_out

    # Each stage reports its own model spend, though their calls were in flight together.
    roles = Counter(model.roles)
    assert reports["draft"].llm_calls == roles["writer"]
    assert reports["check"].llm_calls == roles["judge"] + roles["reviser"]
    assert reports["check"].duration_s >= reports["draft"].duration_s


def test_without_the_stream_the_held_writers_wait_for_a_check_that_never_starts(online_workspace, monkeypatch):
    """The test's own control: it tells streaming from running the stages one after the other."""
    workspace, model = online_workspace
    monkeypatch.setattr(runner, "STREAMED", {})
    model.ceiling = 3  # no judge can come while the draft stage runs alone, however long the writers wait
    run = run_all(workspace)
    reports = {r.stage: r for r in run.reports}
    assert model.writers_answered_after_a_judge == 0
    assert any("writing failed" in error for error in reports["draft"].errors)
