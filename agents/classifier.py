"""Classifier agent: each item is classified once, at ingest, in batches, and never paid for twice.

Order of the cheap-to-expensive checks for every new item:
1. an identical text (content hash) already classified: reuse that result;
   identical texts pending together are classified once;
2. the embedding prefilter: clearly off-beat items are marked irrelevant with no model call;
3. the model, in batches of up to `classify.batch_size`, each item cut to
   `classify.item_tokens` and the batch shrunk until prompt and reply fit the
   model's context window. Items the model skipped or mangled are retried alone.
With no model configured, the embedding and keyword signals decide, and the
result says so (`method = "offline"`).

The response schema is built per batch (`batch_schema`): the batch's ids and the
configured topics are enums, a relevant result needs a topic, and the result count
is fixed, so a model decoding under the schema cannot answer outside the project's
rules; only "each id once" is checked after the reply.

Failed model attempts are counted per item in the ledger (`items.classify_attempts`).
An item at `llm.max_classify_attempts` takes the offline classifier
(`method = "offline-fallback"`, the cause in `state_reason`) and is never sent again.

Each batch is saved as soon as it is answered, so a provider failure mid-run
keeps what was classified and leaves the rest `fetched` for the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

from collections import Counter
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np
from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError, create_model
from sqlalchemy import func, select, update

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, row_to_item, utcnow
from pipeline.services.llm import BudgetExceeded, CircuitOpen, InvalidOutput, LLMError, ProviderUnavailable, plain_json_schema, strip_code_fence
from pipeline.text.safety import instructs_a_model
from pipeline.core.models import Classification, Item, ItemState, StageReport
from pipeline.core.prompts import PromptLibrary
from pipeline.text.sentences import own_summary
from pipeline.core.tokens import count_messages, count_tokens, truncate_to_tokens

log = logging.getLogger("newsdesk.classifier")

# Token budget of one item's reply: id, flags, a 30-word summary, up to 10 entities, a reason.
ITEM_REPLY_TOKENS = 250
TITLE_TOKENS = 60
# The <item> fence, source, date and labels around each item's title and text.
ITEM_FRAME_TOKENS = 40
MAX_ENTITIES = 10
# Offline topic choice: each distinct keyword adds this to a topic's similarity (up to 4 keywords),
# and topics within this margin of the best one are kept.
KEYWORD_BONUS = 0.05
TOPIC_MARGIN = 0.10
# The highest newsworthiness an item that addresses an AI can get, from the model or offline.
INSTRUCTED_CAP = 0.1

_NAME = re.compile(r"\b(?:[A-Z][\w&.\-]*[A-Za-z0-9](?:\s+(?:of\s+|de\s+)?[A-Z][\w&.\-]*[A-Za-z0-9])*|[A-Z]{2,}\d*)\b")
_SENTENCE_START_WORDS = {"The", "A", "An", "In", "On", "At", "It", "This", "That", "But", "And", "He", "She", "They", "We", "I", "Its", "His", "Her"}


class ItemResult(BaseModel):
    """One item's verdict as the model returns it. The schema sent for a batch narrows it
    (see `batch_schema`); stored results are read through this shape."""

    id: str = Field(description="the item's id, exactly as given")
    relevant: bool
    topics: list[str] = Field(description="names from the topic list only; [] when not relevant")
    newsworthiness: float = Field(ge=0, le=1)
    summary: str = Field(description="one factual sentence, at most 30 words")
    entities: list[str] = Field(description="main named organisations, people, projects, tokens, places; at most 10")
    reason: str = Field(description="one short phrase")


class BatchResult(BaseModel):
    results: list[ItemResult]


def batch_schema(ids: list[str], topic_names: list[str]) -> type[BatchResult]:
    """The response schema for one batch, so that a model decoding under it (strict structured
    output, or a grammar-constrained local server) can only say what the project accepts:

    * `id` is an enum of this batch's ids, `topics` an enum of the configured topic names;
    * a result is either relevant, with at least one topic, or not relevant, with none
      (two variants told apart by `relevant`): "relevant without a topic" cannot be written;
    * `results` holds one entry per item (minItems = maxItems = batch size).

    What a schema cannot say (each id exactly once) is left to `batch_validator`. Item counts
    whose breach costs nothing are schema keywords for the decoder but not enforced on the
    reply: a short reply is not worth a repair round (its missing items are asked alone), and
    `to_classification` trims more than 10 entities and topics on an irrelevant item.
    The model is named BatchResult whatever the batch, as fakes and logs know it by that name.
    """
    id_type = Literal[tuple(ids)]  # type: ignore[valid-type]
    id_field = (id_type, Field(description="the item's id, exactly as given; one result per id"))
    shared = dict(
        id=id_field,
        newsworthiness=(float, Field(ge=0, le=1, description="0 to 1, see the scale in the instructions")),
        summary=(str, Field(description="one factual sentence, at most 30 words")),
        entities=(list[str], Field(
            description="main named organisations, people, projects, tokens, places; at most 10",
            json_schema_extra={"maxItems": MAX_ENTITIES},
        )),
        reason=(str, Field(description="one short phrase")),
    )
    off_beat = create_model(
        "OffBeatResult", __base__=ItemResult, __module__=__name__,
        id=id_field,
        relevant=(Literal[False], Field(description="false: not news on any of our topics")),
        topics=(list[str], Field(description="always [] for an item that is not relevant",
                                 json_schema_extra={"maxItems": 0, "items": {"type": "string"}})),
        **{k: v for k, v in shared.items() if k != "id"},
    )
    variants: list[Any] = [Annotated[off_beat, Tag("irrelevant")]]
    if topic_names:
        topic_type = Literal[tuple(topic_names)]  # type: ignore[valid-type]
        on_beat = create_model(
            "OnBeatResult", __base__=ItemResult, __module__=__name__,
            id=id_field,
            relevant=(Literal[True], Field(description="true: news on at least one of our topics")),
            topics=(list[topic_type], Field(
                min_length=1, description="the fitting topics, at least one, names from the topic list only",
                json_schema_extra={"maxItems": len(topic_names)},
            )),
            **{k: v for k, v in shared.items() if k != "id"},
        )
        variants.insert(0, Annotated[on_beat, Tag("relevant")])
    result_type = Annotated[Union[tuple(variants)], Discriminator(_relevance_tag)] if len(variants) > 1 else off_beat
    return create_model(
        "BatchResult", __base__=BatchResult, __module__=__name__,
        results=(list[result_type], Field(
            description=f"exactly {len(ids)} results, one per item id, in the order of the items",
            json_schema_extra={"minItems": len(ids), "maxItems": len(ids)},
        )),
    )


def _relevance_tag(value: Any) -> str | None:
    relevant = value.get("relevant") if isinstance(value, dict) else getattr(value, "relevant", None)
    if relevant is None:
        return None
    return "relevant" if relevant is True else "irrelevant"


# --- cheap signals --------------------------------------------------------------------------


@dataclass
class Signals:
    """The cheap evidence for one item: similarity to each topic and keyword hits."""

    similarity: dict[str, float]
    keywords: dict[str, list[str]]

    @property
    def best(self) -> float:
        return max(self.similarity.values(), default=0.0)

    def keyword_topics(self) -> list[str]:
        """Topics two or more distinct keywords point at: one word alone ("trading desk",
        "drained beans") is too weak to call an item on-beat."""
        return [name for name, hits in self.keywords.items() if len(set(hits)) >= 2]

    def scores(self) -> dict[str, float]:
        return {
            name: score + KEYWORD_BONUS * min(len(set(self.keywords.get(name, []))), 4)
            for name, score in self.similarity.items()
        }


def matching_text(item: Item) -> str:
    return f"{item.title}\n{item.summary}\n{item.text[:1500]}"


def topic_signals(items: list[Item], config: Config, store) -> list[Signals]:
    """Cosine similarity of each item to each topic description, plus keyword hits.

    Items reuse the vectors of their indexed chunks (no second embedding pass);
    an item missing from the store is embedded from its title and opening.
    """
    topics = config.topics
    if not topics or not items:
        return [Signals({}, {}) for _ in items]
    topic_vectors = np.asarray(store.embed([f"{t.name}: {t.description}" for t in topics]), dtype=np.float32)
    stored = store.item_embeddings([i.id for i in items])
    missing = [i for i in items if i.id not in stored]
    if missing:
        stored.update(zip((i.id for i in missing), np.asarray(store.embed([matching_text(i) for i in missing]))))
    item_vectors = np.vstack([stored[i.id] for i in items]).astype(np.float32)
    similarity = item_vectors @ topic_vectors.T
    return [Signals({t.name: float(s) for t, s in zip(topics, row)}, keyword_hits(item, config))
            for row, item in zip(similarity, items)]


def keyword_hits(item: Item, config: Config) -> dict[str, list[str]]:
    """Each topic's keywords found in the item (no vectors needed: known the moment the item is stored)."""
    text = f" {item.title} {item.text[:4000]} ".lower()
    hits = {t.name: [k for k in t.keywords if re.search(rf"\b{re.escape(k.lower())}\b", text)] for t in config.topics}
    return {name: found for name, found in hits.items() if found}


