"""The HTTP server every local stand-in runs on (model servers, news sites, Google).

http.server's default listen backlog is 5. When more connections arrive at once
(8 page fetches, 16 model calls), the kernel drops the extra SYNs and each client
tries again after its 1 s retransmission timeout: a stall no real server, with a
backlog in the hundreds, adds. Benchmarks measured it as a random extra second.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
