"""A careful HTTP GET for untrusted URLs (feeds and the pages they link to).

What it guarantees, per request:
  * only public http(s) hosts, checked before the first request and again
    on every redirect hop (redirects are followed here, at most five), and
    once more at connect time on the address actually dialled, so DNS that
    changes its answer between check and connect cannot reach inside;
  * a wall-clock timeout per attempt, not just per socket read, so a server
    that trickles one byte at a time cannot hold a slot forever;
  * a size cap enforced while streaming, counted on the decompressed bytes
    with our own bounded decompressor, so a gzip bomb stops after at most
    the cap (plus one chunk) of output;
  * retries with exponential backoff and jitter on timeouts, connection
    errors and 5xx; never on 4xx, refusals or oversize bodies.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from tenacity.wait import wait_base

from pipeline.text.urls import (
    ResolveError,
    Resolver,
    UnsafeUrlError,
    UrlError,
    check_url,
    system_resolver,
    vetted_addresses,
    without_credentials,
)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Only encodings we can decompress with a bound on the output.
ACCEPT_ENCODING = "gzip, deflate"


class FetchError(Exception):
    """A request that did not produce a usable body. `retryable` says whether trying again may help."""

    def __init__(self, url: str, problem: str, *, retryable: bool = False, status: int | None = None) -> None:
        # The message reaches logs, the ledger and status: never a password or token from the URL.
        super().__init__(f"{without_credentials(url)}: {problem}")
        self.url = url
        self.problem = problem
        self.retryable = retryable
        self.status = status


class ResponseTooLarge(FetchError):
    pass


@dataclass(frozen=True)
class FetchResult:
    url: str                 # after redirects
    status: int
    headers: httpx.Headers
    content: bytes

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------
# bounded decompression


class BoundedDecoder:
    """Content-Encoding decoding that never produces more than `limit` bytes.

    zlib's `max_length` caps each step's output, so a highly compressed body
    is decoded in bounded pieces and abandoned as soon as it passes the cap.
    """

    def __init__(self, encodings: list[str], limit: int, url: str) -> None:
        self.limit = limit
        self.url = url
        self.produced = 0
        self.raw = 0
        self.stages: list[_ZlibStage] = []
        # Encodings are listed in the order they were applied; undo them backwards.
        for encoding in reversed(encodings):
            if encoding in ("gzip", "x-gzip"):
                self.stages.append(_ZlibStage(zlib.MAX_WBITS | 16))
            elif encoding == "deflate":
                self.stages.append(_ZlibStage(None))
            elif encoding not in ("identity", ""):
                raise FetchError(url, f"unsupported Content-Encoding {encoding!r} (we asked for {ACCEPT_ENCODING})")

    def feed(self, chunk: bytes) -> bytes:
        self.raw += len(chunk)
        if self.raw > self.limit:
            raise ResponseTooLarge(self.url, f"response too large: more than {self.limit} bytes (limits.max_response_bytes)")
        data = chunk
        for stage in self.stages:
            data = stage.decompress(data, self.limit - self.produced + 1, self._too_large)
        self.produced += len(data)
        if self.produced > self.limit:
            self._too_large()
        return data

    def _too_large(self) -> None:
        raise ResponseTooLarge(
            self.url,
            f"response too large: more than {self.limit} bytes once decompressed "
            "(limits.max_response_bytes; a compression bomb looks like this)",
        )


class _ZlibStage:
    def __init__(self, wbits: int | None) -> None:
        self.wbits = wbits      # None: deflate, zlib-wrapped or raw, decided on the first bytes
        self.inner: Any = None

    def _new(self, first: bytes) -> Any:
        if self.wbits is not None:
            return zlib.decompressobj(self.wbits)
        # "deflate" should be zlib-wrapped, but some servers send raw deflate.
        zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)

    def decompress(self, data: bytes, budget: int, too_large) -> bytes:
        out = bytearray()
        pending = data
        while pending:
            if self.inner is None:
                self.inner = self._new(pending)
            try:
                out += self.inner.decompress(pending, max(budget - len(out), 1))
            except zlib.error as exc:
                raise FetchError("", f"corrupt compressed body: {exc}") from None
            if len(out) >= budget:
                too_large()
            if self.inner.unconsumed_tail:
                pending = self.inner.unconsumed_tail
            elif self.inner.eof and self.inner.unused_data:
                pending = self.inner.unused_data   # a further gzip member follows
                self.inner = None
            else:
                pending = b""
        return bytes(out)


# --------------------------------------------------------------------------
# connect-time guard


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Dials only addresses that pass the SSRF checks, resolving the name once.

    The pre-flight check in `Fetcher` gives clear errors; this closes the gap
    between that check and the connection (DNS rebinding). TLS still uses the
    host name for SNI and certificate checks: httpcore passes it separately.
    """

    def __init__(self, resolver: Resolver, allow_private: bool) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.resolver = resolver
        self.allow_private = allow_private

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = await vetted_addresses(host, resolver=self.resolver, allow_private=self.allow_private)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"no address of {host} accepted a connection")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def make_client(
    *, timeout_s: float, user_agent: str, resolver: Resolver = system_resolver, allow_private: bool = False
) -> httpx.AsyncClient:
    """The client for untrusted URLs: guarded connects, no redirects, no proxies from the environment.

    Proxies are off because through a proxy the proxy picks the address and
    our connect-time guard cannot see it.
    """
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx has no public hook for the network backend; point its pool at
    # the guard (httpx is pinned to 0.28, and a test dials through this path).
    transport._pool._network_backend = GuardedNetworkBackend(resolver, allow_private)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": user_agent},
    )


# --------------------------------------------------------------------------
# the fetcher


