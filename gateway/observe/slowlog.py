"""php-fpm's slowlog, the second source of what PHP waits on: pure parsing
and a one-minute aggregate (``sampler.SlowlogTail`` reads the file).

With ``request_slowlog_timeout`` set (spawned pools: ``[backends.X.php_fpm]
slowlog_timeout``, 2 s by default), php-fpm writes the PHP backtrace of every
request still running after that long::


    [27-Nov-2026 03:40:01]  [pool php] pid 12345
    script_filename = /srv/www/index.php
    [0x00007f3e4a613f50] mysqli_query() /srv/www/wp-includes/class-wpdb.php:2056
    [0x00007f3e4a613ec0] _do_query() /srv/www/wp-includes/class-wpdb.php:1980
    ...

The first frame is the call the request is in (the function PHP waits in)
and the file it was called from: ``"mysqli_query from
wp-includes/class-wpdb.php"``, the file shown relative to the script's
directory. Each entry is kept a minute (``WINDOW``) with the worker's pid,
so the verdict names the frame of the workers it counts, and the most common
frames over the minute.
"""

from __future__ import annotations

import os
import re
from collections import Counter, deque
from dataclasses import dataclass

#: Seconds an entry counts.
WINDOW = 60.0

_HEAD = re.compile(r"^\[[^\]]+\]\s+\[pool ([^\]]+)\] pid (\d+)\s*$")
_SCRIPT = re.compile(r"^script_filename = (.*)$")
_FRAME = re.compile(r"^\[0x[0-9a-fA-F]+\] (.+?)\(\) (.+?):(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class SlowEntry:
    """One request's backtrace: its pool, worker pid, script, and frames
    (function, file, line), innermost first."""

    pool: str
    pid: int
    script: str
    frames: tuple[tuple[str, str, int], ...]

    @property
    def frame(self) -> str:
        """``"mysqli_query from wp-includes/class-wpdb.php"``; "" without frames."""
        if not self.frames:
            return ""
        function, path, _ = self.frames[0]
        return f"{function} from {relative(path, self.script)}"


def relative(path: str, script: str) -> str:
    """``path`` relative to the directory of ``script`` when it is inside it."""
    base = os.path.dirname(script)
    if base and path.startswith(base + "/"):
        return path[len(base) + 1:]
    return path


def parse(text: str) -> tuple[list[SlowEntry], str]:
    """The complete entries in ``text`` (each ends at a blank line, at the
    next entry's head, or at the end of ``text`` after a whole frame line)
    and what is left over: an entry cut short, to be parsed again with what
    follows."""
    entries: list[SlowEntry] = []
    lines = text.split("\n")
    current: tuple[str, int] | None = None
    script = ""
    frames: list[tuple[str, str, int]] = []
    start_of_current = 0
    offset = 0
    for line in lines:
        head = _HEAD.match(line)
        if head:
            if current is not None:
                entries.append(SlowEntry(current[0], current[1], script, tuple(frames)))
            current, script, frames = (head.group(1), int(head.group(2))), "", []
            start_of_current = offset
        elif current is not None:
            if m := _SCRIPT.match(line):
                script = m.group(1)
            elif m := _FRAME.match(line):
                frames.append((m.group(1), m.group(2), int(m.group(3))))
            elif line.strip() == "" and frames:
                entries.append(SlowEntry(current[0], current[1], script, tuple(frames)))
                current = None
        offset += len(line) + 1
    if current is not None and frames and text.endswith("\n"):
        # php-fpm writes a trace at once (a buffered file closed after it), and the
        # blank line only before the next one: whole lines with frames are the whole entry
        entries.append(SlowEntry(current[0], current[1], script, tuple(frames)))
        current = None
    if current is not None:
        return entries, text[start_of_current:]
    return entries, ""


class SlowFrames:
    """The entries of the last ``WINDOW`` seconds: each worker's latest
    frame, and the most common frames."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.entries: deque[tuple[float, SlowEntry]] = deque()

    def add(self, now: float, entries: list[SlowEntry]) -> None:
        self.entries.extend((now, e) for e in entries)
        self.prune(now)

    def prune(self, now: float) -> None:
        while self.entries and self.entries[0][0] < now - self.window:
            self.entries.popleft()

    def by_pid(self) -> dict[int, str]:
        """pid -> the frame of its latest entry in the window."""
        return {e.pid: e.frame for _, e in self.entries if e.frame}

    def top(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most common frames in the window, with their counts."""
        return Counter(e.frame for _, e in self.entries if e.frame).most_common(n)