def clearly_off_beat(signals: Signals, config: Config) -> bool:
    """Far from every topic and no topic backed by its keywords: not worth a model call."""
    return signals.best < config.classify.prefilter_threshold and not signals.keyword_topics()


def addresses_a_model(item: Item) -> bool:
    return instructs_a_model(f"{item.title}\n{item.summary}\n{item.text}")


# --- the offline classification -------------------------------------------------------------


def named_entities(text: str, limit: int = MAX_ENTITIES) -> list[str]:
    counts: dict[str, int] = {}
    for match in _NAME.findall(text):
        if match in _SENTENCE_START_WORDS or len(match) < 2:
            continue
        counts[match] = counts.get(match, 0) + 1
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def offline_classification(item: Item, signals: Signals, config: Config, method: str = "offline") -> Classification:
    """Relevant when close to a topic or backed by its keywords; the topics are the best-scoring
    one and any within TOPIC_MARGIN of it, so a hack story is not also filed under markets."""
    threshold = config.classify.offline_threshold
    scores = signals.scores()
    relevant = bool(scores) and (signals.best >= threshold or bool(signals.keyword_topics()))
    topics: list[str] = []
    if relevant:
        top = max(scores.values())
        topics = sorted({name for name, score in scores.items() if score >= threshold and score >= top - TOPIC_MARGIN}
                        | {max(scores, key=scores.get)})
    keyword_count = sum(len(v) for v in signals.keywords.values())
    newsworthiness = 0.0
    if relevant:
        # Closeness to the beat and keyword density stand in for a model's judgement.
        newsworthiness = min(1.0, 0.25 + 0.5 * max(0.0, signals.best) + 0.05 * min(keyword_count, 5))
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(signals.similarity.items(), key=lambda kv: -kv[1])[:3])
    keywords = "; ".join(f"{k}: {', '.join(v)}" for k, v in signals.keywords.items())
    reason = f"{method}: topic similarity {shown}" + (f"; keywords {keywords}" if keywords else "; no topic keywords")
    if relevant and addresses_a_model(item):
        # The system prompt's rule for the model, applied here too: an item that tries to instruct
        # its reader's AI is not news for that reason, and must never rank high.
        newsworthiness = min(newsworthiness, INSTRUCTED_CAP)
        reason += "; contains instructions addressed to an AI, ranked low"
    return Classification(
        relevant=relevant,
        topics=topics,
        newsworthiness=round(newsworthiness, 3),
        summary=own_summary(item),
        entities=named_entities(f"{item.title}. {item.text[:3000]}"),
        reason=reason,
        method=method,
    )


