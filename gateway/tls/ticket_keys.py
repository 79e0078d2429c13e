"""Session-ticket keys shared by every worker process.

Policy: the stdlib ``ssl`` module gives each ``SSLContext`` its own random
ticket keys, so a ticket one worker process issued is refused by another (and
the client does a full handshake). The master makes ``TICKET_KEYS_LEN`` random
bytes per generation (a reload rotates them), hands them to its workers in
their 0600 spec file, and each worker installs them with OpenSSL's
``SSL_CTX_set_tlsext_ticket_keys`` (``SSL_CTX_ctrl`` command 59) through
ctypes, on the ``SSL_CTX*`` behind the ``SSLContext``.

That pointer is read from the ``SSLContext`` object's memory (the first field
after the object header in CPython's ``PySSLContext``) and verified before any
write: ``SSL_CTX_get_options`` through it must equal ``ctx.options``, and
after the write ``SSL_CTX_ctrl`` command 58 (get keys) must read the same bytes
back. If anything does not check out (another Python, another libssl), one
warning line, and the context keeps its own keys: resumption then works within
one process only. Pure of sockets.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys

log = logging.getLogger(__name__)

#: OpenSSL 1.1/3.x: 16 bytes key name, 32 HMAC secret, 32 AES key.
TICKET_KEYS_LEN = 80
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59

_lib: ctypes.CDLL | None = None
_lib_error = ""


def new_keys() -> bytes:
    return os.urandom(TICKET_KEYS_LEN)


def _libssl() -> ctypes.CDLL | None:
    """The libssl the ``_ssl`` extension is linked with (symbols looked up
    through the extension's handle find its dependencies)."""
    global _lib, _lib_error
    if _lib is not None or _lib_error:
        return _lib
    try:
        import _ssl

        path = getattr(_ssl, "__file__", None)
        lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)  # built in: the interpreter's own symbols
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        _lib = lib
    except (OSError, AttributeError, ImportError) as exc:
        _lib_error = str(exc) or type(exc).__name__
    return _lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The ``SSL_CTX*`` of ``ctx``, or None if it does not verify."""
    if sys.implementation.name != "cpython":
        return None
    offset = object.__basicsize__  # PyObject_HEAD: the SSL_CTX* is the first field after it
    pointer = ctypes.c_void_p.from_address(id(ctx) + offset).value
    if not pointer:
        return None
    # Two different option sets must both read back: a stray pointer does not do that by chance.
    saved = ctx.options
    try:
        if int(lib.SSL_CTX_get_options(pointer)) != int(saved):
            return None
        ctx.options |= ssl.OP_NO_TICKET
        matches = int(lib.SSL_CTX_get_options(pointer)) == int(ctx.options)
    finally:
        ctx.options = saved
    return pointer if matches else None


def install_problem(ctx: ssl.SSLContext, keys: bytes) -> str | None:
    """Install ``keys``; None when done, else why not (nothing written)."""
    if len(keys) != TICKET_KEYS_LEN:
        return f"ticket keys must be {TICKET_KEYS_LEN} bytes, got {len(keys)}"
    lib = _libssl()
    if lib is None:
        return f"libssl not reachable through ctypes ({_lib_error})"
    pointer = _ssl_ctx_pointer(ctx, lib)
    if pointer is None:
        return "the SSLContext's SSL_CTX pointer did not verify"
    buf = ctypes.create_string_buffer(keys, TICKET_KEYS_LEN)
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LEN, buf) != 1:
        return "SSL_CTX_set_tlsext_ticket_keys failed"
    back = ctypes.create_string_buffer(TICKET_KEYS_LEN)
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LEN, back) != 1 \
            or back.raw != keys:
        return "the ticket keys did not read back"
    return None
