"""Sending a backup from the db host to the backup host, as djship's agent does there: OpenSSH's `sftp` as the
backup host's SFTP-only user (see djship.components.offsite), with only the commands below.
"""

from __future__ import annotations

import re
from pathlib import Path

from djship.connectors import Connector
from djship.errors import DjshipError
from djship.ops import archive
from djship.plan import BackupTarget, Plan

SEND_TIMEOUT = 3600


def sftp_argv(plan: Plan, target: BackupTarget) -> list[str]:
    """OpenSSH's sftp to the backup host, reading its commands from stdin; no prompt, only the known host key."""
    return ["sftp", "-b", "-", "-i", str(plan.paths.backup_key), "-P", str(target.ssh_port),
            "-o", f"UserKnownHostsFile={plan.paths.backup_known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20",
            f"{target.user}@{target.address}"]


def send_commands(backup: Path, files: list[str], target: BackupTarget) -> str:
    """sftp commands that copy a complete local backup directory to the backup host, visible under its name only
    once every file is there."""
    partial, final = target.dir / f".{backup.name}.partial", target.dir / backup.name
    lines = [f"mkdir {_sftp_word(partial)}", f"chmod 700 {_sftp_word(partial)}"]
    lines += [f"put {_sftp_word(backup / name)} {_sftp_word(partial / name)}" for name in files]
    lines += [f"chmod 600 {_sftp_word(partial / name)}" for name in files]
    lines.append(f"rename {_sftp_word(partial)} {_sftp_word(final)}")
    return "\n".join(lines) + "\n"


def remove_commands(directory: Path, names: dict[str, list[str]]) -> str:
    """sftp commands that remove backup directories (name -> its files), each file first (sftp has no rm -r)."""
    lines = []
    for name, files in names.items():
        lines += [f"-rm {_sftp_word(directory / name / file)}" for file in files]
        lines.append(f"-rmdir {_sftp_word(directory / name)}")
    return "\n".join(lines) + "\n"


def _sftp_word(path: Path) -> str:
    """A path as one word of an sftp command: double-quoted, with \\ and " escaped (sftp's own quoting)."""
    text = str(path)
    if "\n" in text:
        raise DjshipError(f"{text!r}: a path with a line break cannot go to sftp")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_listing(output: str) -> list[str]:
    """The names `ls -1a` printed in sftp's batch output (its echoed commands start with "sftp>")."""
    names = []
    for line in output.splitlines():
        name = line.strip().rsplit("/", 1)[-1]
        if line.startswith("sftp>") or name in ("", ".", ".."):
            continue
        names.append(name)
    return names


class Sender:
    """The backup host, as the db host's agent reaches it."""

    def __init__(self, plan: Plan, connector: Connector):
        self.plan, self.connector = plan, connector
        self.target = plan.backup.target

    def _sftp(self, commands: str, what: str, timeout: float = 120) -> str:
        result = self.connector.run(sftp_argv(self.plan, self.target), input=commands, timeout=timeout)
        if not result.ok:
            reason = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
            raise DjshipError(f"{what} on the backup host {self.target.host} failed: {reason[-1]}")
        return result.stdout

    def names(self) -> list[str]:
        return parse_listing(self._sftp(f"ls -1a {_sftp_word(self.target.dir)}\n", "listing the backups"))

    def files_of(self, name: str) -> list[str]:
        return parse_listing(self._sftp(f"ls -1a {_sftp_word(self.target.dir / name)}\n", f"listing backup {name}"))

    def remove(self, names: list[str]) -> None:
        if names:
            self._sftp(remove_commands(self.target.dir, {name: self.files_of(name) for name in names}),
                       f"removing {', '.join(names)}")

    def remove_unfinished(self) -> None:
        self.remove([name for name in self.names() if re.fullmatch(r"\..+\.partial", name)])

    def send(self, backup: Path, files: list[str]) -> None:
        self._sftp(send_commands(backup, files, self.target), f"sending backup {backup.name}", SEND_TIMEOUT)
        self.connector.run(archive.remove_argv(backup))
