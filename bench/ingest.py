"""Ingest throughput: feed parse -> page fetch -> extract -> dedupe -> ledger -> chunk -> embed, all local.

A loopback HTTP server serves RSS feeds whose items link to the real news
pages of the article-extraction set (their summaries are short, so the
fetcher fetches and extracts every page). Nothing leaves the machine.

    python bench/ingest.py --data ../shared/data/article-extraction [--feeds 4] [--embed]

Prints articles/s before embedding, and with --embed the embedding rate in
chunks/s; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.text.chunking import chunk_text  # noqa: E402
from pipeline.core.config import parse_config  # noqa: E402
from pipeline.core.ledger import Ledger, row_to_item  # noqa: E402


def load_pages(data: Path) -> dict[str, bytes]:
    truth = json.loads((data / "ground-truth.json").read_text())
    return {key: gzip.decompress((data / "html" / f"{key}.html.gz").read_bytes()) for key in sorted(truth)}


def feed_xml(base: str, keys: list[str], feed_no: int) -> bytes:
    now = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    items = "".join(
        f"<item><title>Article {escape(key[:12])}</title><link>{base}/page/{key}.html</link>"
        f"<pubDate>{format_datetime(now - timedelta(minutes=i))}</pubDate>"
        f"<description>Short teaser {i}.</description></item>"
        for i, key in enumerate(keys)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Bench feed {feed_no}</title>{items}</channel></rss>'.encode()


def serve(pages: dict[str, bytes], feeds: dict[str, bytes]) -> ThreadingHTTPServer:
    """Serve pages and feeds on loopback; `feeds` is read per request, so it may be filled after start."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0]
            if path.startswith("/page/"):
                body, kind = pages.get(path[len("/page/") : -len(".html")]), "text/html; charset=utf-8"
            else:
                body, kind = feeds.get(path), "application/rss+xml"
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder laid out like shared/data/article-extraction")
    parser.add_argument("--feeds", type=int, default=4)
    parser.add_argument("--embed", action="store_true", help="also embed and index the chunks in Chroma")
    args = parser.parse_args()

    pages = load_pages(args.data)
    keys = list(pages)
    feeds: dict[str, bytes] = {}
    server = serve(pages, feeds)
    base = f"http://127.0.0.1:{server.server_port}"
    for n in range(args.feeds):
        feeds[f"/feed-{n}.xml"] = feed_xml(base, keys[n :: args.feeds], n)

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            {
                "feeds": [{"name": f"bench{n}", "url": f"http://127.0.0.1:{server.server_port}/feed-{n}.xml", "full_text": "auto"} for n in range(args.feeds)],
                "limits": {"allow_private_hosts": True, "fetch_concurrency": 8, "max_items_per_feed": 1000, "min_full_text_chars": 10_000},
            },
            root=Path(tmp),
        )
        ledger = Ledger.from_config(config)
        from agents.fetcher import run_fetch
        from pipeline.flow.runner import Run
        from pipeline.core import schema
        from sqlalchemy import select

        started = time.perf_counter()
        report = run_fetch(config, ledger)
        fetched_s = time.perf_counter() - started
        with ledger.engine.connect() as connection:
            items = [row_to_item(r) for r in connection.execute(select(schema.items))]
        started = time.perf_counter()
        chunks = [c for item in items for c in chunk_text(item.text, config.store.chunk_tokens)]
        chunk_s = time.perf_counter() - started
        n = len(items)
        print(f"articles stored: {n} of {len(keys)} pages ({len(report.errors)} feed error(s), {report.notes.get('pages_failed', 0)} page failure(s))")
        print(f"fetch+extract+dedupe+ledger: {fetched_s:.2f}s; chunking: {chunk_s:.3f}s ({len(chunks)} chunks)")
        rate = n / (fetched_s + chunk_s)
        if args.embed:
            run = Run(config, command="bench", ledger=ledger)
            started = time.perf_counter()
            written = run.store.index_items(items)
            embed_s = time.perf_counter() - started
            print(f"embed+index: {written} chunks in {embed_s:.2f}s = {written / embed_s:.1f} chunks/s")
            run.finish()
        print(f"ingest before embedding: {rate:.1f} articles/s")
    server.shutdown()


if __name__ == "__main__":
    main()
