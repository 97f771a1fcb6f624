"""URL canonical form, stable ids, and the SSRF address checks."""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest

from pipeline.services.http import BoundedDecoder, ResponseTooLarge
from pipeline.text.urls import (
    ResolveError,
    UnsafeUrlError,
    UrlError,
    address_problem,
    canonicalize_url,
    check_url,
    parse_legacy_ipv4,
    registrable_domain,
    same_site,
    stable_id,
)

# --------------------------------------------------------------------------
# canonical form


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTP://News.Example.COM/Path", "http://news.example.com/Path"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a#section-2", "https://example.com/a"),
        ("https://example.com/app#!/story/7", "https://example.com/app#!/story/7"),
        ("https://example.com/a?utm_source=rss&utm_medium=feed&UTM_Campaign=x", "https://example.com/a"),
        ("https://example.com/a?fbclid=1&gclid=2&mc_cid=3&mc_eid=4&ref=rss&id=9", "https://example.com/a?id=9"),
        ("https://example.com/a?b=2&a=1&c=", "https://example.com/a?a=1&b=2&c="),
        ("https://example.com/a/./b/../c", "https://example.com/a/c"),
        ("https://example.com/%7euser/a%2fb", "https://example.com/~user/a%2Fb"),
        ("https://example.com/a b", "https://example.com/a%20b"),
        ("https://user:secret@example.com/a", "https://example.com/a"),
        ("https://example.com./a", "https://example.com/a"),
        ("https://bücher.example/a", "https://xn--bcher-kva.example/a"),
        ("  https://example.com/a  ", "https://example.com/a"),
    ],
)
def test_canonical_form(raw, canonical):
    assert canonicalize_url(raw) == canonical


def test_spellings_of_one_article_share_one_id():
    spellings = [
        "https://news.example.com/halving?utm_source=a",
        "HTTPS://News.Example.com:443/halving?fbclid=zz&utm_campaign=b#top",
        "https://news.example.com/halving",
    ]
    ids = {stable_id(canonicalize_url(url)) for url in spellings}
    assert len(ids) == 1 and len(ids.pop()) == 32
    assert stable_id("https://news.example.com/a") != stable_id("https://news.example.com/b")


def test_relative_links_resolve_against_a_base():
    assert canonicalize_url("../b?x=1", base="https://example.com/a/c/") == "https://example.com/a/b?x=1"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("ftp://example.com/a", "only http(s)"),
        ("javascript:alert(1)", "only http(s)"),
        ("/relative/path", "only http(s)"),
        ("https:///nohost", "no host"),
        ("https://example.com:99999/", "malformed"),
        ("https://exa\nmple.com/", "control characters"),
        ("", "empty"),
    ],
)
def test_unusable_urls_say_why(raw, problem):
    with pytest.raises(UrlError, match=re.escape(problem)):
        canonicalize_url(raw)


def test_same_site_compares_registrable_domains():
    assert registrable_domain("news.bbc.co.uk") == "bbc.co.uk"
    assert same_site("https://feeds.example.com/x", "https://www.example.com/y")
    assert not same_site("https://alice.github.io/a", "https://mallory.github.io/a")  # public suffix
    assert not same_site("https://example.com/", "https://example.org/")
    assert not same_site("http://10.0.0.1/", "http://10.0.0.2/")


# --------------------------------------------------------------------------
# address classification


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "private|reserved"),
        ("192.0.2.10", "private"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64 address wrapping 127.0.0.1"),
        ("2002:7f00:1::", "6to4 address wrapping 127.0.0.1"),
    ],
)
def test_addresses_inside_our_network_are_refused(address, problem):
    found = address_problem(address)
    assert found is not None
    assert any(word in found for word in problem.split("|")), found


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1", "100.128.0.1"])
def test_public_addresses_are_fine(address):
    assert address_problem(address) is None


