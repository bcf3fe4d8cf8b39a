"""How djship acts on a host: one small interface (run, put, get), implemented locally (and later over SSH)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from djship.errors import DjshipError


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandFailed(DjshipError):
    def __init__(self, what: str, result: Result, log: Path | None = None):
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {result.returncode}"
        where = f" (full output in {log})" if log else ""
        super().__init__(f"{what} failed: {last}{where}")
        self.result = result


class Connector(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float | None = None,
    ) -> Result: ...

    def put(self, path: Path, content: str | bytes, *, mode: int = 0o644, owner: str | None = None) -> bool:
        """Write a file atomically; return whether its content or mode changed."""

    def get(self, path: Path) -> bytes | None:
        """A file's content, or None when it does not exist."""

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None) -> None: ...
