"""Language control (issue 19), offline and deterministic, on the mixed-language sample (examples/multilingual).

- `detector`: the language detected at ingest against the language each outlet declares for its feed
  (`<language>`, `xml:lang`), per item; and the sentence check the writer and checker use
  (pipeline.text.language.foreign_language, target English) per sentence of four words or more: how many
  English sentences it calls foreign (false alarms) and how many German/Spanish ones it catches.
  Goal: item accuracy >= 0.98.
- `drafts`: fetch -> check offline with every story drafted, newsroom.language = "en". Counts the
  draft sentences (headline, lead, body, insights) the detector calls foreign, the sentences copied
  verbatim from a source in another language (independent of the detector), the checker's
  wrong_language flags, which stories mix languages, and the stories left needs_attention because all
  their sources are in another language. Goal: 0 foreign sentences. Also the publishing metadata
  (issue 19): how many of the drafts ready to publish carry a slug, description and tags valid under
  their template, and how many suggested images are a source page's own. Goal: all.

    python bench/language.py [all|detector|drafts]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIXED = ROOT / "examples" / "multilingual"
FEEDS = sorted((ROOT / "examples" / "feeds").glob("*.xml")) + sorted((MIXED / "feeds").glob("*.xml"))
AS_OF = datetime(2026, 11, 22, 21, 0, tzinfo=timezone.utc)


def labelled_items() -> list[tuple[str, str, str]]:
    """(declared language, title, plain text) of every feed entry; the outlet's declared language is the label."""
    import feedparser

    from agents.fetcher import plain_text
    from pipeline.text.language import primary

    out = []
    for path in FEEDS:
        parsed = feedparser.parse(str(path))
        declared = primary(parsed.feed.get("language") or "en")
        for entry in parsed.entries:
            body = entry.get("content", [{}])[0].get("value", "") or entry.get("summary", "")
            out.append((declared, entry.title, plain_text(body)))
    return out


def detector_figures() -> dict:
    from pipeline.text.language import MIN_SENTENCE_WORDS, _WORD, detect, foreign_language
    from pipeline.text.sentences import split_sentences

    items = labelled_items()
    misses = [(lang, title) for lang, title, text in items if detect(f"{title}\n{text}").language != lang]
    others = sorted({lang for lang, _, _ in items})
    english = foreign = alarms = caught = 0
    wrong: list[str] = []
    for lang, title, text in items:
        for s in [title, *(x.text for x in split_sentences(text))]:
            if len(_WORD.findall(s)) < MIN_SENTENCE_WORDS:
                continue
            found = foreign_language(s, "en", others)
            if lang == "en":
                english += 1
                alarms += found is not None
                if found is not None:
                    wrong.append(f"  false alarm ({found}): {s[:100]}")
            else:
                foreign += 1
                caught += found == lang
                if found != lang:
                    wrong.append(f"  missed ({lang}, got {found}): {s[:100]}")
    return {"items": len(items), "item_right": len(items) - len(misses), "misses": misses,
            "english": english, "alarms": alarms, "foreign": foreign, "caught": caught, "wrong": wrong}


def detector_section(args) -> list[str]:
    f = detector_figures()
    lines = [
        f"detector items    {f['item_right']}/{f['items']} right = {f['item_right'] / f['items']:.3f} (goal >= 0.98)"
        + "".join(f"\n  missed: {lang} {title!r}" for lang, title in f["misses"]),
        f"detector sentences (target en): English called foreign {f['alarms']}/{f['english']}, "
        f"German/Spanish caught {f['caught']}/{f['foreign']} = {f['caught'] / max(1, f['foreign']):.3f}",
    ]
    if args.verbose:
        lines.extend(f["wrong"])
    return lines


