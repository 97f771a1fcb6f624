"""Typed records that flow between stages: fetch -> classify -> select -> research -> write -> check -> publish.

Stages exchange these models, never ad-hoc dicts, and the ledger stores them as
JSON where a row needs a structured payload.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ItemState(StrEnum):
    fetched = "fetched"
    classified = "classified"      # relevant, waiting to be clustered
    irrelevant = "irrelevant"      # classified, off-beat: never drafted
    clustered = "clustered"        # belongs to a story
    failed = "failed"


class StoryState(StrEnum):
    new = "new"                    # selected, not drafted yet
    drafted = "drafted"
    failed = "failed"


class DraftState(StrEnum):
    drafted = "drafted"            # written and template-valid, not yet fact-checked
    needs_attention = "needs_attention"  # still invalid after repair: never passed off as valid
    checked = "checked"            # fact-checked: ready to publish
    published = "published"
    approved = "approved"
    spiked = "spiked"              # an editor set the document's status chip to Spiked: never published again
    failed = "failed"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- fetch -----------------------------------------------------------------


class FeedEntry(Record):
    """One entry as parsed from a feed, before dedupe and full-text extraction."""

    source: str
    url: str
    canonical_url: str
    title: str
    summary: str = ""
    content: str = ""              # content:encoded / atom content, as plain text
    author: str | None = None
    published: datetime | None = None   # None: the feed gave no date


class Item(Record):
    id: str                        # stable: derived from the canonical URL
    source: str
    url: str
    canonical_url: str
    title: str
    text: str
    summary: str = ""
    author: str | None = None
    published: datetime
    # False when neither the feed nor the page gave a date: `published` then holds the
    # fetch time for windows, and ranking treats the item as the oldest, never as news of "now".
    dated: bool = True
    fetched: datetime = Field(default_factory=utcnow)
    content_hash: str
    og: dict[str, str] = {}
    text_origin: Literal["feed", "page", "summary"] = "feed"
    # Detected at ingest (ISO 639 code, "und" when the text is too short or unclear): drafts are
    # written in newsroom.language whatever this says, so the writer and checker need to know it.
    language: str = "und"
    state: ItemState = ItemState.fetched


# --- classify --------------------------------------------------------------


class Classification(Record):
    relevant: bool
    topics: list[str]
    newsworthiness: float = Field(ge=0, le=1)
    summary: str
    entities: list[str]
    reason: str
    method: Literal["llm", "prefilter", "offline", "offline-fallback"] = "llm"


# --- select ----------------------------------------------------------------


class Story(Record):
    key: str                       # stable across runs: derived from the founding items
    title: str
    item_ids: list[str]
    sources: list[str]             # distinct outlets
    topics: list[str]
    score: float
    first_published: datetime
    last_published: datetime
    dated: bool = True             # False when no member item carries a date: ranked after dated stories
    state: StoryState = StoryState.new


# --- research --------------------------------------------------------------


class SourceDoc(Record):
    """A numbered source in a prompt: the story's own items first, then background."""

    n: int = Field(ge=1)
    item_id: str
    title: str
    outlet: str
    published: datetime
    url: str
    text: str                      # the packed (possibly cut) text the writer sees
    role: Literal["story", "background"] = "story"
    language: str = "und"          # detected at ingest (items.language); "und" for packs stored before that
    og: dict[str, str] = {}        # the page's share image and site name (og:image, og:site_name), when it had them


class ResearchPack(Record):
    story_key: str
    sources: list[SourceDoc]
    budget_tokens: int
    used_tokens: int
    dropped: list[str] = []        # item ids or chunk ids cut to fit the budget
    # newsroom.language when the pack was made: the language the draft is written and checked in.
    language: str = "en"


# --- write -----------------------------------------------------------------


class Paragraph(Record):
    text: str
    citations: list[int] = Field(description="source numbers [n] this paragraph relies on")


class Insight(Record):
    text: str
    citations: list[int]


class SourceRef(Record):
    n: int
    title: str
    outlet: str
    url: str
    published: datetime | None = None


class Translation(Record):
    """A quotation the writer translated into the newsroom's language: marked "(translated)" where it stands, with the
    source's own words kept, verbatim, for the fact-check."""

    text: str = Field(description="the quotation as the article gives it, in the article's language, without quotation marks")
    original: str = Field(description="the source's own words, copied exactly, without quotation marks")
    source_n: int = Field(description="the number n of the source it comes from")
    language: str = Field(description="the source's language, as its About line gives it (e.g. de)")


