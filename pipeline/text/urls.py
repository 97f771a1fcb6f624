"""URLs from untrusted feeds: canonical form, stable ids, and the SSRF guard.

A feed decides which URLs we request, so every URL is treated as hostile:
only http(s), and never a host that is (or resolves to) an address inside
our own network - private ranges, loopback, link-local, cloud metadata,
and the odd spellings of those (``http://2130706433/``, ``0177.0.0.1``,
``::ffff:127.0.0.1``) that slip past naive string checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A resolver maps a host name to the addresses a connection could reach.
# Injectable so tests (and respx, which never resolves) can pin answers.
Resolver = Callable[[str], Awaitable[Iterable[str]]]


class UrlError(ValueError):
    """A URL we cannot use; the message names the URL and the reason."""


class UnsafeUrlError(UrlError):
    """A URL refused by the SSRF guard."""


class ResolveError(UrlError):
    """The host name did not resolve. `temporary` is True when a retry may help."""

    def __init__(self, message: str, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


# --------------------------------------------------------------------------
# canonical form

# Query keys that only say how a reader arrived, never which page they got.
TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "ttclid",
        "igshid", "li_fat_id", "mc_cid", "mc_eid", "mkt_tok", "ref", "ref_src", "ref_url", "referrer",
        "_hsenc", "_hsmi", "__hstc", "__hssc", "__hsfp", "hsctatracking", "_ga", "_gl",
        "oly_anon_id", "oly_enc_id", "vero_id", "vero_conv", "rb_clickid", "s_cid", "cmpid", "ocid",
        "ncid", "sr_share", "spm", "wt.mc_id", "wt_mc", "at_medium", "at_campaign", "guccounter",
        "guce_referrer", "guce_referrer_sig", "share", "smid", "cmp", "taid",
    }
)
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hmb_")

DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left as they are in a canonical path / query value.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_tracking_param(key: str) -> bool:
    low = key.lower()
    return low in TRACKING_PARAMS or low.startswith(TRACKING_PREFIXES)


def canonicalize_url(url: str, base: str | None = None) -> str:
    """One spelling per page, so the same article from two feeds gets one id.

    Lower-cases scheme and host, drops credentials, default ports, the
    fragment (except ``#!`` routes) and tracking parameters, and sorts the
    query. Path case is kept: servers may treat it as significant.
    """
    raw = (url or "").strip()
    if base:
        raw = urljoin(base, raw)
    if not raw:
        raise UrlError("empty URL")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise UrlError(f"URL {raw[:200]!r} contains control characters")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"URL {raw[:200]!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlError(f"URL {raw[:200]!r}: only http(s) URLs are fetched, not {scheme or 'a relative link'}")
    host = normalize_host(parts.hostname or "", raw)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = _normalize_escapes(_remove_dot_segments(parts.path or "/"))
    path = quote(path, safe=_PATH_SAFE + "%")
    query = _canonical_query(parts.query)
    fragment = parts.fragment if parts.fragment.startswith("!") else ""
    return urlunsplit((scheme, netloc, path, query, fragment))


def normalize_host(host: str, url: str = "") -> str:
    host = host.strip().rstrip(".").lower()
    if not host:
        raise UrlError(f"URL {url[:200]!r} has no host")
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UrlError(f"URL {url[:200]!r} has an invalid international host name: {exc}") from None


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if not is_tracking_param(k)]
    return urlencode(sorted(pairs), quote_via=quote, safe="-._~!$'()*,;:@/")


def _normalize_escapes(path: str) -> str:
    # %7e and %7E and ~ are the same character; keep one spelling.
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char.isascii() and (char.isalnum() or char in "-._~"):
            return char
        return "%" + match.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(fix, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, keeping a trailing slash where there was one."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


# Query parameters that carry credentials in private feed URLs (?token=..., ?api_key=...).
_SECRET_QUERY_KEY = re.compile(r"(?i)^(?:.*[_-])?(?:token|key|apikey|secret|password|passwd|pwd|sig|signature|auth|credentials?)$")


def without_credentials(url: str) -> str:
    """`url` fit for messages, logs and the ledger: a password in the userinfo and
    secret-looking query values replaced by ***. Anything unparseable is returned as is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = parts.query
    if query:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{key}={'***' if value and _SECRET_QUERY_KEY.match(key) else value}" if eq else key
            for key, eq, value in pairs
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def stable_id(canonical_url: str) -> str:
    """The item id: the same page gets the same id in every run."""
    return hashlib.sha256(canonical_url.encode("utf-8")).hexdigest()[:32]


def registrable_domain(host: str) -> str:
    """The part of a host name a registrant controls (``news.bbc.co.uk`` -> ``bbc.co.uk``).

    Uses the public suffix list bundled with `tld` (no network). IP literals
    and hosts under unknown suffixes are their own domain, the strict answer.
    """
    host = host.lower().rstrip(".")
    if _ip_literal(host) is not None:
        return host
    from tld import get_fld

    found = get_fld(host, fix_protocol=True, fail_silently=True)
    return found.lower() if found else host


def same_site(url_a: str, url_b: str) -> bool:
    host_a, host_b = urlsplit(url_a).hostname or "", urlsplit(url_b).hostname or ""
    return bool(host_a) and registrable_domain(host_a) == registrable_domain(host_b)


# --------------------------------------------------------------------------
# SSRF guard

# Cloud metadata services: the most valuable target of an SSRF.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address written the way inet_aton accepts but people never do:
    a single number (``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``)
    or fewer than four parts (``127.1``). None if `host` is not such a form.

    System resolvers turn these into addresses, so a host-name check that
    does not know them is bypassed.
    """
    host = host.rstrip(".")
    parts = host.split(".")
    if not host or len(parts) > 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if any(c in "89" for c in part):
                return None
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for position, value in enumerate(head):
        number += value << (8 * (3 - position))
    address = ipaddress.IPv4Address(number)
    if str(address) == host:
        return None  # the ordinary dotted quad
    return address


def address_problem(address: IPAddress | str) -> str | None:
    """Why we must not connect to `address`, or None when it is a public address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
        if ip.sixtofour is not None and address_problem(ip.sixtofour):
            return f"a 6to4 address wrapping {ip.sixtofour}"
        if ip.teredo is not None and address_problem(ip.teredo[1]):
            return f"a Teredo address wrapping {ip.teredo[1]}"
        if ip in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if address_problem(embedded):
                return f"a NAT64 address wrapping {embedded}"
        elif int(ip) >> 32 == 0 and int(ip) > 1:
            return "an IPv4-compatible IPv6 address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return "carrier-grade NAT space (100.64.0.0/10)"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private network address"
    if not ip.is_global:
        return "not a public address"
    return None


def _metadata_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip in METADATA_ADDRESSES or (mapped is not None and mapped in METADATA_ADDRESSES)


async def system_resolver(host: str) -> list[str]:
    """All addresses the system resolver gives for `host` (every one is checked)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        temporary = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
        raise ResolveError(f"cannot resolve host {host!r}: {exc.strerror or exc}", temporary=temporary) from None
    return [info[4][0] for info in infos]


async def vetted_addresses(host: str, *, resolver: Resolver, allow_private: bool, url: str = "") -> list[str]:
    """The addresses of `host` after the SSRF checks; raises UnsafeUrlError if any is refused.

    One bad address refuses the host: a name that resolves to both a public
    and a private address is exactly what DNS rebinding looks like.
    """
    where = url or host
    host = host.strip("[]").rstrip(".").lower()
    legacy = parse_legacy_ipv4(host)
    if legacy is not None:
        raise UnsafeUrlError(f"refusing {where}: host {host!r} is a non-standard IPv4 notation (means {legacy})")
    literal = _ip_literal(host)
    addresses = [str(literal)] if literal is not None else list(await resolver(host))
    if not addresses:
        raise ResolveError(f"cannot resolve host {host!r}: no addresses", temporary=False)
    if allow_private:
        # An intranet feed is a choice; the cloud metadata service never is.
        for address in addresses:
            if _metadata_address(address):
                raise UnsafeUrlError(
                    f"refusing {where}: {host} {'is' if literal is not None else 'resolves to'} {address}, "
                    "a cloud metadata endpoint (refused even with limits.allow_private_hosts)"
                )
        return addresses
    for address in addresses:
        try:
            problem = address_problem(address.split("%", 1)[0])
        except ValueError:
            problem = f"an unparseable address {address!r}"
        if problem:
            if literal is not None:
                raise UnsafeUrlError(f"refusing {where}: {host} is {problem}")
            raise UnsafeUrlError(f"refusing {where}: {host} resolves to {address}, {problem}")
    return addresses


async def check_url(url: str, *, resolver: Resolver = system_resolver, allow_private: bool = False) -> None:
    """Raise UrlError/UnsafeUrlError unless `url` is an http(s) URL whose host is public.

    The host is taken the way httpx will read it, so a URL that two parsers
    read differently cannot pass the check and then connect elsewhere.
    """
    shown = without_credentials(url)[:200]
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlError(f"URL {shown!r} is malformed: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise UnsafeUrlError(f"refusing {shown}: only http(s) URLs are fetched, not {parsed.scheme or 'no scheme'}")
    host = parsed.raw_host.decode("ascii", "replace")
    if not host:
        raise UrlError(f"URL {shown!r} has no host")
    await vetted_addresses(host, resolver=resolver, allow_private=allow_private, url=shown)
