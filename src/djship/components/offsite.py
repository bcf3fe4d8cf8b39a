"""Backups kept off the db host: the backup host of servers.backup, to which the db host sends each backup over SFTP.

The backup host keeps the backups in its `<root>/backups`, owned by an SFTP-only system user ([users] backup) whose one
authorized key, made once on the control machine, may do SFTP and nothing else, from the db host only. djship's agent
on the db host takes each backup there (djship.ops.store) and sends it with OpenSSH's `sftp` (djship.ops.sending), verifying the backup
host's SSH host key as djship itself verified it: into `.<name>.partial`, renamed when complete, then removed from the
db host. Nothing on the db host can read back, change or delete a backup except through that SFTP account, and the
backup host holds no credential of the db host at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from djship import render
from djship.components import accounts
from djship.components.media import Access, key_access
from djship.connectors import Connector
from djship.plan import BackupTarget, Plan

if TYPE_CHECKING:
    from djship.topology import Host, Topology

def _copies(topology: Topology) -> list[tuple[Host, Path]]:
    return [(host, host.plan.paths.backup_key) for host in topology.holding("db")]


def read_access(topology: Topology) -> Access | None:
    """What the db host sends its backups with, as it is."""
    return key_access(topology, "backup", topology.control.backup_key, _copies(topology), make=False)


def ensure_access(topology: Topology) -> Access | None:
    return key_access(topology, "backup", topology.control.backup_key, _copies(topology), make=True)


def authorized_keys(target: BackupTarget, public_key: str) -> str:
    """The backup host's SFTP user accepts the db host's key for SFTP only (no shell, no forwarding), from it only."""
    return f'restrict,command="internal-sftp",from="{target.sender}" {public_key} {target.user}\n'


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
    accounts.ensure_sftp_user(connector, target.user, plan.paths.backup_home, "the backup host")
    connector.makedirs(plan.paths.backup_authorized_keys.parent, mode=0o755)
    connector.makedirs(target.dir, mode=0o700, owner=target.user)
