"""Story selection: group relevant items reporting the same event, rank the stories, pick the top K.

An item joins a story when it is close in embedding space, shares a named
entity, was published within the story's time window, and does not report a
different event (see `event_conflict`): two hacks at two exchanges on the same
day read alike but name different exchanges and different sums, and stay two
stories. Items are assigned greedily in publication order to the best matching
story, comparing against every member (average linkage), which keeps unrelated
items from chaining together through one ambiguous article.

A story's key derives from its founding item, so it is stable across runs. An
item that joins a story already drafted is recorded for the editor; the story
is not silently redrafted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable

import numpy as np

from sqlalchemy import insert, select, update

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, as_utc, row_to_item, stable_hash, utcnow
from pipeline.core.models import Classification, Item, ItemState, Story, StoryState
from pipeline.text.entities import names
from pipeline.text.sentences import own_summary

Embed = Callable[[list[str]], np.ndarray]

_NAME = re.compile(r"\b(?:[A-Z][a-zA-Z0-9&.\-]+(?:\s+[A-Z][a-zA-Z0-9&.\-]+)*|[A-Z]{2,}[0-9]*)\b")
_STOP_NAMES = {"The", "A", "An", "In", "On", "At", "For", "And", "But", "With", "After", "Before", "As", "It", "This", "That", "Why", "How", "What", "New"}


@dataclass
class Candidate:
    item: Item
    classification: Classification
    vector: np.ndarray | None = None
    entities: set[str] = field(default_factory=set)
    event: EventSignature | None = None  # computed on first use from the item
    name_words: set[str] | None = None   # words of the names in its title and text, on first use (cross-language matching)


@dataclass
class Group:
    key: str
    members: list[Candidate]
    state: StoryState = StoryState.new
    existing: bool = False
    late: list[str] = field(default_factory=list)
    title: str = ""

    @property
    def published(self) -> list[datetime]:
        return [m.item.published for m in self.members]


def story_key(founding_item_id: str) -> str:
    return stable_hash("story", founding_item_id)[:16]


def entity_set(classification: Classification, title: str) -> set[str]:
    """Lower-cased entity names, plus each multi-word name's last word (surname or brand)."""
    names = set(classification.entities) | {m for m in _NAME.findall(title) if m not in _STOP_NAMES}
    out: set[str] = set()
    for name in names:
        name = name.strip().lower()
        if len(name) < 2:
            continue
        out.add(name)
        words = name.split()
        if len(words) > 1 and len(words[-1]) > 2:
            out.add(words[-1])
    return out


def item_text_for_matching(item: Item) -> str:
    """What an item's clustering vector embeds: its own words only (headline, own summary, lead), never the
    classifier's. Known before the model answers, so it is embedded while the classifier waits, and the same
    whichever model, or none, classified the item."""
    return f"{item.title}. {own_summary(item)}. {item.text[:400]}"


def similarity(a: Candidate, b: Candidate) -> float:
    if a.vector is None or b.vector is None:
        return 0.0
    return float(np.dot(a.vector, b.vector))


# --- the event an item reports: who (headline actors) and how much (headline sums) ---------------------

# A sum of money: "$48.2 million", "$312m", "€1.5bn", "$0.913", "$3,390"; and prices in cents ("91 cents").
_MONEY = re.compile(
    r"(?<![\w.])(?:US|A|C)?[$€£]\s?(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s*(trillion|billion|million|thousand|tn|bn|m|k)\b)?",
    re.IGNORECASE,
)
_CENTS = re.compile(r"(?<![\w.$€£])(\d+(?:\.\d+)?)\s*cents?\b", re.IGNORECASE)
_SCALE = {"thousand": 1e3, "k": 1e3, "million": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9, "trillion": 1e12, "tn": 1e12}
# Two reports of one sum may round it ("nearly $24 million" for $23.6 million).
FIGURE_TOLERANCE = 0.05
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z0-9&\-]*[A-Za-z0-9]|\b[A-Z]{2,}[0-9]*\b")
# Capitalised words that are not actors in a headline.
_NOT_ACTORS = frozenset(
    """
    the a an in on at but and as for if when while after before this that these those it its he she they we i you
    his her their our there then also however what who how why where new analysis explained update live exclusive
    monday tuesday wednesday thursday friday saturday sunday today yesterday
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec utc gmt
    ceo cfo cto chief executive chair president judge commissioner analyst founder
    inc ltd co corp llc plc
    """.split()
)
# Words that make a name an organisation's rather than tell organisations apart ("Brixton Markets",
# "Orrin Capital", "Federal Digital Markets Commission"): shared by unrelated names.
_DESIGNATORS = frozenset(
    """
    markets market capital labs lab digital trust protocol finance financial ventures venture funds fund group
    holdings exchange exchanges network foundation partners securities bank asset assets management investments
    investment analytics security research technologies technology systems global international commission
    authority agency court series etf etfs token tokens coin dao
    """.split()
)


