"""Story clustering on the bundled sample feeds gives the documented groups, with stable keys."""

import json
from pathlib import Path

import pytest
from sqlalchemy import select, update

from pipeline import schema
from pipeline.clock import fixed_clock
from pipeline.config import load_config
from pipeline.demo import prepare_workspace
from pipeline.runner import Run
from pipeline.stories import assign_stories, select_top, story_key, waiting_stories
from tests.conftest import SAMPLE_AS_OF

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    workspace = prepare_workspace(tmp_path_factory.mktemp("stories") / "ws")
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    run.run_stages(["fetch", "classify"])
    assert all(r.ok for r in run.reports), [r.errors for r in run.reports]
    return run


def groups_by_url(ledger):
    with ledger.engine.connect() as connection:
        return {url: key for url, key in connection.execute(select(schema.items.c.canonical_url, schema.items.c.story_key))}


def test_sample_feeds_cluster_into_the_documented_stories(classified):
    run = classified
    stories, late = assign_stories(run.config, run.ledger, run.store.embed, now=run.now())
    assert late == 0
    story_of = groups_by_url(run.ledger)
    expected = json.loads((ROOT / "examples" / "story_groups.json").read_text())
    keys_seen = set()
    for group in expected:
        keys = {story_of[link] for link in group["links"]}
        assert len(keys) == 1 and None not in keys, f"{group['event']} split or unassigned: {keys}"
        keys_seen |= keys
    assert len(keys_seen) == len(expected), "two documented events were merged"
    sizes = {s.key: len(s.item_ids) for s in stories}
    multi = {k for k, n in sizes.items() if n > 1}
    assert multi == keys_seen, "no other items were grouped together"

    for story in stories:
        assert story.key == story_key(story.item_ids[0]), "the key derives from the founding (earliest) item"
    top = select_top(waiting_stories(run.ledger), 6)
    assert len(top) == 6 and [s.score for s in top] == sorted((s.score for s in top), reverse=True)
    widest = max(stories, key=lambda s: len(s.sources))
    assert len(widest.sources) == 4 and widest.key in {s.key for s in top}

    # Running selection again assigns nothing twice.
    again, _ = assign_stories(run.config, run.ledger, run.store.embed, now=run.now())
    assert again == []


def test_a_late_source_joining_a_drafted_story_is_recorded_not_redrafted(classified):
    run = classified
    story_of = groups_by_url(run.ledger)
    expected = json.loads((ROOT / "examples" / "story_groups.json").read_text())
    korvex = expected[0]["links"]
    key = story_of[korvex[0]]
    late_url = korvex[-1]
    with run.ledger.begin() as connection:
        # The story was drafted before its last source arrived: take that item out and mark the story drafted.
        story = connection.execute(select(schema.stories).where(schema.stories.c.key == key)).one()
        late_id = connection.execute(select(schema.items.c.id).where(schema.items.c.canonical_url == late_url)).scalar_one()
        connection.execute(
            update(schema.stories).where(schema.stories.c.key == key)
            .values(state="drafted", item_ids=[i for i in story.item_ids if i != late_id])
        )
        connection.execute(update(schema.items).where(schema.items.c.id == late_id).values(state="classified", story_key=None))
    stories, late = assign_stories(run.config, run.ledger, run.store.embed, now=run.now())
    assert late == 1
    with run.ledger.engine.connect() as connection:
        row = connection.execute(select(schema.stories).where(schema.stories.c.key == key)).one()
    assert row.state == "drafted", "a drafted story is never silently redrafted"
    assert row.late_item_ids == [late_id]
    assert late_id in row.item_ids


def test_more_independent_sources_rank_higher_all_else_equal(classified):
    from datetime import timedelta

    from pipeline.models import Classification
    from pipeline.stories import Candidate, Group, score_group
    from pipeline.stages import row_to_item

    with classified.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items).limit(3)).all()
    items = [row_to_item(r) for r in rows]
    same = Classification(relevant=True, topics=["security"], newsworthiness=0.5, summary="s", entities=[], reason="r")
    when = items[0].published
    members = [Candidate(item=i.model_copy(update={"source": f"outlet{n}", "published": when}), classification=same) for n, i in enumerate(items)]
    wide = score_group(Group(key="a", members=members), classified.config, now=when + timedelta(hours=1))
    narrow = score_group(Group(key="b", members=members[:1]), classified.config, now=when + timedelta(hours=1))
    assert wide > narrow


def test_status_shows_the_editor_which_drafted_stories_gained_sources(classified):
    from rich.console import Console

    from pipeline.status import late_sources_table

    with classified.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.stories.c.key, schema.stories.c.late_item_ids).where(schema.stories.c.state == "drafted")).all()
    late = [(k, ids) for k, ids in rows if ids]
    assert late, "the previous test left one drafted story with a late source"
    console = Console(record=True, width=200)
    console.print(late_sources_table(classified.ledger))
    text = console.export_text()
    assert late[0][0] in text
    with classified.ledger.engine.connect() as connection:
        outlet = connection.execute(select(schema.items.c.source).where(schema.items.c.id == late[0][1][0])).scalar_one()
    assert outlet in text


def test_an_undated_story_ranks_after_every_dated_one_never_as_news_of_now():
    from pipeline.models import Story

    def story(key, score, dated):
        return Story(key=key, title=key, item_ids=[key], sources=["a"], topics=[], score=score,
                     first_published=SAMPLE_AS_OF, last_published=SAMPLE_AS_OF, dated=dated)

    ranked = select_top([story("undated", 0.9, False), story("old-but-dated", 0.2, True), story("dated", 0.6, True)], 3)
    assert [s.key for s in ranked] == ["dated", "old-but-dated", "undated"]


def test_an_undated_item_gets_no_recency_credit_from_its_fetch_time(classified):
    from datetime import timedelta

    from pipeline.models import Classification
    from pipeline.stages import row_to_item
    from pipeline.stories import Candidate, Group, score_group

    with classified.ledger.engine.connect() as connection:
        row = connection.execute(select(schema.items).limit(1)).one()
    item = row_to_item(row)
    same = Classification(relevant=True, topics=["security"], newsworthiness=0.5, summary="s", entities=[], reason="r")
    now = item.published + timedelta(minutes=5)
    dated = score_group(Group(key="a", members=[Candidate(item=item, classification=same)]), classified.config, now=now)
    undated_item = item.model_copy(update={"dated": False})
    undated = score_group(Group(key="b", members=[Candidate(item=undated_item, classification=same)]), classified.config, now=now)
    assert undated < dated
