"""Waiting for something to become true, with a deadline and an error that says what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable

from djship.errors import DjshipError


def wait_until(what: str, ready: Callable[[], tuple[bool, str]], timeout: float, hint: str = "") -> None:
    """Call ready() until it answers (True, _); past the timeout raise DjshipError with its last answer.

    what names the awaited thing ("app server app1"), hint where to look or what to do.
    """
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = ready()
        if ok:
            return
        if time.monotonic() > deadline:
            raise DjshipError(f"{what} not ready after {timeout:.0f}s ({seen})" + (f"; {hint}" if hint else ""))
        time.sleep(0.1)
