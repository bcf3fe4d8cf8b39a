"""System users djship makes on a host (useradd, usermod)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from djship.connectors import Connector, Result
from djship.errors import DjshipError

LOCK_RETRIES = 20
LOCK_WAIT = 0.5


def change_users(connector: Connector, argv: Sequence[str]) -> Result:
    """Run useradd or usermod, again while another one holds the lock of /etc/passwd: shadow's tools give up at once
    ("cannot lock /etc/passwd; try again later"), and hosts that share the file may run several at a time."""
    for _ in range(LOCK_RETRIES):
        result = connector.run(argv)
        if result.ok or "cannot lock" not in result.stderr:
            return result
        time.sleep(LOCK_WAIT)
    return result


def ensure_sftp_user(connector: Connector, user: str, home: Path, where: str) -> None:
    """A system user that logs in with one key only: no password ("*", not locked "!", which sshd refuses without
    PAM), no shell, its home (root's) holding the authorized key."""
    entry = connector.run(["getent", "passwd", user])
    if entry.ok and entry.stdout.strip().split(":")[5] == str(home):
        return
    argv = ["usermod", "--home", str(home), user] if entry.ok else [
        "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home), "--password", "*",
        "--shell", "/usr/sbin/nologin", user]
    result = change_users(connector, argv)
    if not result.ok:
        raise DjshipError(f"cannot make {where}'s user {user}: {result.stderr.strip()}")
