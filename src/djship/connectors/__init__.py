"""How djship acts on a host: one small interface (run, put, get, download, upload), implemented locally and over SSH."""

from __future__ import annotations

from contextlib import AbstractContextManager
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, TypeVar

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

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None, group: str | None = None) -> None:
        """mkdir -p; then the last directory's mode, owner and group (default: the owner's own group)."""

    def download(self, remote: Path, local: Path) -> None:
        """Copy a file of the host to this machine, streamed (never whole in memory); the copy is 0600."""

    def upload(self, local: Path, remote: Path) -> None:
        """Copy a file of this machine to the host, streamed (never whole in memory); the copy is 0600."""

    def symlink(self, link: Path, target: Path) -> None:
        """Point link at target atomically (a reader sees the old target or the new one, never no link)."""

    def readlink(self, link: Path) -> Path | None:
        """Where a symlink points, or None when there is no symlink."""

    def listdir(self, path: Path) -> list[str] | None:
        """The names in a directory, sorted, or None when it does not exist."""

    def stream(
        self, argv: Sequence[str | Path], on_line: Callable[[str], None], *, user: str | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> int:
        """Run argv, handing each line of its output (stdout and stderr) to on_line as it comes; its exit code."""

    def interactive(self, argv: Sequence[str | Path], *, user: str | None = None, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> int:
        """Run argv in a terminal wired to this one (interactive commands work); its exit code."""

    def lock(self, path: Path, operation: str, busy: str) -> AbstractContextManager[None]:
        """Hold an flock on the host's file at path while in the context (released when djship's process or its
        connection ends, however it ends); refuse with busy, naming who holds it, when another process has it."""

    def close(self) -> None: ...


C = TypeVar("C")
R = TypeVar("R")


def on_each(hosts: Mapping[str, C], action: Callable[[C], R]) -> dict[str, R]:
    """Run action on every host at once; when any fail, one error names each failed host and its reason."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = {name: pool.submit(action, connector) for name, connector in hosts.items()}
    results: dict[str, R] = {}
    failures = []
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except DjshipError as error:
            failures.append(f"{name}: {error}")
    if failures:
        raise DjshipError("; ".join(failures))
    return results
