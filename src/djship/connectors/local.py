"""The connector for this machine: subprocesses and files, as the invoking user or (when root) as another."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Sequence

from djship.connectors import Result
from djship.deploy.lock import exclusive
from djship.errors import DjshipError


def _ids(owner: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise DjshipError(f"user {owner!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise DjshipError(f"group {group!r} does not exist") from None


def _open_directory(path: Path) -> int:
    """path opened as a directory, refusing a link in its place (one planted by a less-privileged user)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symlink" if path.is_symlink() else "not a directory"
            raise DjshipError(
                f"{path} is {what}, where djship keeps a directory; remove it and run djship again"
            ) from None
        raise
def _copy_private(source: Path, target: Path) -> None:
    try:
        with source.open("rb") as reader, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
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
        """Never through a link: the temporary file is created anew (O_EXCL|O_NOFOLLOW) in a directory opened without
        following a link, its mode and owner are set on the open file, and rename replaces whatever path was."""
        data = content.encode() if isinstance(content, str) else content
        path.parent.mkdir(parents=True, exist_ok=True)
        directory = _open_directory(path.parent)
        try:
            if self._unchanged(directory, path.name, data, mode, owner):
                return False
            temporary = f".{path.name}.djship-tmp"
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=directory)
            except FileExistsError:
                raise DjshipError(f"{path.parent / temporary} appeared while djship was writing {path}; something "
                                  "else writes in that directory, stop it and run djship again") from None
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if owner:
                    os.fchown(handle.fileno(), *_ids(owner))
                os.fchmod(handle.fileno(), mode)
            os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        finally:
            os.close(directory)
        return True

    @staticmethod
    def _unchanged(directory: int, name: str, data: bytes, mode: int, owner: str | None) -> bool:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=directory)
        except OSError:  # missing, or a link (ELOOP): either way it is written anew
            return False
        with os.fdopen(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            return (stat.S_ISREG(status.st_mode) and (status.st_mode & 0o7777) == mode
                    and (owner is None or status.st_uid == _ids(owner)[0]) and handle.read() == data)

    def get(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None, group: str | None = None) -> None:
        """mkdir -p; then the mode (and owner, group) of the last directory, set on it opened without following a
        link."""
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        directory = _open_directory(path)
        try:
            os.fchmod(directory, mode)
            if owner:
                uid, gid = _ids(owner)
                os.fchown(directory, uid, _group_id(group) if group else gid)
        finally:
            os.close(directory)

    def download(self, remote: Path, local: Path) -> None:
        _copy_private(remote, local)

    def upload(self, local: Path, remote: Path) -> None:
        _copy_private(local, remote)

    def symlink(self, link: Path, target: Path) -> None:
        directory = _open_directory(link.parent)
        try:
            temporary = f".{link.name}.djship-tmp"
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass
            os.symlink(target, temporary, dir_fd=directory)
            os.replace(temporary, link.name, src_dir_fd=directory, dst_dir_fd=directory)
        finally:
            os.close(directory)

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

    def lock(self, path: Path, operation: str, busy: str) -> AbstractContextManager[None]:
        return exclusive(path, operation, busy)

    def close(self) -> None:
        """Nothing to close: there is no connection to this machine."""
