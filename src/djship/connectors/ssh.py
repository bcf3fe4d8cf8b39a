"""The connector for a remote host: the same run/put/get as the local one, over SSH (paramiko, as Fabric uses).

The host's key is always verified, against a known_hosts file or a key pinned in the config; an unknown or
changed key is refused, never accepted silently.
"""

from __future__ import annotations

import base64
import os
import select
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import paramiko
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE

from djship.connectors import Result
from djship.errors import DjshipError

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
# makedirs on the host: chmod and chown act on the directory opened with O_NOFOLLOW, never through a link in its
# place (which chmod and chown on a path would follow).
_MAKEDIRS = """
import grp, os, pwd, sys
path, mode, owner, group = sys.argv[1], int(sys.argv[2], 8), sys.argv[3], sys.argv[4]
os.makedirs(path, exist_ok=True)
try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
except NotADirectoryError:
    sys.exit(f"{path} is a symlink or not a directory, where djship keeps a directory; remove it and run djship again")
os.fchmod(fd, mode)
if owner:
    entry = pwd.getpwnam(owner)
    os.fchown(fd, entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid)
"""


# lock(): flock(1) on descriptor 9 of the lock file, held by `cat` until this side closes the channel's input (or the
# connection ends); when another process holds it, the file's content (who) and exit code 75.
_LOCK = ('umask 077; exec 9<>"$1" || exit 1; flock -n 9 || { cat "$1"; exit 75; }; printf "%s\\n" "$2" > "$1"; '
         'echo locked; exec cat >/dev/null')
LOCK_BUSY = 75


# How many times a user's uid and gid are asked for before djship gives up (see SSHConnector._look_up).
LOOKUP_ATTEMPTS = 3


