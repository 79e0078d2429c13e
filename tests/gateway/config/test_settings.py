"""Configuration -> runtime settings: each configured value reaches the code
that obeys it (one mapping per settings type, the defaults in the schema only)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network

import trio

from gateway.config import validate
from gateway.front.h1 import ConnectionSettings
from gateway.http.realip import RealIpSettings, TrustedProxies
from gateway.serve.process import admin_connection_settings, pool_from_config
from gateway.upstream.fastcgi import PhpSettings

#: every mapped key set to a value no default has
CONFIG = validate({
    "server": {"temp_dir": "/var/tmp/gw", "server_software": "edge", "access_log_format": "json",
               "trusted_proxies": ["10.0.0.0/8", "unix:"], "real_ip_header": "X-Real-IP", "http2_cleartext": True},
    "timeouts": {"client_header": "11s", "client_body": "12s", "client_body_min_rate": 13, "keepalive": "14s",
                 "send": "15s", "tls_handshake": "22s", "tunnel_idle": "31s"},
    "limits": {"max_header_size": 16, "max_uri_size": 17, "max_header_count": 18, "client_max_body_size": 19,
               "body_buffer_size": 20, "keepalive_requests": 21, "max_connections": 22},
    "backends": {"php": {"pool_size": 23, "queue_timeout": "24s", "connect_timeout": "25s", "read_timeout": "26s",
                         "idle_timeout": "27s", "max_response_header_size": 28, "response_buffer_size": 29,
                         "max_temp_file_size": 30, "ignore_client_abort": True}},
    "sites": {"s": {"root": "/srv", "php": "php"}},
})


def test_every_configured_connection_value_reaches_the_connection():
    assert ConnectionSettings.from_config(CONFIG.server, CONFIG.timeouts, CONFIG.limits) == ConnectionSettings(
        header_timeout=11, body_timeout=12, keepalive_timeout=14, send_timeout=15, max_header_size=16,
        max_uri_size=17, max_header_count=18, max_body_size=19, body_buffer_size=20, body_min_rate=13,
        keepalive_requests=21, temp_dir="/var/tmp/gw", server_software=b"edge", access_log_json=True,
        handshake_timeout=22,
        real_ip=RealIpSettings(TrustedProxies((ip_network("10.0.0.0/8"),), unix=True), b"x-real-ip"),
        proxy_header_timeout=22, http2_cleartext=True, tunnel_idle_timeout=31)


def test_every_configured_backend_value_reaches_php_and_the_pool():
    backend = CONFIG.backends["php"]
    assert PhpSettings.from_config(backend, CONFIG.server) == PhpSettings(
        read_timeout=26, max_header_size=28, response_buffer_size=29, temp_dir="/var/tmp/gw",
        ignore_client_abort=True, max_temp_file_size=30)

    async def never() -> trio.abc.Stream:
        raise AssertionError("not connected in this test")

    pool = pool_from_config("php", never, backend, CONFIG.limits)
    assert (pool.size, pool.queue_depth, pool.queue_timeout, pool.connect_timeout, pool.idle_timeout) == (
        23, 22, 24, 25, 27)  # queue_depth "auto": max_connections


def test_defaults_are_the_schemas_and_the_admin_listener_only_cuts_idle_and_slow_clients_sooner():
    defaults = ConnectionSettings.from_config()
    assert (defaults.header_timeout, defaults.keepalive_timeout, defaults.max_body_size, defaults.temp_dir) == (
        60, 75, 64 << 20, None)
    admin = admin_connection_settings()
    assert (admin.keepalive_timeout, admin.header_timeout) == (5, 10)
    assert replace(admin, keepalive_timeout=75.0, header_timeout=60.0) == defaults
