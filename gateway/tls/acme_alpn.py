"""TLS-ALPN-01 (RFC 8737) on the serving side: a client that offers ALPN
``acme-tls/1`` (and only a CA validating does) gets the challenge certificate
the ACME task wrote to the state dir for the name it asked for, with
``acme-tls/1`` selected; ordinary clients never see it (``wants_challenge``
is false for them, whatever names they send).

The listener's use (once per connection, before the handshake)::

    hello = parse_client_hello(first_bytes)
    ctx = challenge_context(state, hello) if hello is not None else None
    # None: the site's context as usual
"""

from __future__ import annotations

import ssl

from .client_hello import ClientHello
from .store import StateDir

ACME_TLS_ALPN = "acme-tls/1"


def wants_challenge(hello: ClientHello) -> bool:
    """RFC 8737 3: the validating CA offers ``acme-tls/1`` and names one host."""
    return ACME_TLS_ALPN in hello.alpn and hello.server_name is not None


def challenge_context(state: StateDir, hello: ClientHello) -> ssl.SSLContext | None:
    """The context that presents the challenge certificate for ``hello``'s
    name, None when ``hello`` is not a validation or none is under way for
    that name (the handshake then goes on with the site's context, which
    offers no ``acme-tls/1`` and fails for the CA, as it should)."""
    if not wants_challenge(hello):
        return None
    assert hello.server_name is not None
    try:
        path = state.alpn_challenge(hello.server_name)
    except ValueError:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(path)
    except (OSError, ssl.SSLError):
        return None
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    return ctx
