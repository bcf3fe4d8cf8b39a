"""Backups kept off the db host: the backup host of servers.backup, to which the db host sends each backup over SFTP.

The backup host keeps the backups in its `<root>/backups`, owned by an SFTP-only system user (BACKUP_USER) whose one
authorized key, made once on the control machine, may do SFTP and nothing else, from the db host only. djship's agent
on the db host takes each backup there (djship.ops.store) and sends it with OpenSSH's `sftp` (djship.ops.sending), verifying the backup
host's SSH host key as djship itself verified it: into `.<name>.partial`, renamed when complete, then removed from the
db host. Nothing on the db host can read back, change or delete a backup except through that SFTP account, and the
backup host holds no credential of the db host at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from djship import render
from djship.components import accounts
from djship.components.media import Access, new_private_key
from djship.connectors import Connector
from djship.connectors.local import LocalConnector
from djship.errors import DjshipError
from djship.plan import BACKUP_USER, BackupTarget, Plan

if TYPE_CHECKING:
    from djship.topology import Topology

def _kept_key(topology: Topology) -> str | None:
    """The key kept here, else the copy the db host holds (the control machine's .djship/ may be lost)."""
    kept = LocalConnector().get(topology.control.backup_key)
    db = topology.holding("db")[0]
    if kept is None and db.name not in topology.unreachable:
        kept = db.connector.get(db.plan.paths.backup_key)
    return kept.decode() if kept else None


def read_access(topology: Topology) -> Access | None:
    holders = topology.holding("backup")
    key = _kept_key(topology) if holders else None
    return Access(key, holders[0].connector.host_key()) if key else None


def ensure_access(topology: Topology) -> Access | None:
    """The access, the key made here once; None without a backup host."""
    holders = topology.holding("backup")
    if not holders:
        return None
    access = Access(_kept_key(topology) or new_private_key(), holders[0].connector.host_key())
    local = LocalConnector()
    local.makedirs(topology.control.secrets, mode=0o711)
    local.put(topology.control.backup_key, access.private_key, mode=0o600)
    return access


def authorized_keys(target: BackupTarget, public_key: str) -> str:
    """The backup host's SFTP user accepts the db host's key for SFTP only (no shell, no forwarding), from it only."""
    return f'restrict,command="internal-sftp",from="{target.sender}" {public_key} {BACKUP_USER}\n'


def desired_files(plan: Plan, access: Access | None) -> list[render.ConfigFile]:
    """The backup host's authorized key; on the db host, the key and the backup host's known host key."""
    target = plan.backup.target
    if target is None or access is None:
        return []
    if plan.holds("backup"):
        return [render.ConfigFile(plan.paths.backup_authorized_keys, authorized_keys(target, access.public_key), ())]
    if plan.holds("db"):
        return [render.ConfigFile(plan.paths.backup_key, access.private_key, ()),
                render.ConfigFile(plan.paths.backup_known_hosts, f"{target.known_hosts_name} {access.host_key}\n", ())]
    return []


def prepare(plan: Plan, connector: Connector) -> None:
    """On the backup host: its SFTP user, the home holding the key (root's) and the directory the backups go to."""
    target = plan.backup.target
    if target is None or not plan.holds("backup"):
        return
    home = str(plan.paths.backup_home)
    entry = connector.run(["getent", "passwd", BACKUP_USER])
    if not entry.ok or entry.stdout.strip().split(":")[5] != home:
        argv = ["usermod", "--home", home, BACKUP_USER] if entry.ok else [
            "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home, "--password", "*",
            "--shell", "/usr/sbin/nologin", BACKUP_USER]
        result = accounts.change_users(connector, argv)
        if not result.ok:
            raise DjshipError(f"cannot make the backup host's user {BACKUP_USER}: {result.stderr.strip()}")
    connector.makedirs(plan.paths.backup_authorized_keys.parent, mode=0o755)
    connector.makedirs(target.dir, mode=0o700, owner=BACKUP_USER)