def run_mixed_sample(workdir: Path) -> dict:
    """Fetch -> check offline on a scratch copy of the mixed-language sample, every story drafted."""
    from sqlalchemy import select

    from bench.draft_metrics import sentences
    from pipeline.core import schema
    from pipeline.core.clock import fixed_clock
    from pipeline.core.config import load_config
    from pipeline.text.language import foreign_language, is_target
    from pipeline.core.models import Article, ResearchPack
    from pipeline.flow.runner import Run

    workspace = Path(workdir) / "multilingual"
    if workspace.exists():
        shutil.rmtree(workspace)
    # The sample's config reads ../feeds (the English outlets) and ../articles: copy them alongside.
    shutil.copytree(MIXED, workspace, ignore=shutil.ignore_patterns("data", "outbox"))
    shutil.copytree(ROOT / "examples" / "feeds", Path(workdir) / "feeds", dirs_exist_ok=True)
    config = load_config(workspace / "config.toml")
    config.stories.max_per_run = 50   # every story, singles too
    run = Run(config, command="bench-language", clock=fixed_clock(AS_OF))
    run.run_stages(["fetch", "classify", "draft", "check"])
    with run.ledger.engine.connect() as connection:
        drafts = connection.execute(select(schema.drafts.c.story_key, schema.drafts.c.article, schema.drafts.c.research,
                                           schema.drafts.c.factcheck, schema.drafts.c.state, schema.drafts.c.state_reason,
                                           schema.drafts.c.template, schema.drafts.c.meta)).all()
        stories = connection.execute(select(schema.stories.c.key, schema.stories.c.title, schema.stories.c.item_ids)).all()
        languages = dict(connection.execute(select(schema.items.c.id, schema.items.c.language)).all())
    run.finish()
    out = {"drafts": 0, "sentences": 0, "foreign": [], "copied": [], "flags": 0, "all_foreign": [], "mixed_stories": [],
           "needs_attention": 0, "ready": 0, "meta_valid": 0, "meta_problems": [], "images": 0, "images_from_sources": 0}
    from pipeline.text.metadata import source_images, validate_meta
    from pipeline.core.models import PublishMeta
    from pipeline.text.templates import load_templates

    templates = load_templates(config.templates_dir)
    for key, title, item_ids in stories:
        langs = sorted({languages.get(i, "und") for i in item_ids})
        if len(langs) > 1:
            out["mixed_stories"].append((title, langs))
    for key, article, research, factcheck, state, reason, template, meta in drafts:
        pack = ResearchPack.model_validate(research)
        out["drafts"] += 1
        if state != "needs_attention":
            out["ready"] += 1
            parsed = PublishMeta.model_validate(meta) if meta else None
            problems = validate_meta(parsed, templates[template].metadata, pack.sources)
            out["meta_valid"] += not problems
            out["meta_problems"] += [f"{key}: {p}" for p in problems]
            if parsed is not None and parsed.image is not None:
                out["images"] += 1
                out["images_from_sources"] += parsed.image.url in {i.url for i in source_images(pack.sources)}
        out["needs_attention"] += state == "needs_attention"
        if reason and "in another language" in reason:
            out["all_foreign"].append(key)
        others = sorted({s.language for s in pack.sources})
        foreign_texts = [" ".join(s.text.split()) for s in pack.sources if not is_target(s.language, pack.language)]
        for s in sentences(Article.model_validate(article)):
            out["sentences"] += 1
            found = foreign_language(s.text, pack.language, others)
            if found is not None:
                out["foreign"].append((found, s.text))
            plain = " ".join(s.text.split())
            if len(plain.split()) >= 4 and any(plain in t for t in foreign_texts):
                out["copied"].append(plain)
        out["flags"] += ((factcheck or {}).get("totals") or {}).get("wrong_language", 0)
    return out


def drafts_section(args) -> list[str]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="newsdesk-language-") as scratch:
        r = run_mixed_sample(Path(scratch))
    lines = [
        f"drafts multilingual {r['drafts']} drafts, {r['sentences']} sentences: outside English {len(r['foreign'])} "
        f"(goal 0), copied from a non-English source {len(r['copied'])}, checker wrong_language flags {r['flags']} "
        f"({time.perf_counter() - started:.1f}s)",
        f"  stories mixing languages: {len(r['mixed_stories'])} "
        + "; ".join(f"{title[:50]!r} {'/'.join(langs)}" for title, langs in r["mixed_stories"]),
        f"  needs_attention: {r['needs_attention']}, of which every source in another language: {len(r['all_foreign'])}",
        f"metadata: {r['meta_valid']}/{r['ready']} drafts ready to publish with a valid slug, meta description and tags; "
        f"images suggested {r['images']}, from a source page {r['images_from_sources']}/{r['images']} "
        "(the sample's items come from feeds, whose pages declare no og:image)",
    ]
    lines.extend(f"  metadata problem: {p}" for p in r["meta_problems"])
    lines.extend(f"  foreign ({lang}): {text[:100]}" for lang, text in r["foreign"])
    lines.extend(f"  copied: {text[:100]}" for text in r["copied"])
    return lines


SECTIONS = {"detector": detector_section, "drafts": drafts_section}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", nargs="?", default="all", choices=["all", *SECTIONS])
    parser.add_argument("--verbose", "-v", action="store_true", help="list every sentence the check gets wrong")
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    for name in (SECTIONS if args.section == "all" else [args.section]):
        for line in SECTIONS[name](args):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
