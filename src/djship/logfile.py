"""The log files djship makes: 0640 (PostgreSQL's slow-query log, a failed build's output may hold data)."""

from __future__ import annotations

import os
from pathlib import Path

from djship.connectors import Result

LOG_MODE = 0o640
# The umask under which the supervisor creates its own log and those of its programs (LOG_MODE); the programs
# themselves keep the usual 022.
SUPERVISOR_UMASK = "027"


def append_result(log: Path, result: Result) -> None:
    """A command, its output and its exit code at the end of a log on this machine (created LOG_MODE)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOG_MODE)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(result.argv)}\n{result.stdout}{result.stderr}\n[exit {result.returncode}]\n\n")