# --- the model ------------------------------------------------------------------------------


def batch_validator(expected_ids: list[str]):
    """What the batch schema cannot say: one result per id. Missing ids are not repair
    material: those items are cheaper to retry alone than to resend the whole batch."""

    def validate(result: BatchResult) -> list[str]:
        counts = Counter(r.id for r in result.results)
        twice = [i for i in expected_ids if counts[i] > 1]
        missing = [i for i in expected_ids if not counts[i]]
        if not twice:
            return []
        return [
            f"item {i}: {counts[i]} results; give exactly one result per id" for i in twice
        ] + ([f"no result for: {', '.join(missing)}"] if missing else [])

    return validate


def usable_results(results: list[ItemResult], expected_ids: list[str]) -> dict[str, ItemResult]:
    """The results that can be trusted, by id: an expected id answered exactly once. Used to
    keep the good part of a batch whose output stayed invalid after repair."""
    counts = Counter(r.id for r in results)
    return {r.id: r for r in results if r.id in expected_ids and counts[r.id] == 1}


def salvage(raw: str | None, schema: type[BatchResult]) -> list[ItemResult] | None:
    """The results of a reply that broke the batch schema, each checked on its own against the
    schema's result type; None when the reply is not a JSON object with a results list."""
    try:
        data = json.loads(strip_code_fence(raw or ""))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        return None
    adapter = TypeAdapter(schema.model_fields["results"].annotation.__args__[0])
    kept = []
    for entry in data["results"]:
        try:
            kept.append(adapter.validate_python(entry))
        except ValidationError:
            continue
    return kept


