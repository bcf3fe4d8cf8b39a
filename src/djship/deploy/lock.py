"""One change at a time per system: deploy, rollback, scale, or up on a running system.

The lock is an flock on a file in the state directory: the kernel releases it when the process holding it
exits, however it exits, so a crashed deploy never leaves a lock that someone must clear by hand.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from djship.errors import DjshipError


@contextmanager
def exclusive(
    path: Path, operation: str, busy: str = "another deploy, rollback, scale or up is running"
) -> Iterator[None]:
    """Hold the lock at path for operation; refuse with busy (and who holds it) when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
            raise DjshipError(f"{busy} ({holder}); wait for it to finish") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{operation} by pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)
