"""The connector for this machine: subprocesses and files, as the invoking user or (when root) as another."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from collections.abc import Callable
from typing import Sequence

from djship.connectors import Result
from djship.errors import DjshipError


def _ids(owner: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise DjshipError(f"user {owner!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


def _copy_private(source: Path, target: Path) -> None:
    try:
        with source.open("rb") as reader, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                                    "wb") as writer:
            os.fchmod(writer.fileno(), 0o600)
            shutil.copyfileobj(reader, writer, 1 << 20)
    except OSError as error:
        raise DjshipError(f"cannot copy {source} to {target}: {error.strerror or error}") from None


class LocalConnector:
    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        argv = [str(part) for part in argv]
        full_env = {**os.environ, **(env or {})}
        if user and user != pwd.getpwuid(os.getuid()).pw_name:
            argv = ["runuser", "-u", user, "--", *argv]
        try:
            completed = subprocess.run(
                argv, cwd=cwd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout
            )
        except FileNotFoundError:
            raise DjshipError(f"cannot run {argv[0]}: not found; is it installed?") from None
        except subprocess.TimeoutExpired:
            raise DjshipError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f}s") from None
        return Result(tuple(argv), completed.returncode, completed.stdout, completed.stderr)

    def put(self, path: Path, content: str | bytes, *, mode: int = 0o644, owner: str | None = None) -> bool:
        data = content.encode() if isinstance(content, str) else content
        changed = self.get(path) != data or (path.stat().st_mode & 0o7777) != mode or (
            owner is not None and path.stat().st_uid != _ids(owner)[0])
        if not changed:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.djship-tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        if owner:
            os.chown(temporary, *_ids(owner))
        os.replace(temporary, path)
        return True

    def get(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chmod(path, mode)
        if owner:
            shutil.chown(path, *_ids(owner))

    def download(self, remote: Path, local: Path) -> None:
        _copy_private(remote, local)

    def upload(self, local: Path, remote: Path) -> None:
        _copy_private(local, remote)

    def symlink(self, link: Path, target: Path) -> None:
        temporary = link.with_name(f".{link.name}.djship-tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)

    def readlink(self, link: Path) -> Path | None:
        return Path(os.readlink(link)) if link.is_symlink() else None

    def listdir(self, path: Path) -> list[str] | None:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stream(
        self, argv: Sequence[str | Path], on_line: Callable[[str], None], *, user: str | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> int:
        argv = [str(part) for part in argv]
        if user and user != pwd.getpwuid(os.getuid()).pw_name:
            argv = ["runuser", "-u", user, "--", *argv]
        process = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        with process:
            for line in process.stdout:
                on_line(line.rstrip("\n"))
        return process.returncode

    def interactive(self, argv: Sequence[str | Path], *, user: str | None = None, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> int:
        """Run argv on this terminal (its input, output and signals); its exit code."""
        argv = [str(part) for part in argv]
        if user and user != pwd.getpwuid(os.getuid()).pw_name:
            argv = ["runuser", "-u", user, "--", *argv]
        return subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}).returncode

    def close(self) -> None:
        """Nothing to close: there is no connection to this machine."""
