"""TLS-ALPN-01 (RFC 8737) on the serving side: a client that offers ALPN
``acme-tls/1`` and nothing else (as RFC 8737 3 has the validating CA do)
gets the challenge certificate the ACME task wrote to the state dir for the
name it asked for, with ``acme-tls/1`` selected; ordinary clients never see
it (``wants_challenge`` is false for them, whatever names they send).

The listener's use (``front.listen.tls_handshake``, once per connection,
before the handshake, only when ``[acme] challenge = "tls-alpn-01"``)::

    peek = ClientHelloPeek()            # the hello's bytes stay for the handshake
    await downstream.receive_prefix(peek)
    ctx = challenge_context(state, peek.hello) if peek.hello is not None else None
    # None: the site's context as usual; else handshake with ctx, then close
"""

from __future__ import annotations

import ssl

from .client_hello import ClientHello
from .store import StateDir

ACME_TLS_ALPN = "acme-tls/1"


def wants_challenge(hello: ClientHello) -> bool:
    """RFC 8737 3: the validating CA offers ``acme-tls/1`` alone and names
    one host. (A client offering it among others is not validating: it gets
    the site's context, which never selects ``acme-tls/1``.)"""
    return hello.alpn == (ACME_TLS_ALPN,) and hello.server_name is not None


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
