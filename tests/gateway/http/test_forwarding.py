"""Headers across the proxy hop, sans-IO: hop-by-hop removed, forwarding set."""

from __future__ import annotations

import pytest

from gateway.http.forwarding import forward_request_headers, strip_hop_by_hop


def names(headers):
    return [n for n, _ in headers]


def value(headers, name):
    found = [v for n, v in headers if n == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_hop_by_hop_both_ways():
    headers = [(b"Connection", b"keep-alive, X-Secret"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"),
               (b"Trailer", b"x"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
               (b"Proxy-Authorization", b"Basic x"), (b"Proxy-Connection", b"keep-alive"), (b"Proxy", b"evil:1"),
               (b"x-secret", b"1"), (b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-store")]
    assert strip_hop_by_hop(headers) == [(b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-store")]


BASE = [(b"host", b"example.com:8080"), (b"user-agent", b"t"), (b"content-length", b"5"), (b"expect", b"100-continue")]


def test_an_untrusted_peer_cannot_forge_the_chain():
    out = forward_request_headers(BASE + [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-host", b"evil"),
                                          (b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-proto", b"https")],
                                  peer="198.51.100.7", peer_trusted=False, https=False)
    assert value(out, b"x-forwarded-for") == b"198.51.100.7"
    assert value(out, b"x-forwarded-host") == b"example.com:8080"
    assert value(out, b"x-forwarded-proto") == b"http"
    assert value(out, b"forwarded") == b'for=198.51.100.7;host="example.com:8080";proto=http'
    assert value(out, b"host") == b"example.com:8080"
    assert value(out, b"via") == b"1.1 gateway"
    assert b"content-length" not in names(out) and b"expect" not in names(out)
    assert names(out)[0] == b"user-agent"  # the client's order first, ours after


def test_a_trusted_peer_is_appended_to():
    headers = BASE + [(b"x-forwarded-for", b"203.0.113.1, 10.0.0.9"), (b"x-forwarded-host", b"public.example"),
                      (b"forwarded", b"for=203.0.113.1"), (b"via", b"1.1 haproxy")]
    out = forward_request_headers(headers, peer="10.0.0.2", peer_trusted=True, https=True)
    assert value(out, b"x-forwarded-for") == b"203.0.113.1, 10.0.0.9, 10.0.0.2"
    assert value(out, b"x-forwarded-host") == b"public.example"
    assert value(out, b"x-forwarded-proto") == b"https"
    assert value(out, b"forwarded") == b'for=203.0.113.1, for=10.0.0.2;host="example.com:8080";proto=https'
    assert value(out, b"via") == b"1.1 haproxy, 1.1 gateway"


@pytest.mark.parametrize(("peer", "xff", "node"), [
    ("2001:db8::1", b"2001:db8::1", b'for="[2001:db8::1]"'),
    ("unix:", b"unknown", b"for=unknown"),
])
def test_peer_spellings(peer, xff, node):
    out = forward_request_headers([(b"host", b"h")], peer=peer, peer_trusted=False, https=False)
    assert value(out, b"x-forwarded-for") == xff
    assert value(out, b"forwarded") == node + b";host=h;proto=http"


def test_host_rewritten_or_defaulted():
    out = forward_request_headers(BASE, peer="1.2.3.4", peer_trusted=False, https=False,
                                  upstream_host=b"app.internal")
    assert value(out, b"host") == b"app.internal"
    assert value(out, b"x-forwarded-host") == b"example.com:8080"
    out = forward_request_headers([], peer="1.2.3.4", peer_trusted=False, https=False, default_host=b"10.0.0.5:80")
    assert value(out, b"host") == b"10.0.0.5:80"
    assert b"x-forwarded-host" not in names(out)


def test_connection_named_request_headers_do_not_cross():
    out = forward_request_headers([(b"host", b"h"), (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"te", b"trailers"),
                                   (b"upgrade", b"websocket"), (b"x-end", b"2")],
                                  peer="1.2.3.4", peer_trusted=False, https=False)
    assert b"x-hop" not in names(out) and b"te" not in names(out) and b"upgrade" not in names(out)
    assert value(out, b"x-end") == b"2"
