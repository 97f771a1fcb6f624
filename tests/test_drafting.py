"""The draft stage on the sample feeds: valid extractive drafts, one per story, never redrafted; preview shows the prompt."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.core.models import Article, ResearchPack
from pipeline.flow.runner import Run
from pipeline.text.templates import load_templates, validate_article

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    workspace = prepare_workspace(tmp_path_factory.mktemp("drafting") / "ws")
    config_path = workspace / "config.toml"
    config_path.write_text(config_path.read_text().replace("max_per_run = 6", "max_per_run = 4"))
    run = Run(load_config(config_path), command="test")
    run.run_stages(["fetch", "classify", "draft"])
    run.finish()
    assert all(r.ok for r in run.reports), [r.errors for r in run.reports]
    return workspace


def drafts(config):
    run = Run(config, command="inspect")
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.drafts)).all()
    run.finish()
    return rows


def test_extractive_drafts_are_valid_and_say_so(workspace):
    config = load_config(workspace / "config.toml")
    rows = drafts(config)
    assert len(rows) == 4, "at most stories.max_per_run drafts per run"
    templates = load_templates(config.templates_dir, config.topic_names)
    for row in rows:
        assert row.method == "extractive" and row.writer_model == "extractive"
        assert row.state == "drafted", row.violations
        article = Article.model_validate(row.article)
        pack = ResearchPack.model_validate(row.research)
        assert validate_article(article, templates[row.template], pack.sources) == []
        assert pack.used_tokens <= pack.budget_tokens


def test_a_second_draft_run_never_redrafts_a_story(workspace):
    config = load_config(workspace / "config.toml")
    first = {r.story_key for r in drafts(config)}
    run = Run(config, command="draft")
    run.run_stages(["draft"])
    run.finish()
    second = {r.story_key for r in drafts(config)} - first
    assert second and not (second & first), "the next run drafts the next stories, not the same ones"
    with run.ledger.engine.connect() as connection:
        waiting = connection.execute(select(func.count()).select_from(schema.stories).where(schema.stories.c.state == "new")).scalar_one()
        per_story = connection.execute(select(schema.drafts.c.story_key, func.count()).group_by(schema.drafts.c.story_key)).all()
    assert all(n == 1 for _, n in per_story)
    while waiting:
        run = Run(config, command="draft")
        report = run.run_stage("draft")
        run.finish()
        assert report.items_out > 0
        with run.ledger.engine.connect() as connection:
            waiting = connection.execute(select(func.count()).select_from(schema.stories).where(schema.stories.c.state == "new")).scalar_one()
    run = Run(config, command="draft")
    report = run.run_stage("draft")
    run.finish()
    assert report.items_in == 0 and report.items_out == 0, "nothing left to draft: nothing drafted"


def test_preview_prints_the_prompt_budget_and_sources_without_a_model(workspace):
    config = load_config(workspace / "config.toml")
    run = Run(config, command="inspect")
    with run.ledger.engine.connect() as connection:
        key = connection.execute(select(schema.stories.c.key).order_by(schema.stories.c.score.desc())).scalars().first()
        calls = connection.execute(select(func.count()).select_from(schema.llm_calls)).scalar_one()
    run.finish()
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "preview", key[:8], "--config", str(workspace / "config.toml")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "system prompt" in out and "user prompt" in out
    assert '<source n="1"' in out
    assert "context window" in out and "output reserve" in out and "whole prompt" in out
    assert "Numbered sources" in out
    with run.ledger.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(schema.llm_calls)).scalar_one() == calls
