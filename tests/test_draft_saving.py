"""A draft is saved the moment it is written, so a run killed mid-stage keeps every finished draft."""

import asyncio

import pytest
from sqlalchemy import func, select

import pipeline.flow.drafting as drafting
from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.flow.runner import Run
from tests.conftest import SAMPLE_AS_OF


class Killed(BaseException):
    """Stands for SIGKILL arriving while other stories are still being written."""


def test_a_written_draft_is_in_the_ledger_before_the_other_stories_finish(tmp_path, monkeypatch):
    workspace = prepare_workspace(tmp_path / "ws")
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    run.run_stages(["fetch", "classify"])
    real_write, real_save = drafting._write, drafting.save_draft
    saved: list[str] = []
    first: list[str] = []

    def save(ledger, draft, pack):
        real_save(ledger, draft, pack)
        saved.append(draft.story_key)

    async def write(prepared, gateway, embed):
        if not first:
            first.append(prepared.story.key)
            return await real_write(prepared, gateway, embed)
        while not saved:   # the other writers are still "in flight" when the first answer lands
            await asyncio.sleep(0.01)
        raise Killed()

    monkeypatch.setattr(drafting, "_write", write)
    monkeypatch.setattr(drafting, "save_draft", save)
    with pytest.raises(Killed):
        drafting.draft_stories(run)

    with run.ledger.engine.connect() as connection:
        keys = connection.execute(select(schema.drafts.c.story_key)).scalars().all()
        drafted = connection.execute(select(func.count()).select_from(schema.stories).where(schema.stories.c.state == "drafted")).scalar_one()
    assert keys == first, "the finished draft was saved before the stage ended"
    assert drafted == 1