def to_classification(r: ItemResult) -> Classification:
    entities = list(dict.fromkeys(e.strip() for e in r.entities if e.strip()))[:MAX_ENTITIES]
    return Classification(
        relevant=r.relevant,
        topics=list(dict.fromkeys(r.topics)) if r.relevant else [],
        newsworthiness=r.newsworthiness,
        summary=" ".join(r.summary.split()),
        entities=entities,
        reason=" ".join(r.reason.split()),
        method="llm",
    )


@dataclass
class BatchPlan:
    """How many items go into one call and how long each may be, so that prompt, reply and
    every repair round fit the model's context window."""

    size: int
    item_tokens: int
    title_tokens: int
    reply_tokens_per_item: int = ITEM_REPLY_TOKENS

    def max_tokens(self, items: int) -> int:
        return 50 + self.reply_tokens_per_item * items


def plan_batches(config: Config, model: str, system_tokens: int) -> BatchPlan:
    window = config.llm.context_window(model)
    # A repair round resends the prompt with the previous reply and the errors: each round adds a reply.
    replies = 1 + config.llm.repair_rounds
    ids = [f"i{n}" for n in range(1, config.classify.batch_size + 1)]
    # json_object mode puts the schema in the prompt: the largest batch's schema is the most it adds.
    schema_tokens = count_tokens(json.dumps(plain_json_schema(batch_schema(ids, config.topic_names))), model)
    room = window - system_tokens - schema_tokens - 200  # the user prompt's header and repair wording
    item_tokens = config.classify.item_tokens
    per_item = item_tokens + TITLE_TOKENS + ITEM_FRAME_TOKENS + ITEM_REPLY_TOKENS * replies
    if per_item > room:  # not even one full item fits: cut the text, never the reply
        item_tokens = max(1, room - TITLE_TOKENS - ITEM_FRAME_TOKENS - ITEM_REPLY_TOKENS * replies)
        per_item = item_tokens + TITLE_TOKENS + ITEM_FRAME_TOKENS + ITEM_REPLY_TOKENS * replies
    size = max(1, min(config.classify.batch_size, room // per_item))
    return BatchPlan(size=size, item_tokens=item_tokens, title_tokens=TITLE_TOKENS)


def _defused(text: str) -> str:
    # The prompt fences items in <item id="..."> blocks (and writes "</" as "<\/");
    # a fake opening tag inside an item must not look like another item.
    return re.sub(r"<(\s*item\b)", r"‹\1", text, flags=re.IGNORECASE)


def _cut(text: str, limit: int, model: str) -> str:
    # Cutting characters first keeps token counting cheap on 100 kB texts; a token is rarely
    # longer than 16 characters, so this at worst leaves a text a little under its budget.
    return truncate_to_tokens(text[: limit * 16], limit, model)


@dataclass
class ModelOutcome:
    results: dict[str, Classification] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)  # cause -> item ids left unclassified
    batches: int = 0
    retried_alone: int = 0
    quarantined: int = 0
    failed_attempts: int = 0  # model attempts that failed for one item (counted in the ledger)
    gave_up: list[str] = field(default_factory=list)  # item ids the model had its last attempt on


class ModelClassifier:
    """Batches items into calls, keeps the good part of every answer, retries the rest alone.

    A model attempt fails for an item when the model was asked about it and gave no usable
    result for it: asked alone and the call failed (invalid after repair, cut off, refused,
    rejected), or asked in a batch whose reply answered other items but not this one. A batch
    reply that is unusable as a whole (not JSON, cut off) is nobody's failure: its items are
    asked alone. A provider that is down, a spent budget or an open breaker is not the item's
    failure either. `on_failure(items, cause)` records one failed attempt for each item and
    returns those that have had their last one (it classifies them offline); they are never
    asked again.
    """

    def __init__(self, config: Config, gateway, prompts: PromptLibrary, on_result=None, stop_requested=lambda: False,
                 on_failure=None):
        self.config = config
        self.gateway = gateway
        self.prompts = prompts
        # Called once per answered batch with [(item, classification), ...], so a batch is saved whole.
        self.on_result = on_result or (lambda results: None)
        self.on_failure = on_failure or (lambda items, cause: [])
        self.stop_requested = stop_requested
        self.model = gateway.model_for("classifier")
        self.topics = [SimpleNamespace(name=t.name, description=t.description, keywords=t.keywords) for t in config.topics]
        system = prompts.render("classifier", newsroom=config.newsroom.name, topics=self.topics, items=[])
        self.plan = plan_batches(config, self.model, count_messages(system.messages[:1], self.model))
        self.outcome = ModelOutcome()
        self._halted: str | None = None  # the breaker opened or the budget ran out: no more calls

    def render(self, batch: list[Item]):
        views = [
            SimpleNamespace(
                id=f"i{n}",
                title=_defused(_cut(" ".join(item.title.split()), self.plan.title_tokens, self.model)),
                source=item.source,
                published=item.published,
                text=_defused(_cut(item.text or item.summary or item.title, self.plan.item_tokens, self.model)),
            )
            for n, item in enumerate(batch, start=1)
        ]
        prompt = self.prompts.render("classifier", newsroom=self.config.newsroom.name, topics=self.topics, items=views)
        return prompt, {view.id: item for view, item in zip(views, batch)}

    async def classify(self, items: list[Item]) -> ModelOutcome:
        # Instructions aimed at a model could sway the verdicts of a whole batch: such items go alone.
        suspicious = [i for i in items if addresses_a_model(i)]
        ordinary = [i for i in items if not addresses_a_model(i)]
        batches = [ordinary[i : i + self.plan.size] for i in range(0, len(ordinary), self.plan.size)]
        batches += [[item] for item in suspicious]
        self.outcome.quarantined += len(suspicious)  # classify may be called again for more items
        gate = asyncio.Semaphore(self.config.llm.concurrency)
        left_over = await self._run_all(batches, gate)
        # Whatever a batch skipped, mangled or lost to an error is asked again, one item per call.
        retry = [[item] for batch, missing in zip(batches, left_over) if len(batch) > 1 for item in missing]
        await self._run_all(retry, gate, retry=True)
        return self.outcome

    async def _run_all(self, batches: list[list[Item]], gate: asyncio.Semaphore, retry: bool = False) -> list[list[Item]]:
        async def guarded(batch: list[Item]) -> list[Item]:
            async with gate:
                return await self._run_batch(batch, retry)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(guarded(batch)) for batch in batches]
        except BaseExceptionGroup as failed:
            # Not a model failure (those are handled per batch): a bug or a blocked request.
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _run_batch(self, batch: list[Item], retry: bool = False) -> list[Item]:
        """Classify one batch, save what came back; return the items to ask again alone."""
        if self._halted is not None or self.stop_requested():
            if self._halted is not None:
                self._fail(self._halted, batch)
            return []  # not retried either: the run stops here
        prompt, by_id = self.render(batch)
        ids = list(by_id)
        schema = batch_schema(ids, self.config.topic_names)
        self.outcome.batches += len(batch) > 1
        self.outcome.retried_alone += retry
        problem = "the model's reply held no usable result for the item"
        try:
            result = await self.gateway.call(
                "classifier", prompt, schema, validators=[batch_validator(ids)],
                stage="classify", max_tokens=self.plan.max_tokens(len(batch)),
            )
            answered = usable_results(result.results, ids)
        except InvalidOutput as exc:
            # Keep the results that were fine; only the others are asked again.
            results = exc.output.results if isinstance(exc.output, BatchResult) else salvage(exc.raw, schema)
            log.warning("classifier batch of %d: output still invalid after repair, kept %d: %s",
                        len(batch), len(usable_results(results or [], ids)), exc)
            if results is None and len(batch) > 1:
                return batch  # nothing in the reply to go by: every item is asked alone
            answered = usable_results(results or [], ids)
            problem = str(exc)
        except (CircuitOpen, BudgetExceeded) as exc:
            self._halted = self._halted or str(exc)  # one reason for every item the stop left: the first
            self._fail(self._halted, batch)
            return []
        except LLMError as exc:
            log.warning("classifier batch of %d failed: %s", len(batch), exc)
            if self.gateway.circuit_open:
                self._halted = f"LLM circuit open after repeated failures (last: {exc}); no more calls this run"
            if self._halted:
                self._fail(self._halted, batch)
                return []
            if len(batch) > 1:
                return batch
            if isinstance(exc, ProviderUnavailable):
                self._fail(str(exc), batch)  # the provider, not the item: no attempt is counted
                return []
            answered, problem = {}, str(exc)
        found = []
        for short_id, r in answered.items():
            item = by_id[short_id]
            classification = to_classification(r)
            if addresses_a_model(item) and classification.newsworthiness > INSTRUCTED_CAP:
                # The system prompt's rule, enforced whatever the model did: an item that tries to
                # instruct its reader's AI never ranks high, even if the model obeyed it.
                classification = classification.model_copy(update={
                    "newsworthiness": INSTRUCTED_CAP,
                    "reason": f"{classification.reason}; contains instructions addressed to an AI, ranked low",
                })
            self.outcome.results[item.id] = classification
            found.append((item, classification))
        if found:
            self.on_result(found)
        missing = [by_id[i] for i in ids if i not in answered]
        if not missing:
            return []
        self.outcome.failed_attempts += len(missing)
        done = {item.id for item in self.on_failure(missing, problem)}
        self.outcome.gave_up.extend(done)
        missing = [item for item in missing if item.id not in done]
        if len(batch) == 1 and missing:
            self._fail(problem, missing)  # already asked alone: it waits for the next run
            return []
        return missing

    def _fail(self, cause: str, items: list[Item]) -> None:
        self.outcome.errors.setdefault(cause, []).extend(i.id for i in items)


