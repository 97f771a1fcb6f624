"""The ledger's tables, as SQLAlchemy Core metadata.

This module describes the schema as it is now, for queries. Changes reach a
database only through the Alembic migrations in `pipeline/migrations/`, and a
test checks that the migrated database matches this metadata.
"""

from __future__ import annotations

from sqlalchemy import true
from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()


def _ts(name: str, **kw) -> Column:
    return Column(name, DateTime(timezone=True), **kw)


sources = Table(
    "sources",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("url", Text, nullable=False),
    Column("etag", Text),
    Column("last_modified", Text),
    _ts("last_attempt"),
    _ts("last_success"),
    _ts("last_error_at"),
    Column("last_error", Text),
    Column("items_total", Integer, nullable=False, default=0),
    Column("consecutive_failures", Integer, nullable=False, default=0),
)

items = Table(
    "items",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(200), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("canonical_url", Text, nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("text", Text, nullable=False),
    Column("author", Text),
    _ts("published", nullable=False, index=True),
    Column("dated", Boolean, nullable=False, default=True, server_default=true()),
    _ts("fetched", nullable=False),
    Column("content_hash", String(64), nullable=False, index=True),
    Column("og", JSON, nullable=False, default=dict),
    Column("text_origin", String(16), nullable=False, default="feed"),
    # Detected at ingest; "und" for rows stored before detection existed or too short to tell.
    Column("language", String(35), nullable=False, default="und", server_default="und"),
    Column("state", String(32), nullable=False, index=True),
    Column("state_reason", Text),
    Column("classification", JSON),
    # Model attempts that failed for this item; at llm.max_classify_attempts it is classified offline.
    Column("classify_attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("chunk_count", Integer),
    Column("story_key", String(64), index=True),
    _ts("updated", nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("command", String(64), nullable=False),
    _ts("started", nullable=False, index=True),
    _ts("ended"),
    Column("status", String(16), nullable=False, default="running"),
    Column("stages", JSON, nullable=False, default=list),
    Column("error", Text),
)

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), index=True),
    Column("stage", String(32)),
    Column("role", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("prompt_template", String(200)),
    Column("prompt_version", String(64)),
    Column("prompt_hash", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False, index=True),
    Column("prompt", Text),
    Column("response", Text),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("outcome", String(32), nullable=False),
    Column("error", Text),
    Column("cache_hit", Boolean, nullable=False, default=False),
    _ts("created", nullable=False, index=True),
)

llm_cache = Table(
    "llm_cache",
    metadata,
    Column("request_hash", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("response", Text, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    _ts("created", nullable=False),
)

stories = Table(
    "stories",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("title", Text, nullable=False),
    Column("item_ids", JSON, nullable=False),
    Column("sources", JSON, nullable=False),
    Column("topics", JSON, nullable=False),
    Column("score", Float, nullable=False),
    _ts("first_published", nullable=False),
    _ts("last_published", nullable=False),
    Column("dated", Boolean, nullable=False, default=True, server_default=true()),
    Column("state", String(32), nullable=False, index=True),
    Column("late_item_ids", JSON, nullable=False, default=list),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
)

drafts = Table(
    "drafts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("story_key", String(64), nullable=False, unique=True),
    Column("template", String(64), nullable=False),
    Column("writer_model", String(200), nullable=False),
    Column("method", String(16), nullable=False),
    Column("prompt_versions", JSON, nullable=False, default=dict),
    Column("research", JSON),
    Column("article", JSON, nullable=False),
    Column("violations", JSON, nullable=False, default=list),
    Column("factcheck", JSON),
    Column("state", String(32), nullable=False, index=True),
    Column("state_reason", Text),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
    # Slug, meta description, tags, suggested image (pipeline.core.models.PublishMeta).
    Column("meta", JSON),
)

publications = Table(
    "publications",
    metadata,
    Column("draft_id", String(64), primary_key=True),
    Column("target", String(16), nullable=False),
    Column("doc_id", Text),
    Column("url", Text),
    Column("state", String(16), nullable=False),  # creating -> written
    Column("content_hash", String(64)),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
)

approvals = Table(
    "approvals",
    metadata,
    Column("draft_id", String(64), primary_key=True),
    Column("doc_id", Text),
    Column("article", JSON, nullable=False),
    Column("edit_rate", Float, nullable=False),
    Column("writer_model", String(200), nullable=False),
    _ts("approved_at", nullable=False, index=True),
    # What approved it: "chip" (the status chip), "folder" (moved to the approved folder), "prefix" (renamed),
    # "outbox" (local approved/ folder); several joined by "+". NULL for approvals recorded before it was kept.
    Column("approved_by", String(32)),
    # The publishing metadata as the editor left it in the document.
    Column("meta", JSON),
)

# What editors wrote in a published document (a reply to a fact-check comment, or their own comment),
# one row per post, read back by sync. Recurring ones become house rules (pipeline/services/house_rules.py).
corrections = Table(
    "corrections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("draft_id", String(64), nullable=False, index=True),
    Column("doc_id", Text, nullable=False),
    Column("comment_id", String(200), nullable=False),
    Column("post_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),   # reply | comment
    Column("author", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("quote", Text, nullable=False, default=""),
    Column("claim_key", String(16)),
    Column("resolved", Boolean, nullable=False, default=False),
    _ts("created", nullable=False, index=True),
)
# A post is recorded once, however often sync reads the document.
Index("ux_corrections_post", corrections.c.doc_id, corrections.c.comment_id, corrections.c.post_id, unique=True)

finetune_jobs = Table(
    "finetune_jobs",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("dataset_id", String(64), nullable=False),
    Column("base_model", String(200), nullable=False),
    Column("training_file", String(200)),
    Column("validation_file", String(200)),
    Column("status", String(32), nullable=False),
    Column("fine_tuned_model", String(200)),
    Column("error", Text),
    Column("eval", JSON),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=False),
    _ts("updated", nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    _ts("acquired", nullable=False),
    _ts("heartbeat", nullable=False),
)

# Runs queued for workers (cluster.enabled): the stages as phases, run one after another; each phase's
# units are claims below. `phase` is the index of the phase whose units are being worked (-1: not started).
run_queue = Table(
    "run_queue",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("phases", JSON, nullable=False),
    Column("phase", Integer, nullable=False, default=-1),
    Column("state", String(16), nullable=False, index=True),  # queued -> running -> done
    _ts("as_of"),  # the run's editorial "now", the same for every worker
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
)

# One unit of work (a feed, a classify batch, a story, a draft) of one run. A worker claims it for a lease;
# a claim whose lease ran out (its worker died) is claimed again. See pipeline/core/claims.py.
claims = Table(
    "claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("unit", String(200), nullable=False),
    Column("payload", JSON, nullable=False, default=dict),
    Column("state", String(16), nullable=False),  # pending -> claimed -> done | failed
    Column("owner", String(200)),
    _ts("leased_until"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("report", JSON),
    Column("error", Text),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
    UniqueConstraint("run_id", "stage", "unit", name="uq_claims_unit"),
)

Index("ix_claims_state_stage", claims.c.state, claims.c.stage)

# A counting semaphore shared by every worker on the ledger (pipeline/core/slots.py): `name` "llm" has
# llm.concurrency rows; a worker holds a row for each model call in flight, for a renewed lease.
slots = Table(
    "slots",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("owner", String(200)),
    _ts("leased_until"),
)
Index("ix_llm_calls_role_created", llm_calls.c.role, llm_calls.c.created)