@pytest.mark.parametrize(
    ("host", "meaning"),
    [
        ("2130706433", "127.0.0.1"),      # one decimal number
        ("0177.0.0.1", "127.0.0.1"),      # octal
        ("0x7f.0.0.1", "127.0.0.1"),      # hex
        ("0x7f000001", "127.0.0.1"),      # one hex number
        ("127.1", "127.0.0.1"),           # short form
        ("0177.1", "127.0.0.1"),
        ("10.0.1", "10.0.0.1"),
        ("3232235777", "192.168.1.1"),
        ("012.0.0.1", "10.0.0.1"),         # a leading zero makes it octal
        ("0x", "0.0.0.0"),                 # an empty hex number is 0 to inet_aton-style parsers
    ],
)
def test_odd_ipv4_notations_are_decoded(host, meaning):
    assert parse_legacy_ipv4(host) == ipaddress.IPv4Address(meaning)


@pytest.mark.parametrize("host", ["127.0.0.1", "example.com", "1.2.3.4.5", "09.1.1.1", "4294967296", "256.1.1.1", ""])
def test_ordinary_hosts_are_not_odd_notations(host):
    assert parse_legacy_ipv4(host) is None


# --------------------------------------------------------------------------
# check_url


async def fake_dns(host: str) -> list[str]:
    table = {
        "public.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
        "private.example.com": ["192.168.0.10"],
        "mixed.example.com": ["93.184.216.34", "10.0.0.1"],
        "metadata.example.com": ["169.254.169.254"],
    }
    if host not in table:
        raise ResolveError(f"cannot resolve host {host!r}", temporary=False)
    return table[host]


def check(url: str, allow_private: bool = False) -> None:
    asyncio.run(check_url(url, resolver=fake_dns, allow_private=allow_private))


def test_a_public_host_passes():
    check("https://public.example.com/feed")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://private.example.com/", "refusing http://private.example.com/: private.example.com resolves to 192.168.0.10, a private network address"),
        ("http://mixed.example.com/", "resolves to 10.0.0.1"),
        ("http://metadata.example.com/latest", "cloud metadata endpoint"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata endpoint"),
        ("http://[fd00:ec2::254]/", "cloud metadata endpoint"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://2130706433/", "non-standard IPv4 notation (means 127.0.0.1)"),
        ("http://0x7f.1/", "non-standard IPv4 notation (means 127.0.0.1)"),
        ("http://localhost./", "unknown|resolve"),
        ("http://127.0.0.1:22/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("file:///etc/passwd", "only http(s)"),
        ("gopher://public.example.com/", "only http(s)"),
        ("http://public.example.com\\@127.0.0.1/", "loopback"),
    ],
)
def test_unsafe_urls_are_refused_with_the_reason(url, message):
    with pytest.raises(UrlError) as caught:
        check(url)
    assert any(part in str(caught.value) for part in message.split("|")), str(caught.value)


def test_octal_hosts_are_refused():
    # httpx itself rejects this spelling; either way it never reaches a socket.
    with pytest.raises(UrlError):
        check("http://0177.0.0.1/")


def test_allow_private_hosts_lets_intranet_addresses_through_but_not_odd_notations():
    check("http://private.example.com/", allow_private=True)
    check("http://127.0.0.1:8080/", allow_private=True)
    with pytest.raises(UnsafeUrlError):
        check("http://2130706433/", allow_private=True)


# --------------------------------------------------------------------------
# bounded decompression


def test_bounded_decoder_round_trips_gzip_and_deflate():
    import gzip
    import zlib

    text = b"<rss>" + b"bitcoin " * 5000 + b"</rss>"
    for encoding, body in [
        ("gzip", gzip.compress(text)),
        ("deflate", zlib.compress(text)),
        ("deflate", zlib.compress(text)[2:-4]),  # raw deflate, as some servers send it
        ("gzip", gzip.compress(text[:100]) + gzip.compress(text[100:])),  # two gzip members
    ]:
        decoder = BoundedDecoder([encoding], limit=100_000, url="u")
        out = b"".join(decoder.feed(body[i : i + 1000]) for i in range(0, len(body), 1000))
        assert out == text, encoding


def test_bounded_decoder_stops_a_bomb_within_one_step_of_the_limit():
    import gzip

    bomb = gzip.compress(b"\0" * 50_000_000)
    decoder = BoundedDecoder(["gzip"], limit=1_000_000, url="u")
    with pytest.raises(ResponseTooLarge, match="once decompressed"):
        decoder.feed(bomb)
    assert decoder.produced <= 1_000_001