class Article(Record):
    headline: str
    lead: str
    body: list[Paragraph]
    insights: list[Insight]
    sources: list[SourceRef]
    translations: list[Translation] = []   # quotations translated from sources in other languages (model path only)


class ImageSuggestion(Record):
    """An image the editor may use: a story source page's own share image, credited; never inserted into the document."""

    url: str
    credit: str
    source_n: int | None = None    # the source whose page declares it (None when an editor typed another)


class PublishMeta(Record):
    """What the CMS needs besides the article (pipeline/metadata.py): made from the draft, editable in the document."""

    slug: str
    description: str               # the meta description, from the lead
    tags: list[str]                # the story's topics, then its actors
    image: ImageSuggestion | None = None


class Draft(Record):
    id: str
    story_key: str
    template: str
    writer_model: str              # "extractive" for the offline writer
    method: Literal["llm", "extractive"]
    prompt_versions: dict[str, str] = {}
    article: Article
    violations: list[str] = []
    state: DraftState = DraftState.drafted
    created: datetime = Field(default_factory=utcnow)
    meta: PublishMeta | None = None   # None for drafts stored before metadata existed


# --- check -----------------------------------------------------------------

# What the sources say about a claim: the only labels the judge model and the support rules return
# (the judge's strict JSON schema enumerates exactly these).
SupportVerdict = Literal["supported", "contradicted", "unverifiable"]
# What the story check says about a supported claim. Rules only, never asked of the judge: they depend on
# which sources are the story's own (the pack's roles) and on the draft's paragraphs, neither of which the
# judge sees, and a model that could answer "off_story" for a claim it finds in a source would trade a
# deterministic check for a guess.
#   off_story             its best support is a background source (or a story source's aside about another
#                         event), it names none of the story's actors, and it is not framed as background
#   unresolved_reference  it opens a paragraph (or the lead) with "It", "The penalty", "she said", ... that
#                         no earlier sentence of the draft resolves
StoryVerdict = Literal["off_story", "unresolved_reference"]
# A sentence that is not in the newsroom's language (ResearchPack.language): rules only, like the story labels.
#   wrong_language        the detector finds it clearly written in another language ("Die Börse will ...")
Verdict = Literal["supported", "contradicted", "unverifiable", "off_story", "unresolved_reference", "wrong_language"]
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "unverifiable", "off_story", "unresolved_reference", "wrong_language")
RuleType = Literal[
    "number", "date", "quote", "entity", "negation", "citation", "url", "confirmation",
    "story",       # off_story: where the support came from and why that is another event
    "reference",   # unresolved_reference: the opening reference and what (if anything) it would point to
    "language",    # wrong_language: the language the sentence is in and the one the draft must be in
]


class RuleFailure(Record):
    type: RuleType
    detail: str
    value: str = ""


class Claim(Record):
    id: str
    text: str
    start: int                     # span in the draft's rendered text
    end: int
    section: Literal["headline", "lead", "body", "insights"] = "body"


class ClaimVerdict(Record):
    claim: Claim
    verdict: Verdict
    source_n: int | None = None
    source_url: str | None = None
    evidence: str = ""
    failures: list[RuleFailure] = []
    method: Literal["llm", "rules"] = "rules"


class Revision(Record):
    round: int                      # 0: the judge's own corrections, made with the check call; 1, 2, ...: reviser calls
    spans_revised: int
    chars_changed: int
    change_ratio: float
    by: Literal["judge", "reviser"] = "reviser"


class FactCheckReport(Record):
    draft_id: str
    verdicts: list[ClaimVerdict]
    revisions: list[Revision] = []
    method: Literal["llm", "rules"] = "rules"   # "llm" only when the judge decided every statement it was to decide
    fallback: str | None = None     # why the rules decided in the judge's place (call cap, unusable replies, outage)
    totals: dict[str, int] = {}     # "claims" and a count per label of VERDICTS (reports stored before the story
                                    # check carry only the first three labels)

    def flagged(self) -> list[ClaimVerdict]:
        """Every claim that is not plainly supported: contradicted, unverifiable, off_story, unresolved_reference,
        wrong_language."""
        return [v for v in self.verdicts if v.verdict != "supported"]


# --- runs ------------------------------------------------------------------


class StageReport(Record):
    stage: str
    items_in: int = 0
    items_out: int = 0
    errors: list[str] = []
    duration_s: float = 0.0
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    notes: dict[str, float | int | str] = {}

    @property
    def ok(self) -> bool:
        return not self.errors
