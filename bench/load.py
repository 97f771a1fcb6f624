"""Fetch-stage load test (issue 9): 500 feeds x 50 items from a local server, some of them hostile or broken.

A loopback HTTP server, in a process of its own, serves every feed. Most are
ordinary; a share are slow (answer within the timeout), hung (never answer),
trickling (a few bytes at a time, forever), failing (500, 404, connection
reset, not a feed) or huge (an endless body, a gzip bomb). The fetch agent
fetches them all once, with `limits.allow_private_hosts` on so it may reach
127.0.0.1, into a fresh SQLite ledger.

    python bench/load.py [--feeds 500] [--items 50] [--concurrency 32] [--deadline 300]

Goals checked (exit status 1 if one is missed):
  * the stage finishes within limits.fetch_deadline_s;
  * peak RSS of the fetching process stays under 1 GiB;
  * no feed starves: every healthy feed stores all its items despite the hung ones;
  * every failure is attributed to its own source, with the expected reason.
The last line is the headline: items/s and peak memory. Indexing into Chroma
(embeddings) is not part of this: bench/ingest.py --embed measures that.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import resource
import logging
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Per 100 feeds: what each kind is, and the words its error must carry (None: it must succeed).
MIX = [
    ("ok", 78, None),
    ("slow", 6, None),
    ("hung", 2, "timed out"),
    ("trickle", 2, "timed out after"),
    ("error500", 3, "HTTP 500"),
    ("missing404", 2, "HTTP 404"),
    ("reset", 1, "connection"),
    ("notafeed", 2, "not a valid RSS/Atom feed"),
    ("huge", 2, "response too large"),
    ("gzipbomb", 2, "once decompressed"),
]
SLOW_S, TIMEOUT_S = 1.5, 4.0
WORDS = ("bitcoin ether exchange traders market liquidity stablecoin regulator token protocol validator "
         "custody inflows outflows futures options treasury issuer audit wallet bridge").split()


def kind_of(feed: int) -> str:
    slot = feed % 100
    for kind, share, _ in MIX:
        if slot < share:
            return kind
        slot -= share
    raise AssertionError("MIX must add up to 100")


def feed_xml(feed: int, items: int) -> bytes:
    start = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    parts = []
    for i in range(items):
        words = " ".join(WORDS[(feed * 7 + i * 3 + k) % len(WORDS)] for k in range(160))
        parts.append(
            f"<item><title>Feed {feed} story {i}: {WORDS[(feed + i) % len(WORDS)]} moves</title>"
            f"<link>https://outlet{feed}.example/news/{i}</link>"
            f"<pubDate>{format_datetime(start - timedelta(minutes=i))}</pubDate>"
            f"<description>Outlet {feed} reports item {i}. {words}.</description></item>"
        )
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Outlet {feed}</title>'
            f"<link>https://outlet{feed}.example/</link><description>bench</description>{''.join(parts)}</channel></rss>").encode()


def serve(port_out, items: int) -> None:
    """The server process: feeds built on first request, then cached."""
    cache: dict[int, bytes] = {}
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                feed = int(self.path.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                return self._send(404, b"")
            kind = kind_of(feed)
            try:
                if kind == "hung":
                    time.sleep(3600)
                elif kind == "reset":
                    # Linger 0: the close sends a TCP reset instead of a clean end.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.connection.close()
                elif kind == "error500":
                    self._send(500, b"upstream down")
                elif kind == "missing404":
                    self._send(404, b"no such feed")
                elif kind == "notafeed":
                    self._send(200, b"<html><body><h1>Welcome!</h1><p>This is not a feed.</p></body></html>", "text/html")
                elif kind == "huge":
                    self._stream(b"<rss>" + b"x" * 65_531, pause=0.0)
                elif kind == "trickle":
                    self._stream(b"<rss>" + b" " * 95, pause=0.05)
                elif kind == "gzipbomb":
                    self._send(200, bomb, "application/rss+xml", {"Content-Encoding": "gzip"})
                else:
                    if kind == "slow":
                        time.sleep(SLOW_S)
                    if feed not in cache:
                        cache[feed] = feed_xml(feed, items)
                    self._send(200, cache[feed], "application/rss+xml; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

        def _send(self, status: int, body: bytes, kind: str = "text/plain", headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, chunk: bytes, pause: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if pause:
                    self.wfile.flush()
                    time.sleep(pause)

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass   # clients hang up on hung and endless feeds by design

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    port_out.put(server.server_address[1])
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32, help="limits.fetch_concurrency")
    parser.add_argument("--deadline", type=float, default=300.0, help="limits.fetch_deadline_s")
    args = parser.parse_args()

    ports = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(ports, args.items), daemon=True)
    server.start()
    port = ports.get(timeout=30)

    from agents.fetcher import run_fetch
    from pipeline.core.config import parse_config
    from pipeline.core.ledger import Ledger
    from sqlalchemy import func, select

    from pipeline.core import schema

    workspace = Path(tempfile.mkdtemp(prefix="newsdesk-load-"))
    config = parse_config({
        "feeds": [{"name": f"outlet{n:03d}", "url": f"http://127.0.0.1:{port}/feed/{n}.xml", "full_text": "feed"}
                  for n in range(args.feeds)],
        "ledger": {"url": "sqlite:///ledger.sqlite"},
        "limits": {"allow_private_hosts": True, "fetch_concurrency": args.concurrency, "fetch_timeout_s": TIMEOUT_S,
                   "fetch_retries": 1, "fetch_deadline_s": args.deadline, "max_response_bytes": 5_000_000},
    }, root=workspace)
    ledger = Ledger(config.ledger_url)
    logging.basicConfig(level=logging.ERROR)   # per-feed warnings are in the report; keep the output to the summary
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"serving {args.feeds} feeds x {args.items} items on 127.0.0.1:{port}; "
          f"mix per 100 feeds: {', '.join(f'{k} {s}' for k, s, _ in MIX)}", flush=True)

    started = time.monotonic()
    report = run_fetch(config, ledger)
    seconds = time.monotonic() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    server.terminate()

    with ledger.engine.connect() as connection:
        per_source = dict(connection.execute(select(schema.items.c.source, func.count()).group_by(schema.items.c.source)).all())
    errors = {e.split("'")[1]: e for e in report.errors}

    problems: list[str] = []
    kinds = Counter()
    for n in range(args.feeds):
        name, kind = f"outlet{n:03d}", kind_of(n)
        kinds[kind] += 1
        expected = dict((k, w) for k, _, w in MIX)[kind]
        if expected is None:
            if name in errors:
                problems.append(f"{name} ({kind}) failed: {errors[name]}")
            elif per_source.get(name, 0) != args.items:
                problems.append(f"{name} ({kind}) stored {per_source.get(name, 0)} of {args.items} items (starved?)")
        elif name not in errors:
            problems.append(f"{name} ({kind}) should have failed with '{expected}' but did not")
        elif expected not in errors[name]:
            problems.append(f"{name} ({kind}) failed for the wrong reason: {errors[name]}")
        if per_source.get(name) and expected is not None:
            problems.append(f"{name} ({kind}) stored items although it failed")
    unattributed = [e for e in report.errors if e.split("'")[1] not in {f"outlet{n:03d}" for n in range(args.feeds)}]
    problems += [f"error not attributed to a feed: {e}" for e in unattributed]
    if seconds > args.deadline or any("stage deadline" in e for e in report.errors):
        problems.append(f"the stage took {seconds:.1f}s, over limits.fetch_deadline_s = {args.deadline:g}s")
    if peak_mib >= 1024:
        problems.append(f"peak RSS {peak_mib:.0f} MiB is over 1 GiB")

    stored = sum(per_source.values())
    healthy = sum(1 for n in range(args.feeds) if dict((k, w) for k, _, w in MIX)[kind_of(n)] is None)
    print(f"feeds by kind: {dict(sorted(kinds.items()))}")
    print(f"feeds ok {report.notes['feeds_ok']}, failed {report.notes['feeds_failed']}; "
          f"http requests {report.notes['http_requests']}; items stored {stored} (expected {healthy * args.items})")
    by_specificity = sorted((m for m in MIX if m[2]), key=lambda m: -len(m[2]))
    print(f"failures by reason: {dict(Counter(next((w for _, _, w in by_specificity if w in e), 'other') for e in report.errors))}")
    print(f"peak RSS {peak_mib:.0f} MiB (after imports and ledger setup {rss_before:.0f} MiB); "
          f"stage {seconds:.1f}s of a {args.deadline:g}s deadline; concurrency {args.concurrency}, timeout {TIMEOUT_S:g}s, 1 retry")
    for problem in problems[:30]:
        print(f"GOAL MISSED: {problem}")
    ledger.close()
    verdict = "all goals met" if not problems else f"{len(problems)} goal(s) missed"
    print(f"fetch load: {stored / seconds:.0f} items/s ({stored} items, {args.feeds} feeds, {seconds:.1f}s), "
          f"peak RSS {peak_mib:.0f} MiB; {verdict}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