def money_figures(text: str) -> tuple[float, ...]:
    """Every sum of money in `text`, in units (cents as fractions of a unit)."""
    out = []
    for m in _MONEY.finditer(text):
        value = float(m.group(1).replace(",", ""))
        out.append(value * _SCALE.get((m.group(2) or "").lower(), 1.0))
    out.extend(float(m.group(1)) / 100 for m in _CENTS.finditer(text))
    return tuple(out)


def _same_figure(a: float, b: float) -> bool:
    return abs(a - b) <= FIGURE_TOLERANCE * max(abs(a), abs(b))


@dataclass(frozen=True)
class EventSignature:
    """What tells one event from its neighbours on the same beat.

    `actors`: capitalised words of the headline that the item's own body also
    capitalises (the company, token, person or place the item is about). A word
    the body also uses in lower case ("Exchange", "Hackers") is not a name, nor
    is an organisation designator ("Markets", "Capital") or a month or title.
    `main`: the actor(s) the item mentions most: what it is about, rather than
    who comments on it.
    `figures`: the sums of money in the headline (in the lead sentence when the
    headline has none): the event's key figures.
    """

    actors: frozenset[str]
    main: frozenset[str]
    figures: tuple[float, ...]
    all_figures: tuple[float, ...]
    text: str  # title, summary and body, lower case, for counting mentions
    lead: str  # title and first sentence, lower case

    def mentions(self, name: str) -> int:
        return len(re.findall(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", self.text))

    def covers(self, name: str) -> bool:
        """The item is about `name` too: it names it in its headline or lead, or more than in passing."""
        return bool(re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", self.lead)) or self.mentions(name) >= 2

    def has_figure(self, value: float) -> bool:
        return any(_same_figure(value, f) for f in self.all_figures)


def _first_sentence(text: str) -> str:
    match = re.search(r"(?<![A-Z][a-z])(?<![A-Z])[.!?][\"”’']?\s+(?=[A-Z\"“‘'])", text[:600])
    return text[: match.end()] if match else text[:300]


def event_signature(item: Item) -> EventSignature:
    body = item.text or item.summary or ""
    lower_words = set(re.findall(r"(?<![A-Za-z0-9\-])[a-z][a-z0-9\-]*", body))
    body_names = {m.lower() for m in _CAPITALISED.findall(body)}
    actors = set()
    for word in _CAPITALISED.findall(item.title):
        word = re.sub(r"['’]s$", "", word).lower()
        if len(word) > 2 and not word.isdigit() and word not in _NOT_ACTORS | _DESIGNATORS and word in body_names - lower_words:
            actors.add(word)
    lead_sentence = _first_sentence(body.strip())
    text = f"{item.title}\n{item.summary}\n{body}".lower()
    counts = {a: len(re.findall(rf"(?<![a-z0-9]){re.escape(a)}(?![a-z0-9])", text)) for a in actors}
    top = max(counts.values(), default=0)
    return EventSignature(
        actors=frozenset(actors),
        main=frozenset(a for a, n in counts.items() if n == top),
        figures=money_figures(item.title) or money_figures(lead_sentence),
        all_figures=money_figures(f"{item.title}\n{item.summary}\n{body}"),
        text=text,
        lead=f"{item.title}\n{lead_sentence}".lower(),
    )


def _signature(candidate: Candidate) -> EventSignature:
    if candidate.event is None:
        candidate.event = event_signature(candidate.item)
    return candidate.event


def event_conflict(a: Candidate, b: Candidate) -> bool:
    """Whether two items (already alike in wording) report different events.

    Two items never conflict when either one is also about what the other is
    mostly about (names it in its headline or lead, or more than once). Beyond
    that, they conflict when both name what they are about (two exchanges, two
    issuers, two defendants), or when each one's key sums are absent from the
    other (an unnamed "Singapore exchange" losing $24 million is not a $7.9
    million theft at another exchange). A passing mention ("the second breach
    of the day, after Pellucid") does not make an item about the other event.
    """
    ea, eb = _signature(a), _signature(b)
    if any(eb.covers(n) for n in ea.main) or any(ea.covers(n) for n in eb.main):
        return False
    if ea.main and eb.main:
        return True
    return (
        bool(ea.figures) and bool(eb.figures)
        and not any(eb.has_figure(x) for x in ea.figures)
        and not any(ea.has_figure(y) for y in eb.figures)
    )


def _joins(candidate: Candidate, group: Group, config: Config) -> float | None:
    """The average similarity if the candidate may join the group, else None."""
    window = timedelta(hours=config.stories.window_hours)
    if any(abs(candidate.item.published - p) > window for p in group.published):
        return None
    sims = [similarity(candidate, m) for m in group.members]
    average = sum(sims) / len(sims)
    if average < config.stories.similarity_threshold and not _same_event_across_languages(candidate, group, average):
        return None
    shared = max(len(candidate.entities & m.entities) for m in group.members)
    # Very close wording needs no entity evidence; looser matches must share a name.
    if shared < config.stories.entity_overlap_min and average < min(0.9, config.stories.similarity_threshold + 0.2):
        return None
    # A neighbouring event, however alike the wording: most of the story's items report something else.
    conflicts = sum(event_conflict(candidate, m) for m in group.members)
    if 2 * conflicts > len(group.members):
        return None
    return average


# Two reports of one event in different languages: the embedding model reads English, so their wording scores
# far lower than two English reports would (Korvex in German vs English: 0.44-0.60, the threshold 0.62); the
# names they share (people, companies, products) do not change across languages.
CROSS_LANGUAGE_MIN_SIMILARITY = 0.4
CROSS_LANGUAGE_SHARED_NAMES = 4


def _name_words(candidate: Candidate) -> set[str]:
    if candidate.name_words is None:
        candidate.name_words = {w for n in names(f"{candidate.item.title}. {candidate.item.text}") for w in n.split() if len(w) >= 4}
    return candidate.name_words


def _same_event_across_languages(candidate: Candidate, group: Group, average: float) -> bool:
    """A candidate in another language than a member, close enough in wording and sharing enough names with it."""
    if average < CROSS_LANGUAGE_MIN_SIMILARITY or candidate.item.language == "und":
        return False
    return any(
        m.item.language not in ("und", candidate.item.language)
        and len(_name_words(candidate) & _name_words(m)) >= CROSS_LANGUAGE_SHARED_NAMES
        for m in group.members
    )


def cluster(candidates: list[Candidate], existing: list[Group], config: Config) -> list[Group]:
    """Assign candidates (in publication order) to existing or new groups."""
    groups = list(existing)
    for candidate in sorted(candidates, key=lambda c: (c.item.published, c.item.id)):
        best, best_score = None, -1.0
        for group in groups:
            score = _joins(candidate, group, config)
            if score is not None and score > best_score:
                best, best_score = group, score
        if best is None:
            groups.append(Group(key=story_key(candidate.item.id), members=[candidate], title=candidate.item.title))
            continue
        best.members.append(candidate)
        if best.existing and best.state != StoryState.new:
            best.late.append(candidate.item.id)
    return groups


def score_group(group: Group, config: Config, now: datetime | None = None) -> float:
    """Newsworthiness, recency, independent sources and topic weight, each in [0, 1], weighted."""
    now = now or utcnow()
    newsworthiness = max(m.classification.newsworthiness for m in group.members)
    dated = [m.item.published for m in group.members if m.item.dated]
    # An undated item is as old as it could be: its fetch time says nothing about the news.
    recency = math.exp(-max(0.0, (now - max(dated)).total_seconds() / 3600) / 24) if dated else 0.0
    outlets = len({m.item.source for m in group.members})
    breadth = min(1.0, math.log1p(outlets - 1) / math.log1p(3))  # 0 for one outlet, 1 from four
    weights = {t.name: t.weight for t in config.topics}
    topics = {t for m in group.members for t in m.classification.topics}
    topic_weight = max((weights.get(t, 1.0) for t in topics), default=1.0) / max([*weights.values(), 1.0])
    return round(0.35 * newsworthiness + 0.2 * recency + 0.35 * breadth + 0.1 * topic_weight, 4)


def to_story(group: Group, config: Config, now: datetime | None = None) -> Story:
    members = sorted(group.members, key=lambda m: (m.item.published, m.item.id))
    topics = sorted({t for m in members for t in m.classification.topics})
    return Story(
        key=group.key,
        title=group.title or members[0].item.title,
        item_ids=[m.item.id for m in members],
        sources=sorted({m.item.source for m in members}),
        topics=topics,
        score=score_group(group, config, now),
        first_published=members[0].item.published,
        last_published=members[-1].item.published,
        dated=any(m.item.dated for m in members),
        state=group.state,
    )


def embed_candidates(candidates: Iterable[Candidate], embed: Embed) -> None:
    pending = [c for c in candidates if c.vector is None]
    if not pending:
        return
    vectors = np.asarray(embed([item_text_for_matching(c.item) for c in pending]), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1, norms)
    for candidate, vector in zip(pending, vectors):
        candidate.vector = vector


def select_top(stories: list[Story], k: int, min_score: float = 0.0) -> list[Story]:
    waiting = [s for s in stories if s.state == StoryState.new and s.score >= min_score]
    # Undated stories come after every dated one, whatever their score.
    return sorted(waiting, key=lambda s: (not s.dated, -s.score, s.key))[:k]


# --- ledger side ---------------------------------------------------------------


def _candidate(row) -> Candidate:
    item = row_to_item(row)
    classification = Classification.model_validate(row.classification)
    return Candidate(item=item, classification=classification, entities=entity_set(classification, item.title))


def load_story(ledger: Ledger, key: str) -> Story | None:
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.stories).where(schema.stories.c.key == key)).first()
    return None if row is None else story_from_row(row)


def story_from_row(row) -> Story:
    data = dict(row._mapping)
    data["first_published"], data["last_published"] = as_utc(data["first_published"]), as_utc(data["last_published"])
    return Story.model_validate({k: v for k, v in data.items() if k in Story.model_fields})


def assign_stories(config: Config, ledger: Ledger, embed: Embed, now: datetime | None = None) -> tuple[list[Story], int]:
    """Cluster newly classified relevant items into stories and persist the result.

    Returns every story touched this run and the number of items that joined a
    story already drafted (recorded for the editor, not redrafted).
    """
    now = now or utcnow()
    window_start = now - timedelta(hours=config.stories.window_hours * 2)
    with ledger.engine.connect() as connection:
        fresh = [_candidate(r) for r in connection.execute(select(schema.items).where(schema.items.c.state == ItemState.classified.value))]
        story_rows = connection.execute(select(schema.stories).where(schema.stories.c.last_published >= window_start)).all()
        member_ids = [i for row in story_rows for i in row.item_ids]
        members = {
            r.id: _candidate(r)
            for r in connection.execute(select(schema.items).where(schema.items.c.id.in_(member_ids)))
        } if member_ids else {}
    if not fresh:
        return [], 0
    existing = [
        Group(
            key=row.key,
            members=[members[i] for i in row.item_ids if i in members],
            state=StoryState(row.state),
            existing=True,
            title=row.title,
            late=list(row.late_item_ids or []),
        )
        for row in story_rows
    ]
    existing = [g for g in existing if g.members]
    embed_candidates([*fresh, *(m for g in existing for m in g.members)], embed)
    fresh_ids = {c.item.id for c in fresh}
    touched = [g for g in cluster(fresh, existing, config) if any(m.item.id in fresh_ids for m in g.members)]
    late_count = 0
    stories = []
    with ledger.begin() as connection:
        for group in touched:
            story = to_story(group, config, now)
            stories.append(story)
            values = story.model_dump(mode="python", exclude={"key"}) | {"late_item_ids": group.late, "updated": now}
            if group.existing:
                late_count += sum(1 for i in group.late if i in fresh_ids)
                connection.execute(update(schema.stories).where(schema.stories.c.key == story.key).values(**values))
            else:
                connection.execute(insert(schema.stories).values(key=story.key, created=now, **values))
            connection.execute(
                update(schema.items)
                .where(schema.items.c.id.in_([m.item.id for m in group.members if m.item.id in fresh_ids]))
                .values(state=ItemState.clustered.value, story_key=story.key, updated=now)
            )
    return stories, late_count


def waiting_stories(ledger: Ledger) -> list[Story]:
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.stories).where(schema.stories.c.state == StoryState.new.value)).all()
    return [story_from_row(r) for r in rows]
