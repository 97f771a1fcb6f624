"""The draft stage: select stories, research each, write each, and store the drafts.

Stories are drafted concurrently; the gateway's semaphore caps how many model
calls are in flight. Each draft lands in one transaction with its story's
state change, so a run killed mid-way leaves every story either drafted or
still waiting, never half done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, utcnow
from pipeline.core.models import Draft, DraftState, Item, ResearchPack, StageReport, Story, StoryState
from pipeline.core.prompts import Prompt
from agents.editor import assign_stories, item_text_for_matching, load_story, select_top, waiting_stories
from pipeline.text.templates import TemplateSpec, choose_template, load_templates
from pipeline.core.tokens import count_messages, count_tokens
from pipeline.core.progress import progress
from agents.writer import write_draft
from agents.writer import prompt_library, render_writer_prompt
from agents.researcher import context_budget, context_window, research
from pipeline.text.metadata import with_meta

log = logging.getLogger("newsdesk.drafting")


# Texts per piece of clustering work done ahead: at about 20 ms a text on two cores, what `caught_up` may still
# wait for when the classifier is done early.
AHEAD_PIECE = 8


class PreviewError(Exception):
    pass


@dataclass
class PreparedStory:
    story: Story
    spec: TemplateSpec
    pack: ResearchPack
    prompt: Prompt
    model: str
    window: int


def writer_model(gateway) -> str:
    return gateway.model_for("writer") if gateway.available else "extractive"


def prepare(story: Story, config: Config, ledger: Ledger, store, gateway, templates: dict[str, TemplateSpec], now=None) -> PreparedStory:
    """Research a story and render its writer prompt, guaranteed to fit the model's window."""

    prompts = prompt_library(gateway)
    spec = choose_template(story, templates)
    model = writer_model(gateway)
    count = lambda text: count_tokens(text, model)  # noqa: E731
    empty = ResearchPack(story_key=story.key, sources=[], budget_tokens=0, used_tokens=0)
    overhead = count_messages(render_writer_prompt(story, empty, spec, prompts=prompts).messages, model)
    window = context_window(config, model)
    limit = window - config.research.output_reserve_tokens
    budget = context_budget(config, model, overhead)
    while True:
        pack = research(story, ledger, store, config, budget, count, now)
        prompt = render_writer_prompt(story, pack, spec, prompts=prompts)
        total = count_messages(prompt.messages, model)
        if total <= limit or budget == 0:
            break
        # Token counts of parts do not add up exactly to the whole; shrink by the overflow and repack.
        budget = max(0, budget - (total - limit) - 16)
    return PreparedStory(story=story, spec=spec, pack=pack, prompt=prompt, model=model, window=window)


async def _write(prepared: PreparedStory, gateway, embed) -> Draft:
    draft = await write_draft(prepared.story, prepared.pack, prepared.spec, gateway, embed=embed)
    return with_meta(draft, prepared.story.topics, prepared.pack.sources, prepared.spec.metadata, prepared.pack.language)


def needs_attention_reason(draft: Draft) -> str | None:
    """Why a draft is `needs_attention`, in the validator's own words (stored in drafts.state_reason)."""
    if draft.state != DraftState.needs_attention:
        return None
    return "; ".join(draft.violations) or "the draft breaks its template (no violation was recorded)"


def save_draft(ledger: Ledger, draft: Draft, pack: ResearchPack) -> None:
    now = utcnow()
    values = draft.model_dump(mode="json", exclude={"created"})
    values.update(research=pack.model_dump(mode="json"), created=draft.created, updated=now, state_reason=needs_attention_reason(draft))
    with ledger.begin() as connection:
        exists = connection.execute(select(schema.drafts.c.id).where(schema.drafts.c.story_key == draft.story_key)).first()
        if exists:  # another run got there first; never two drafts for one story
            return
        connection.execute(insert(schema.drafts).values(**values))
        connection.execute(
            update(schema.stories).where(schema.stories.c.key == draft.story_key).values(state=StoryState.drafted.value, updated=now)
        )


def embed_ahead_for_clustering(run, items: list[Item]) -> None:
    """Embed the clustering texts of items going to the classifier on the run's `ahead` thread, while the model
    works: `assign` then finds them in the run's embed_memo. In pieces, so that `caught_up` drops what is not begun
    when the classifier is done (whatever clustering still needs, it embeds itself)."""
    if run.unit is not None:  # a worker's classify unit: another process may cluster, nothing here would use them
        return
    if run.config.llm.offline or not getattr(run.gateway, "available", False):
        return  # classified offline, item by item: no wait on a model to fill, so nothing to gain
    texts = list(dict.fromkeys(item_text_for_matching(item) for item in items))
    for start in range(0, len(texts), AHEAD_PIECE):
        run.start_ahead(run.embed_memo, texts[start:start + AHEAD_PIECE])