# --- the ledger -----------------------------------------------------------------------------


def pending_items(ledger: Ledger, indexed_only: bool = True) -> list[Item]:
    """Fetched items not classified yet, oldest first: those indexed, or with `indexed_only=False` also those
    waiting to be (a classification is written onto the item's chunks, so it is saved only once they exist)."""
    unclassified = [schema.items.c.state == ItemState.fetched.value]
    if indexed_only:
        unclassified.append(schema.items.c.chunk_count.is_not(None))
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items).where(*unclassified).order_by(schema.items.c.published, schema.items.c.id)
        ).all()
    return [row_to_item(r) for r in rows]


def indexed_ids(ledger: Ledger, item_ids: list[str]) -> set[str]:
    if not item_ids:
        return set()
    with ledger.engine.connect() as connection:
        return set(connection.execute(
            select(schema.items.c.id).where(schema.items.c.id.in_(item_ids), schema.items.c.chunk_count.is_not(None))
        ).scalars())


def known_classifications(ledger: Ledger, hashes: list[str], topic_names: list[str]) -> dict[str, Classification]:
    """Classifications already paid for, by content hash (the same text syndicated under another URL).
    One naming a topic the config no longer has is not reused: the beat changed since."""
    if not hashes:
        return {}
    allowed = set(topic_names)
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items.c.content_hash, schema.items.c.classification)
            .where(schema.items.c.content_hash.in_(sorted(set(hashes))), schema.items.c.classification.is_not(None))
        ).all()
    known = {}
    for digest, data in rows:
        classification = Classification.model_validate(data)
        if set(classification.topics) <= allowed:
            known[digest] = classification
    return known