def default_wait() -> wait_base:
    """0.5s, 1s, 2s ... capped at 10s, plus up to 1s of jitter so feeds that
    failed together do not all come back at the same instant."""
    return wait_exponential(multiplier=0.5, max=10) + wait_random(0, 1)


class Fetcher:
    """GET with the guarantees in this module's docstring. One per stage run.

    `retry_wait` is a tenacity wait strategy (tests pass `wait_none()`);
    `semaphore` caps concurrent requests across everything that shares it.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout_s: float,
        max_bytes: int,
        retries: int,
        user_agent: str,
        resolver: Resolver = system_resolver,
        allow_private: bool = False,
        retry_wait: wait_base | None = None,
        semaphore: asyncio.Semaphore | None = None,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.retries = retries
        self.user_agent = user_agent
        self.resolver = resolver
        self.allow_private = allow_private
        self.retry_wait = retry_wait if retry_wait is not None else default_wait()
        self.semaphore = semaphore or asyncio.Semaphore(8)
        self.requests = 0

    @classmethod
    def from_limits(cls, client: httpx.AsyncClient, limits, **kw) -> Fetcher:
        return cls(
            client,
            timeout_s=limits.fetch_timeout_s,
            max_bytes=limits.max_response_bytes,
            retries=limits.fetch_retries,
            user_agent=limits.user_agent,
            allow_private=limits.allow_private_hosts,
            **kw,
        )

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None, accept: str | None = None) -> FetchResult:
        """The body of `url` after redirects, or a 304. Raises FetchError with a clear problem."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self.retry_wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, FetchError) and exc.retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with self.semaphore:
                    return await self._attempt(url, headers or {}, accept)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, url: str, headers: Mapping[str, str], accept: str | None) -> FetchResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, headers, accept)
        except TimeoutError:
            raise FetchError(url, f"timed out after {self.timeout_s:g}s (limits.fetch_timeout_s)", retryable=True) from None

    async def _follow(self, url: str, headers: Mapping[str, str], accept: str | None) -> FetchResult:
        current = url
        request_headers = {"User-Agent": self.user_agent, "Accept-Encoding": ACCEPT_ENCODING, **headers}
        if accept:
            request_headers["Accept"] = accept
        for hop in range(MAX_REDIRECTS + 1):
            await self._check(current, url)
            self.requests += 1
            try:
                request = self.client.build_request("GET", current, headers=request_headers)
                response = await self.client.send(request, stream=True, follow_redirects=False)
            except httpx.TimeoutException as exc:
                raise FetchError(current, f"timed out ({type(exc).__name__})", retryable=True) from None
            except httpx.TransportError as exc:
                raise FetchError(current, f"connection failed: {exc or type(exc).__name__}", retryable=True) from None
            except ResolveError as exc:
                raise FetchError(current, str(exc), retryable=exc.temporary) from None
            except UrlError as exc:   # the connect-time guard
                raise FetchError(current, str(exc)) from None
            try:
                status = response.status_code
                if status in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(current, f"HTTP {status} redirect without a Location header", status=status)
                    try:
                        current = str(httpx.URL(current).join(location.strip()))
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise FetchError(current, f"redirect to a malformed URL {location[:200]!r}: {exc}") from None
                    continue
                if status == 304:
                    return FetchResult(current, status, response.headers, b"")
                if status >= 500:
                    raise FetchError(current, f"HTTP {status} {response.reason_phrase}", retryable=True, status=status)
                if status >= 400:
                    raise FetchError(current, f"HTTP {status} {response.reason_phrase}", status=status)
                if status != 200:
                    raise FetchError(current, f"unexpected HTTP {status} {response.reason_phrase}", status=status)
                content = await self._read(response, current)
                return FetchResult(current, status, response.headers, content)
            finally:
                await response.aclose()
        raise FetchError(url, f"more than {MAX_REDIRECTS} redirects (stopped before {without_credentials(current)[:200]})")

    async def _check(self, url: str, original: str) -> None:
        try:
            await check_url(url, resolver=self.resolver, allow_private=self.allow_private)
        except ResolveError as exc:
            raise FetchError(url, str(exc), retryable=exc.temporary) from None
        except UnsafeUrlError as exc:
            via = f" (redirected from {without_credentials(original)[:200]})" if url != original else ""
            raise FetchError(url, f"{exc}{via}") from None
        except UrlError as exc:
            raise FetchError(url, str(exc)) from None

    async def _read(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ResponseTooLarge(
                url, f"response too large: Content-Length {declared} exceeds {self.max_bytes} bytes (limits.max_response_bytes)"
            )
        encodings = [e.strip().lower() for e in response.headers.get("content-encoding", "").split(",") if e.strip()]
        decoder = BoundedDecoder(encodings, self.max_bytes, url)
        body = bytearray()
        try:
            # As the bytes arrive (no re-chunking): the cap is checked per network read.
            async for chunk in response.aiter_raw():
                body += decoder.feed(chunk)
        except FetchError as exc:
            if not exc.url:
                raise FetchError(url, exc.problem) from None
            raise
        except httpx.TimeoutException:
            raise FetchError(url, "timed out while reading the body", retryable=True) from None
        except httpx.TransportError as exc:
            raise FetchError(url, f"connection lost while reading the body: {exc}", retryable=True) from None
        return bytes(body)


def read_local_file(path: str | Path, max_bytes: int) -> bytes:
    """A local feed file, with the same size cap as a download."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise FetchError(str(path), "file not found") from None
    except IsADirectoryError:
        raise FetchError(str(path), "is a directory, not a feed file") from None
    except OSError as exc:
        raise FetchError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ResponseTooLarge(str(path), f"file too large: more than {max_bytes} bytes (limits.max_response_bytes)")
    return data