def assign(run, report: StageReport) -> None:
    """Cluster the newly classified items into stories; the counts go to the report's notes."""
    run.caught_up()
    touched, late = assign_stories(run.config, run.ledger, run.embed_memo, now=run.now())
    report.notes["stories_updated"] = len(touched)
    report.notes["late_sources_recorded"] = late


def draft_stories(run) -> StageReport:
    report = StageReport(stage="draft")
    run.run_async(write_stories(run, report))
    return report


async def write_stories(run, report: StageReport, handoff: asyncio.Queue | None = None) -> None:
    """Choose the stories, research and write each, and save each draft the moment it is written.

    With a `handoff` (the runner's draft -> check stream), each saved draft's id is put on it, so its check can
    start while the other stories are still being written; before that, each story's research pack, as the
    story goes to the writer, so the check can prepare its sources during the writer's call."""
    config, ledger = run.config, run.ledger
    store = run.store
    if run.unit is None:
        assign(run, report)
        waiting = waiting_stories(ledger)
        selected = select_top(waiting, config.stories.max_per_run, config.stories.min_newsworthiness)
        report.notes["stories_waiting"] = len(waiting) - len(selected)
    else:  # a worker's unit: one story, chosen when the run's select unit was done (pipeline/flow/worker.py)
        story = load_story(ledger, run.unit.unit)
        selected = [story] if story is not None and story.state == StoryState.new else []
    report.items_in = len(selected)
    if not selected:
        return
    templates = load_templates(config.templates_dir, config.topic_names)
    gateway = run.gateway

    states: dict[str, int] = {}
    with progress(run, "draft: writing stories", total=len(selected)) as advance:

        async def write_one(item: PreparedStory) -> None:
            try:
                draft = await _write(item, gateway, store.embed)
            except Exception as exc:
                report.errors.append(f"story {item.story.key} ({item.story.title[:60]}): writing failed: {type(exc).__name__}: {exc}")
                return
            finally:
                advance()
            # Saved the moment it is written: a kill loses only the drafts still being written, never paid answers.
            save_draft(ledger, draft, item.pack)  # on the loop thread: a short transaction, in order
            states[draft.state] = states.get(draft.state, 0) + 1
            report.items_out += 1
            reason = needs_attention_reason(draft)
            if reason is not None:  # saved for an editor, but not a draft the next stages can take: say so
                report.errors.append(f"story {item.story.key} ({item.story.title[:60]}): draft {draft.id} needs attention: {reason}")
            elif handoff is not None:
                handoff.put_nowait(draft.id)

        # Each story goes to the writer as soon as it is researched: its call is in flight while the next
        # story is researched, instead of every call waiting for the research of all of them. Research runs
        # on a thread, so the loop keeps sending requests and taking answers meanwhile.
        writing = []
        for story in selected:
            try:
                item = await asyncio.to_thread(prepare, story, config, ledger, store, gateway, templates, now=run.now())
            except Exception as exc:
                report.errors.append(f"story {story.key} ({story.title[:60]}): research failed: {type(exc).__name__}: {exc}")
                advance()
                continue
            writing.append(asyncio.ensure_future(write_one(item)))
            if handoff is not None:
                handoff.put_nowait(item.pack)
        await asyncio.gather(*writing)
    report.notes.update({f"drafts_{state}": n for state, n in states.items()})


def preview(config: Config, ledger: Ledger, store, gateway, key: str, now=None) -> PreparedStory:
    with ledger.engine.connect() as connection:
        keys = connection.execute(select(schema.stories.c.key).where(schema.stories.c.key.startswith(key, autoescape=True))).scalars().all()
    if len(keys) != 1:
        waiting = ", ".join(s.key for s in waiting_stories(ledger)[:10]) or "none"
        problem = "no story" if not keys else f"{len(keys)} stories"
        raise PreviewError(f"{problem} match '{key}'; waiting stories: {waiting}")
    story = load_story(ledger, keys[0])
    templates = load_templates(config.templates_dir, config.topic_names)
    return prepare(story, config, ledger, store, gateway, templates, now=now)