def failed_attempts(ledger: Ledger, item_ids: list[str]) -> dict[str, int]:
    """Model attempts that already failed for each item, from earlier runs."""
    if not item_ids:
        return {}
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items.c.id, schema.items.c.classify_attempts).where(schema.items.c.id.in_(item_ids))
        ).all()
    return {item_id: attempts or 0 for item_id, attempts in rows}


def count_failed_attempt(ledger: Ledger, item_ids: list[str]) -> None:
    with ledger.begin() as connection:
        connection.execute(
            update(schema.items).where(schema.items.c.id.in_(item_ids))
            .values(classify_attempts=schema.items.c.classify_attempts + 1)
        )


def save(ledger: Ledger, store, results: list[tuple[Item, Classification]], reasons: dict[str, str] | None = None) -> None:
    """Store classifications: Chroma metadata first, then the ledger in ONE transaction.

    If Chroma fails, the items stay `fetched` and are classified again next run (from the
    cache). One transaction per answered batch means a kill mid-way never leaves half a
    batch saved, which would make the next run batch differently and miss the cache.
    `reasons` (by item id) are appended to the items' state_reason.
    """
    reasons = reasons or {}
    store.set_classifications((item.id, classification) for item, classification in results)
    with ledger.begin() as connection:
        for item, classification in results:
            state = ItemState.classified if classification.relevant else ItemState.irrelevant
            values = dict(classification=classification.model_dump(mode="json"), state=state.value, updated=utcnow())
            if item.id in reasons:
                earlier = func.coalesce(schema.items.c.state_reason.concat("; "), "")
                values["state_reason"] = earlier.concat(reasons[item.id])
            connection.execute(
                update(schema.items)
                .where(schema.items.c.id == item.id, schema.items.c.state == ItemState.fetched.value)
                .values(**values)
            )


# --- the stage ------------------------------------------------------------------------------