@dataclass(frozen=True)
class SSHTarget:
    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    """None: the SSH agent and ~/.ssh/id_*, as ssh itself would try."""
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    host_key: str | None = None
    """A pinned public key, "ssh-ed25519 AAAA...": trusted instead of known_hosts for this host."""
    connect_timeout: float = 10

    @property
    def endpoint(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


def remote_command(
    argv: Sequence[str | Path],
    *,
    login_user: str,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """The shell command line that runs argv on the remote host as `user` (default: the login user)."""
    words = [shlex.quote(str(part)) for part in argv]
    if env:
        words = ["env", *(shlex.quote(f"{name}={value}") for name, value in env.items()), *words]
    if user and user != login_user:
        switch = ["runuser", "-u", user, "--"] if login_user == "root" else ["sudo", "-n", "-u", user, "--"]
        words = [*(shlex.quote(word) for word in switch), *words]
    command = " ".join(words)
    return f"cd {shlex.quote(str(cwd))} && {command}" if cwd else command


def _one_sftp_operation_at_a_time(method):
    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        with self._sftp_lock:
            return method(self, *args, **kwargs)

    return serialized


class SSHConnector:
    """One SSH connection to one host, opened on first use and shared by every call (also from several threads)."""

    def __init__(self, target: SSHTarget):
        self.target = target
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        # paramiko's SFTP client reads any response on behalf of whichever thread waits: two threads' requests at once
        # can lose one's response, and that thread then waits forever. One SFTP operation at a time, per host.
        self._sftp_lock = threading.RLock()
        self._owners: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> SSHConnector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client, self._sftp = None, None

    def _trusted_keys(self, client: paramiko.SSHClient) -> None:
        target = self.target
        if target.host_key:
            kind, _, data = target.host_key.strip().partition(" ")
            try:
                key = paramiko.PKey.from_type_string(kind, base64.b64decode(data.split()[0]))
            except (ValueError, IndexError, paramiko.SSHException):
                raise DjshipError(f"the pinned host key for {target.address} is not an SSH public key "
                                  "(expected e.g. \"ssh-ed25519 AAAA...\")") from None
            client.get_host_keys().add(target.endpoint, kind, key)
            return
        known_hosts = target.known_hosts.expanduser()
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))

    def _connection(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
                return self._client
            self._client, self._sftp = self._connect(), None
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        target = self.target
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._trusted_keys(client)
        where = f"{target.address}:{target.port}"
        try:
            sock = socket.create_connection((target.address, target.port), timeout=target.connect_timeout)
            # Without it each command's channel-open waited ~40 ms on the server's delayed ACK (Nagle's algorithm
            # holds a small packet while an earlier one is unacknowledged): 44 ms of the 48 ms a `true` took.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                target.address, target.port, username=target.user, sock=sock,
                key_filename=str(target.key_file.expanduser()) if target.key_file else None,
                look_for_keys=target.key_file is None, allow_agent=target.key_file is None,
                timeout=target.connect_timeout, banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise DjshipError(
                f"the SSH host key of {where} does not match the one trusted for it: refusing to connect (this is "
                "what a man-in-the-middle looks like); if the host was reinstalled, update its known_hosts line or "
                "pinned host_key"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            key = target.key_file or "your SSH agent and ~/.ssh keys"
            raise DjshipError(
                f"SSH login to {where} as {target.user} was refused; add the public key of {key} to "
                f"~{target.user}/.ssh/authorized_keys on that host"
            ) from None
        except paramiko.SSHException as error:
            client.close()
            if "not found in known_hosts" in str(error):
                raise DjshipError(
                    f"the SSH host key of {where} is unknown, so djship will not connect; check it and add it with "
                    f"`ssh-keyscan -p {target.port} {target.address} >> {target.known_hosts}`, or pin it as host_key"
                ) from None
            raise DjshipError(f"SSH to {where} failed: {error}") from None
        except (OSError, socket.timeout) as error:
            client.close()
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise DjshipError(f"cannot reach {where} over SSH ({reason}); is the host up and sshd running?") from None
        return client

    def host_key(self) -> str:
        """The host's SSH public key as verified when djship logged in, "ssh-ed25519 AAAA..."."""
        key = self._connection().get_transport().get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._connection()
        with self._lock:
            if self._sftp is None:
                self._sftp = client.open_sftp()
            return self._sftp

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        command = remote_command(argv, login_user=self.target.user, user=user, env=env, cwd=cwd)
        transport = self._connection().get_transport()
        try:
            channel = transport.open_session(timeout=self.target.connect_timeout)
        except paramiko.SSHException as error:
            raise DjshipError(f"SSH to {self.target.address}:{self.target.port} failed: {error}") from None
        with channel:
            channel.exec_command(command)
            if input is not None:
                channel.sendall(input.encode())
            channel.shutdown_write()
            stdout, stderr = _collect(channel, timeout, command)
            returncode = channel.recv_exit_status()
        return Result(tuple(str(part) for part in argv), returncode, stdout, stderr)

    def stream(
        self, argv: Sequence[str | Path], on_line: Callable[[str], None], *, user: str | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> int:
        """Run argv, handing each line of its output (stdout and stderr) to on_line as it arrives (e.g. `tail -F`);
        its exit code."""
        transport = self._connection().get_transport()
        channel = transport.open_session(timeout=self.target.connect_timeout)
        with channel:
            channel.set_combine_stderr(True)
            channel.exec_command(remote_command(argv, login_user=self.target.user, user=user, env=env, cwd=cwd))
            pending = b""
            while data := channel.recv(65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace"))
            if pending:
                on_line(pending.decode(errors="replace"))
            return channel.recv_exit_status()

    @contextmanager
    def lock(self, path: Path, operation: str, busy: str) -> Iterator[None]:
        holder = f"{operation} by pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
        transport = self._connection().get_transport()
        channel = transport.open_session(timeout=self.target.connect_timeout)
        with channel:
            channel.exec_command(remote_command(["sh", "-c", _LOCK, "lock", str(path), holder],
                                                login_user=self.target.user))
            answer = b""
            while not answer.endswith(b"\n") and (data := channel.recv(4096)):
                answer += data
            if answer != b"locked\n":
                status = channel.recv_exit_status()
                if status == LOCK_BUSY:
                    who = answer.decode(errors="replace").strip() or "another process"
                    raise DjshipError(f"{busy} ({who}); wait for it to finish")
                error = channel.recv_stderr(4096).decode(errors="replace").strip()
                raise DjshipError(f"cannot lock {path} on {self.target.address}: {error or f'exit code {status}'}")
            try:
                yield
            finally:
                channel.shutdown_write()
                channel.recv_exit_status()

    @_one_sftp_operation_at_a_time
    def put(self, path: Path, content: str | bytes, *, mode: int = 0o644, owner: str | None = None) -> bool:
        """As the local connector: the temporary file is created anew with mode 0600 (never through a link, never
        readable by others for a moment), its owner and mode are set on the open handle, then it is renamed."""
        data = content.encode() if isinstance(content, str) else content
        sftp = self._sftp_client()
        remote = PurePosixPath(path)
        try:
            status = sftp.lstat(str(remote))
            unchanged = stat.S_ISREG(status.st_mode) and (status.st_mode & 0o7777) == mode and (
                owner is None or status.st_uid == self._ids(owner)[0]) and self.get(path) == data
        except FileNotFoundError:
            unchanged = False
        if unchanged:
            return False
        if not self._is_directory(remote.parent):
            self.makedirs(Path(remote.parent), keep_mode=True)
        temporary = str(remote.with_name(f".{remote.name}.djship-tmp"))
        try:
            sftp.remove(temporary)  # unlink: a planted link goes, its target stays as it was
        except FileNotFoundError:
            pass
        ids = self._ids(owner) if owner else None
        with self._create_private(temporary) as handle:
            handle.set_pipelined(True)  # no round trip per 32 KB block (wheels are megabytes)
            handle.write(data)
            if ids:
                handle.chown(*ids)
            handle.chmod(mode)
        sftp.posix_rename(temporary, str(remote))
        return True

    def _create_private(self, path: str) -> paramiko.SFTPFile:
        """path opened for writing, created by this call (O_CREAT|O_EXCL: never an existing file or link) with mode
        0600. paramiko's open() sends no mode, so the server would create it 0666 & umask, readable by others until
        a chmod."""
        attributes = paramiko.SFTPAttributes()
        attributes.st_mode = 0o600
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
        sftp = self._sftp_client()
        try:
            kind, message = sftp._request(CMD_OPEN, path, flags, attributes)
        except OSError as error:
            raise DjshipError(
                f"cannot create {path} on {self.target.address} ({error}); if it appeared while djship was writing, "
                "something else writes in that directory: stop it and run djship again"
            ) from None
        if kind != CMD_HANDLE:
            raise DjshipError(f"cannot create {path} on {self.target.address}: the SFTP server sent no file handle")
        return paramiko.SFTPFile(sftp, message.get_binary(), "wb")

    def _ids(self, owner: str) -> tuple[int, int]:
        """The uid and gid of owner on the host (chown on an SFTP handle takes numbers)."""
        if owner not in self._owners:
            self._owners[owner] = self._look_up(owner)
        return self._owners[owner]

    def _look_up(self, owner: str) -> tuple[int, int]:
        """Asked again when the answer is not two numbers: a busy test machine once saw `id` exit 0 with no output."""
        words: list[str] = []
        for _ in range(LOOKUP_ATTEMPTS):
            words = [self._checked(["id", option, "--", owner], f"looking up the user {owner}").stdout.strip()
                     for option in ("-u", "-g")]
            if all(word.isdigit() for word in words):
                return int(words[0]), int(words[1])
        raise DjshipError(f"cannot look up the user {owner} on {self.target.address}: `id -u`/`id -g` answered "
                          f"{words!r}; run djship again")

    @_one_sftp_operation_at_a_time
    def get(self, path: Path) -> bytes | None:
        sftp = self._sftp_client()
        try:
            with sftp.open(str(PurePosixPath(path)), "rb") as handle:
                handle.prefetch()
                return handle.read()
        except FileNotFoundError:
            return None

    @_one_sftp_operation_at_a_time
    def download(self, remote: Path, local: Path) -> None:
        try:
            with os.fdopen(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as writer:
                os.fchmod(writer.fileno(), 0o600)
                # Prefetched (no round trip per 32 KB block), at most 64 requests in flight rather than the whole file.
                self._sftp_client().getfo(str(PurePosixPath(remote)), writer, max_concurrent_prefetch_requests=64)
        except OSError as error:
            raise DjshipError(f"cannot copy {remote} from {self.target.address} to {local}: "
                              f"{error.strerror or error}") from None

    @_one_sftp_operation_at_a_time
    def upload(self, local: Path, remote: Path) -> None:
        sftp = self._sftp_client()
        path = str(PurePosixPath(remote))
        try:
            with local.open("rb") as reader, sftp.open(path, "wb") as writer:
                sftp.chmod(path, 0o600)  # before any byte is written
                writer.set_pipelined(True)
                shutil.copyfileobj(reader, writer, 1 << 20)
            if sftp.stat(path).st_size != local.stat().st_size:
                raise DjshipError(f"copying {local} to {path} on {self.target.address} was cut short")
        except OSError as error:
            raise DjshipError(f"cannot copy {local} to {path} on {self.target.address}: "
                              f"{error.strerror or error}") from None

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None, group: str | None = None,
                 keep_mode: bool = False) -> None:
        """mkdir -p; then, unless keep_mode, the mode (and owner, group) of the last directory, set on it opened
        without following a link, as the local connector."""
        if keep_mode:
            self._checked(["mkdir", "-p", "--", str(path)], f"mkdir {path}")
            return
        if group is None and self._is_directory(PurePosixPath(path), mode, self._ids(owner) if owner else None):
            return  # as asked already: no process started on the host (a `python3 -c` costs more than an SFTP stat)
        self._checked(["python3", "-c", _MAKEDIRS, str(path), f"{mode:o}", owner or "", group or ""], f"mkdir {path}")

    @_one_sftp_operation_at_a_time
    def _is_directory(self, path: PurePosixPath, mode: int | None = None, ids: tuple[int, int] | None = None) -> bool:
        """Whether path is a directory itself (not a link to one), with that mode and (uid, gid) where given."""
        try:
            status = self._sftp_client().lstat(str(path))
        except OSError:
            return False
        if not stat.S_ISDIR(status.st_mode) or (mode is not None and status.st_mode & 0o7777 != mode):
            return False
        return ids is None or ids == (status.st_uid, status.st_gid)

    def symlink(self, link: Path, target: Path) -> None:
        temporary = PurePosixPath(link).with_name(f".{PurePosixPath(link).name}.djship-tmp")
        script = 'ln -sfn -- "$1" "$2" && mv -Tf -- "$2" "$3"'
        self._checked(["sh", "-c", script, "symlink", str(target), str(temporary), str(link)], f"ln -s {target} {link}")

    @_one_sftp_operation_at_a_time
    def readlink(self, link: Path) -> Path | None:
        try:
            return Path(self._sftp_client().readlink(str(PurePosixPath(link))))
        except OSError:
            return None

    def interactive(self, argv: Sequence[str | Path], *, user: str | None = None, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> int:
        """Run argv on the host in a terminal of its own, wired to this one (OpenSSH's `ssh -t`), with the same key
        and host-key check as every other connection; its exit code."""
        target = self.target
        with tempfile.NamedTemporaryFile("w", suffix=".known_hosts") as pinned:
            known_hosts = target.known_hosts.expanduser()
            if target.host_key:
                pinned.write(f"{target.endpoint} {target.host_key}\n")
                pinned.flush()
                known_hosts = Path(pinned.name)
            ssh = ["ssh", "-q", "-t", "-p", str(target.port), "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                   "-o", f'UserKnownHostsFile="{known_hosts}"', "-o", f"ConnectTimeout={int(target.connect_timeout)}",
                   *(["-i", str(target.key_file)] if target.key_file else []), "-l", target.user, target.address, "--",
                   remote_command(argv, login_user=target.user, user=user, env=env, cwd=cwd)]
            try:
                return subprocess.run(ssh).returncode
            except FileNotFoundError:
                raise DjshipError("ssh is not installed here; install it with: apt-get install -y openssh-client") from None

    @_one_sftp_operation_at_a_time
    def listdir(self, path: Path) -> list[str] | None:
        try:
            return sorted(self._sftp_client().listdir(str(PurePosixPath(path))))
        except OSError:
            return None

    def _checked(self, argv: list[str], what: str) -> Result:
        result = self.run(argv)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
            raise DjshipError(f"{what} on {self.target.address} failed: {detail[-1]}")
        return result


def _collect(channel: paramiko.Channel, timeout: float | None, command: str) -> tuple[str, str]:
    """Read stdout and stderr together (reading one to its end first can stall a command that fills the other)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stdout, stderr = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            stdout += channel.recv(65536)
        elif channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        elif channel.exit_status_ready() and channel.eof_received:
            break
        else:
            if deadline is not None and time.monotonic() > deadline:
                channel.close()
                raise DjshipError(f"{command[:80]} did not finish within {timeout:.0f}s")
            select.select([channel], [], [], 0.1)
    return stdout.decode(errors="replace"), stderr.decode(errors="replace")
