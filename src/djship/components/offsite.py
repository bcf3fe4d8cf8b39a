"""Backups kept off the db host: the backup host of servers.backup, to which the db host sends each backup over SFTP.

The backup host keeps the backups in its `<root>/backups`, owned by an SFTP-only system user ([users] backup) whose one
authorized key, made once on the control machine, may do SFTP and nothing else, from the db host only. djship's agent
on the db host takes each backup there (djship.ops.store) and sends it with OpenSSH's `sftp` (djship.ops.sending), verifying the backup
host's SSH host key as djship itself verified it: into `.<name>.partial`, renamed when complete, then removed from the
db host. Nothing on the db host can read back, change or delete a backup except through that SFTP account, and the
backup host holds no credential of the db host at all.

With backup.archive, pgBackRest's repository is on the backup host too, in its `<root>/archive` (the SFTP user's): the
db host mounts it with sshfs as that same SFTP user, at the repo1-path of its pgbackrest.conf, for the db user alone
(ARCHIVE_MOUNT_PROGRAM, started before PostgreSQL). With a standby, its host mounts the archive the same way, so that
from the moment a failover or switchover promotes it, its archive_command pushes into the same repository. Debian 12's
pgBackRest (2.45) has no SFTP repository of its own; over the mount its archive-push, backup, expire, info, verify and
restore work unchanged. While the mount is down the mount point is root's: archive_command fails, and PostgreSQL keeps
the WAL segment and pushes it again later.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from djship import render
from djship.components import accounts
from djship.components.media import Access, ensure_mounted, is_mount, key_access
from djship.connectors import Connector
from djship.plan import ARCHIVE_MOUNT_PROGRAM, BackupTarget, Plan
from djship.progress import Reporter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from djship.changes import Changes
    from djship.topology import Host, Topology


def _copies(topology: Topology) -> list[tuple[Host, Path]]:
    return [(host, host.plan.paths.backup_key) for host in topology.holding("db") + topology.holding("standby")]


def read_access(topology: Topology) -> Access | None:
    """What the db host sends its backups with, as it is."""
    return key_access(topology, "backup", topology.control.backup_key, _copies(topology), make=False)


def ensure_access(topology: Topology) -> Access | None:
    return key_access(topology, "backup", topology.control.backup_key, _copies(topology), make=True)


def authorized_keys(target: BackupTarget, public_key: str) -> str:
    """The backup host's SFTP user accepts the db hosts' key for SFTP only (no shell, no forwarding), from them only."""
    return f'restrict,command="internal-sftp",from="{",".join(target.senders)}" {public_key} {target.user}\n'


def desired_files(plan: Plan, access: Access | None) -> list[render.ConfigFile]:
    """The backup host's authorized key; on the db host (and on the standby's, which mounts the archive), the key and
    the backup host's known host key."""
    target = plan.backup.target
    if target is None or access is None:
        return []
    if plan.holds("backup"):
        return [render.ConfigFile(plan.paths.backup_authorized_keys, authorized_keys(target, access.public_key), ())]
    if plan.holds("db") or plan.mounts_archive:
        mount = (ARCHIVE_MOUNT_PROGRAM,) if plan.mounts_archive else ()
        return [render.ConfigFile(plan.paths.backup_key, access.private_key, mount),
                render.ConfigFile(plan.paths.backup_known_hosts, f"{target.known_hosts_name} {access.host_key}\n",
                                  mount)]
    return []


def prepare(plan: Plan, connector: Connector) -> None:
    """On the backup host: its SFTP user, the home holding the key (root's) and the directory the backups go to."""
    target = plan.backup.target
    if target is None or not plan.holds("backup"):
        return
    accounts.ensure_sftp_user(connector, target.user, plan.paths.backup_home, "the backup host")
    connector.makedirs(plan.paths.backup_authorized_keys.parent, mode=0o755)
    connector.makedirs(target.dir, mode=0o700, owner=target.user)
    if plan.backup.archive is not None:
        connector.makedirs(plan.backup.archive.store, mode=0o700, owner=target.user)


def prepare_archive_mount(plan: Plan, connector: Connector) -> None:
    """On the db host: the mount point of the archive, root's (the db user cannot write there) until the mount
    covers it."""
    if plan.mounts_archive and not is_mount(connector, plan.backup.archive.repo):
        connector.makedirs(plan.backup.archive.repo, mode=0o755)


def archive_mounted(host: Host) -> bool:
    """The archive is mounted on the db host and its user can enter it."""
    repo = host.plan.backup.archive.repo
    return is_mount(host.connector, repo) and host.connector.run(["test", "-x", str(repo)],
                                                                 user=host.plan.user_of("db")).ok


def mount_archive(hosts: Mapping[str, Host], changes: Changes, reconfigured: Mapping[str, set[str]],
                  reporter: Reporter) -> None:
    """Start (or restart) the db host's archive mount and wait for it: before PostgreSQL archives into it."""
    ensure_mounted({name: host for name, host in hosts.items() if host.plan.mounts_archive}, ARCHIVE_MOUNT_PROGRAM,
                   changes, reconfigured, reporter, archive_mounted,
                   lambda due: f"Mounting the archive of the backup host on {', '.join(due)} (sshfs)",
                   lambda host: f"the archive mounted at {host.plan.backup.archive.repo} on {host.name}")