def classify_pending(run, while_waiting: Callable[[list[Item]], None] | None = None,
                     index: Callable[[list[str] | None], tuple[int, list[str]]] | None = None) -> StageReport:
    """Classify every pending item of the run. `while_waiting` is told of the items going to the model just before
    they go (the stage uses it to start work on them while the model answers).

    `index(item_ids)` indexes stored items not in the store yet (those ids; every one when None) and returns the
    chunks written and its errors. Given it, the stage also takes the items fetch left unindexed and indexes them
    while the model works, instead of before: an item whose keywords already tie it to a beat is never
    prefiltered, so it goes to the model at once; the others go once their own vectors are in, since the
    prefilter compares those with the beats. Nothing is saved before the index is done (a classification is
    written onto the item's chunks), and an item that could not be indexed is left for the next run."""
    config, ledger, store, gateway = run.config, run.ledger, run.store, run.gateway
    report = StageReport(stage="classify")
    items = [item for item in pending_items(ledger, indexed_only=index is None) if run.in_scope("classify", item.id)]
    report.items_in = len(items)
    if not items:
        return report

    # Identical texts pending together are decided once, for the first of them.
    twins: dict[str, list[Item]] = {}
    for item in items:
        twins.setdefault(item.content_hash, []).append(item)
    reused = known_classifications(ledger, list(twins), config.topic_names)
    fresh = [group[0] for digest, group in twins.items() if digest not in reused]
    limit = config.llm.max_classify_attempts
    # A group's attempts are its most tried copy's: every copy is counted when the group fails.
    counts = failed_attempts(ledger, [i.id for i in items])
    attempts = {item.id: max(counts.get(twin.id, 0) for twin in twins[item.content_hash]) for item in fresh}

    signals: dict[str, Signals] = {}
    decided: dict[str, Classification] = {}
    saved: set[str] = set()
    # Saving waits for the index (work queued here until it is done). Only the loop's thread saves, so a model
    # answer that comes back early is queued, never waited for: the loop must go on to start the index.
    index_done = index is None
    waiting_for_index: list[Callable[[], None]] = []
    not_indexed: set[str] = set()  # known once the index is done: their classifications wait for the next run

    def once_indexed(work: Callable[[], None]) -> None:
        if index_done:
            work()
        else:
            waiting_for_index.append(work)

    def signals_of(group: list[Item]) -> list[Signals]:
        missing = [item for item in group if item.id not in signals]
        if missing:
            signals.update(zip((i.id for i in missing), topic_signals(missing, config, store)))
        return [signals[item.id] for item in group]

    def keep_all(results: list[tuple[Item, Classification]], reasons: dict[str, str] | None = None) -> None:
        """Save items and their twins the moment their classifications are known, a batch at a time."""
        pairs = [(twin, classification) for item, classification in results for twin in twins[item.content_hash]
                 if twin.id not in not_indexed]
        twin_reasons = {twin.id: reasons[item.id] for item, _ in results if reasons and item.id in reasons
                        for twin in twins[item.content_hash]}
        for twin, classification in pairs:
            decided[twin.id] = classification
        try:
            save(ledger, store, pairs, twin_reasons)
        except Exception as exc:  # noqa: BLE001 - one batch's storage failure must not stop the rest
            report.errors.append(
                f"{len(pairs)} item(s) could not store their classification: {type(exc).__name__}: {exc}"
            )
            return
        saved.update(twin.id for twin, _ in pairs)

    def keep(item: Item, classification: Classification) -> None:
        keep_all([(item, classification)])

    def fall_back(group: list[Item], cause: str) -> None:
        """The model had its last attempt on these items: the offline classifier decides, for good."""
        results, reasons = [], {}
        for item, item_signals in zip(group, signals_of(group)):
            results.append((item, offline_classification(item, item_signals, config, method="offline-fallback")))
            reasons[item.id] = (
                f"classified offline after {attempts[item.id]} failed model attempt(s) "
                f"(llm.max_classify_attempts = {limit}); last: {cause}"
            )[:1000]
            log.warning("item %s: %s", item.id, reasons[item.id])
        keep_all(results, reasons)

    def failed(group: list[Item], cause: str) -> list[Item]:
        """One more failed model attempt for each item (and its copies); those at the limit fall back."""
        count_failed_attempt(ledger, [twin.id for item in group for twin in twins[item.content_hash]])
        for item in group:
            attempts[item.id] += 1
        spent = [item for item in group if attempts[item.id] >= limit]
        if spent:  # the offline classifier goes by the item's stored vectors
            once_indexed(lambda: fall_back(spent, cause))
        return spent

    def run_index(item_ids: list[str] | None) -> None:
        if index is None:
            return
        chunks, errors = index(item_ids)
        report.notes["chunks_indexed"] = report.notes.get("chunks_indexed", 0) + chunks
        report.errors.extend(errors)

    model_available = gateway.available
    classifier = None
    if model_available:
        classifier = ModelClassifier(config, gateway, PromptLibrary(config.prompts_dir),
                                     on_result=lambda results: once_indexed(lambda: keep_all(results)),
                                     stop_requested=lambda: run.stop_requested, on_failure=failed)
    early: list[tuple[Item, Classification]] = []  # decided without the model: saved once the index is done
    exhausted: list[Item] = []

    def to_the_model(group: list[Item]) -> list[Item]:
        """The items of `group` worth a model call; the others are decided here."""
        chosen = []
        for item, item_signals in zip(group, signals_of(group)):
            if run.stop_requested:
                break
            if not model_available:
                early.append((item, offline_classification(item, item_signals, config)))
            elif clearly_off_beat(item_signals, config):
                early.append((item, offline_classification(item, item_signals, config, method="prefilter")))
            elif attempts[item.id] >= limit:
                exhausted.append(item)  # its attempts ran out in an earlier run (or the limit was lowered)
            else:
                chosen.append(item)
        return chosen

    sending: list[asyncio.Future] = []

    async def classify_all() -> None:
        nonlocal index_done

        def send(group: list[Item]) -> None:
            if group:
                sending.append(asyncio.ensure_future(classifier.classify(group)))

        def start_waiting_work(group: list[Item]) -> None:
            if group and while_waiting is not None:
                try:
                    while_waiting([twin for item in group for twin in twins[item.content_hash]])
                except Exception as exc:  # noqa: BLE001 - work done while waiting is only a head start
                    log.warning("before classifying %d item(s): %s: %s", len(group), type(exc).__name__, exc)

        try:
            # Items the keywords tie to a beat are never prefiltered: they go at once, in full batches; a part
            # batch is held back to be filled with the other items, so this costs no extra call. The split is by
            # keywords only, so a run after a kill batches what is left the same way and finds the answers that
            # came in before the kill in the gateway's cache.
            tied: list[Item] = []
            held: list[Item] = []
            if model_available:
                tied = [item for item in fresh if attempts[item.id] < limit
                        and Signals({}, keyword_hits(item, config)).keyword_topics()]
                ordinary = [item for item in tied if not addresses_a_model(item)]
                held = ordinary[len(ordinary) // classifier.plan.size * classifier.plan.size:]
            held_ids, tied_ids = {item.id for item in held}, {item.id for item in tied}
            first = [item for item in tied if item.id not in held_ids]
            send(first)
            untied = [item for item in fresh if item.id not in tied_ids]
            await asyncio.to_thread(run_index, [item.id for item in untied])  # their vectors decide the prefilter
            rest = held + await asyncio.to_thread(to_the_model, untied)
            send(rest)
            # Only now: work begun earlier would have taken the CPU from the index the others waited for.
            start_waiting_work(first + rest)
            await asyncio.to_thread(run_index, None)  # the rest, while the model works
            if index is not None:
                ids = [item.id for item in items]
                not_indexed.update(set(ids) - await asyncio.to_thread(indexed_ids, ledger, ids))
        finally:
            index_done = True
        for digest in reused:
            early.append((twins[digest][0], reused[digest]))
        for item, classification in early:
            keep(item, classification)
        if exhausted:
            fall_back(exhausted, "no attempts left from earlier runs")
        for work in waiting_for_index:
            work()
        await asyncio.gather(*sending)

    run.run_async(classify_all())  # the runner books the calls, tokens and cost
    outcome = classifier.outcome if classifier is not None else ModelOutcome()
    if classifier is not None:
        fresh_by_id = {item.id: item for item in fresh}
        for cause, ids in outcome.errors.items():
            count = sum(len(twins[fresh_by_id[i].content_hash]) for i in set(ids) if i in fresh_by_id)
            report.errors.append(f"{count} item(s) not classified, left for the next run: {cause}")
        if sending:
            report.notes.update(batch_size=classifier.plan.size)

    report.items_out = len(saved)
    methods = [c.method for c in decided.values()]
    report.notes.update(
        mode="model" if model_available else f"offline ({gateway.unavailable_reason})",
        relevant=sum(1 for c in decided.values() if c.relevant),
        irrelevant=sum(1 for c in decided.values() if not c.relevant),
        prefiltered=methods.count("prefilter"),
        reused=sum(len(twins[d]) for d in reused),
        by_model=methods.count("llm"),
        offline=methods.count("offline"),
        fell_back_offline=methods.count("offline-fallback"),
        failed_attempts=outcome.failed_attempts,
        batches=outcome.batches,
        retried_alone=outcome.retried_alone,
        quarantined=outcome.quarantined,
        left_for_next_run=len(items) - len(saved),
    )
    return report
