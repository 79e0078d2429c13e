"""h11, compiled with mypyc where ``h11_mypyc`` is installed (the same code,
about three times faster: README "Speed"), else the pure-Python h11. Every
module that speaks HTTP/1.1 imports it from here, so one process never mixes
the two (their event classes differ)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import h11 as h11
else:
    try:
        import h11_mypyc as h11
    except ImportError:  # pure h11 where no compiled build is installed
        import h11

__all__ = ["h11"]
