"""Protocol upgrades across the proxy (``http.upgrade``): which requests ask
for one, what a backend's 101 must say and what of it reaches the client."""

from __future__ import annotations

import h11
import pytest

from gateway.http.errors import UpstreamProtocolError
from gateway.http.forwarding import forward_request_headers
from gateway.http.upgrade import BadSwitch, requested_upgrade, switch_headers
from gateway.upstream.http1 import switch_head

WS = [(b"host", b"h"), (b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket"),
      (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]


def test_an_upgrade_is_asked_by_http11_with_upgrade_named_in_connection():
    assert requested_upgrade(b"1.1", WS) == b"websocket"
    assert requested_upgrade(b"1.1", [(b"connection", b"upgrade"), (b"upgrade", b"foo/2, bar")]) == b"foo/2, bar"
    assert requested_upgrade(b"1.0", WS) is None  # RFC 9110 7.8: ignored in HTTP/1.0
    assert requested_upgrade(b"2.0", WS) is None
    assert requested_upgrade(b"1.1", [(b"upgrade", b"websocket")]) is None  # not named in Connection
    assert requested_upgrade(b"1.1", [(b"connection", b"upgrade")]) is None  # nothing to switch to
    # h2c asks the gateway itself for HTTP/2 (this hop's): never passed on
    assert requested_upgrade(b"1.1", [(b"connection", b"upgrade, http2-settings"), (b"upgrade", b"h2c")]) is None
    assert requested_upgrade(b"1.1", [(b"connection", b"upgrade"), (b"upgrade", b"H2C, websocket")]) == b"websocket"


def test_only_an_upgrade_request_keeps_upgrade_on_its_way_to_the_backend():
    plain = forward_request_headers(WS, peer="192.0.2.1", peer_trusted=False, https=False)
    assert not {b"upgrade", b"connection"} & {n for n, _ in plain}
    asked = forward_request_headers(WS, peer="192.0.2.1", peer_trusted=False, https=False, upgrade=b"websocket")
    assert (b"upgrade", b"websocket") in asked and (b"connection", b"upgrade") in asked
    assert sum(n == b"connection" for n, _ in asked) == 1  # the client's keep-alive is not passed
    assert (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==") in asked


def test_a_101_goes_to_the_client_with_its_upgrade_and_without_other_hop_headers():
    raw = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade, X-Hop"), (b"X-Hop", b"1"),
           (b"Keep-Alive", b"timeout=5"), (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]
    assert switch_headers(raw, b"websocket") == [
        (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), (b"connection", b"upgrade"),
        (b"upgrade", b"websocket")]


@pytest.mark.parametrize(("raw", "offered"), [
    ([(b"connection", b"upgrade")], b"websocket"),  # no Upgrade
    ([(b"upgrade", b"h2c")], b"websocket"),  # not what was offered
    ([(b"upgrade", b"websocket, evil")], b"websocket"),
])
def test_a_101_to_something_the_client_did_not_offer_is_refused(raw, offered):
    with pytest.raises(BadSwitch):
        switch_headers(raw, offered)
    with pytest.raises(UpstreamProtocolError):  # the transport's answer: a broken backend, 502
        switch_head(h11.InformationalResponse(status_code=101, headers=raw), offered)


def test_a_101_with_a_control_byte_in_a_header_is_refused():
    event = h11.InformationalResponse(status_code=101, headers=[(b"upgrade", b"websocket"), (b"x", b"a\x01b")])
    with pytest.raises(UpstreamProtocolError):
        switch_head(event, b"websocket")
    head = switch_head(h11.InformationalResponse(status_code=101, headers=[(b"upgrade", b"WebSocket")]),
                       b"websocket")
    assert (head.status, head.headers) == (101, [(b"connection", b"upgrade"), (b"upgrade", b"WebSocket")])
