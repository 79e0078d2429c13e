"""Helpers for sans-IO tests, after h11's tests/helpers.py."""

from __future__ import annotations

import fastcgi
from fastcgi import CLIENT, NEED_DATA, SERVER, Connection


def get_all_events(conn: Connection) -> list[fastcgi.Event]:
    got = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return got
        got.append(event)
        if isinstance(event, fastcgi.ConnectionClosed):
            return got


class ConnectionPair:
    """A web-server Connection and an application Connection joined by a fake link.

    ``send(side, event)`` sends through one side, feeds the bytes to the other and
    returns what the other side parsed, so every test checks both directions.
    """

    def __init__(self) -> None:
        self.conn = {CLIENT: Connection(CLIENT), SERVER: Connection(SERVER)}
        self.other = {CLIENT: SERVER, SERVER: CLIENT}

    def send(self, side: fastcgi.Side, events: object) -> list[fastcgi.Event]:
        if not isinstance(events, list):
            events = [events]
        data = b""
        for event in events:
            out = self.conn[side].send(event)
            data += out or b""
        other = self.conn[self.other[side]]
        other.receive_data(data)
        return get_all_events(other)
