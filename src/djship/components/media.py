"""Uploads shared by every app host: one directory on the media host, mounted by each app host over SFTP (sshfs).

The media host keeps the uploads in its `uploads` directory, owned by an SFTP-only system user ([users] media) whose
one authorized key, made once on the control machine, may do SFTP and nothing else, from the app hosts only. Each app
host mounts that directory at its own `uploads` with sshfs, a program under its supervisord started before its app
servers, verifying the media host's SSH host key as djship itself verified it. Until the mount is up the directory
beneath it is root's: an app server cannot write an upload where the other hosts would never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from djship import render
from djship.components import accounts
from djship.connectors import Connector, on_each
from djship.connectors.local import LocalConnector
from djship.plan import MEDIA_PROGRAM, Paths, Plan
from djship.progress import Reporter
from djship.waiting import wait_until

if TYPE_CHECKING:
    from djship.changes import Changes
    from djship.topology import Host, Topology

MOUNT_TIMEOUT = 30


@dataclass(frozen=True)
class Access:
    """What the app hosts need to mount the media host's uploads."""

    private_key: str
    """OpenSSH private key, installed on each app host (0600, root)."""
    host_key: str
    """The media host's SSH host key, "ssh-ed25519 AAAA...", as djship verified it when it logged in."""

    @property
    def public_key(self) -> str:
        key = serialization.load_ssh_private_key(self.private_key.encode(), password=None)
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def new_private_key() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


def _kept_key(topology: Topology, control_key: Path, copies: Iterable[tuple[Host, Path]]) -> str | None:
    """The key kept here, else a copy a host holds (the control machine's .djship/ may be lost)."""
    kept = LocalConnector().get(control_key)
    for host, path in copies:
        if kept is None and host.name not in topology.unreachable:
            kept = host.connector.get(path)
    return kept.decode() if kept else None


def key_access(topology: Topology, role: str, control_key: Path, copies: Iterable[tuple[Host, Path]],
               make: bool) -> Access | None:
    """The access to the SFTP user of the host holding role (None without one): its key as kept here or on the hosts
    given; with make, the key made here the first time (a new key would only make every client reconnect) and kept
    here. Without make, None before the first `up` made it."""
    holders = topology.holding(role)
    key = _kept_key(topology, control_key, copies) if holders else None
    if not holders or (key is None and not make):
        return None
    access = Access(key or new_private_key(), holders[0].connector.host_key())
    if make:
        local = LocalConnector()
        local.makedirs(topology.control.secrets, mode=0o711)
        local.put(control_key, access.private_key, mode=0o600)
    return access


def _copies(topology: Topology) -> list[tuple[Host, Path]]:
    return [(host, host.plan.paths.media_key) for host in topology.running_code()]


def read_access(topology: Topology) -> Access | None:
    """What the app hosts mount the media host's uploads with, as it is."""
    return key_access(topology, "media", topology.control.media_key, _copies(topology), make=False)


def ensure_access(topology: Topology) -> Access | None:
    return key_access(topology, "media", topology.control.media_key, _copies(topology), make=True)


def desired_files(plan: Plan, access: Access | None) -> list[render.ConfigFile]:
    """The media host's authorized key; on an app host, the key and the known media host key sshfs reads."""
    if plan.media is None or access is None:
        return []
    files = []
    if plan.holds("media"):
        files.append(render.ConfigFile(plan.paths.media_authorized_keys,
                                       render.media_authorized_keys(plan.media, access.public_key), ()))
    if plan.runs_code:
        files.append(render.ConfigFile(plan.paths.media_key, access.private_key, (MEDIA_PROGRAM,)))
        files.append(render.ConfigFile(plan.paths.media_known_hosts, render.media_known_hosts(plan.media, access.host_key),
                                       (MEDIA_PROGRAM,)))
    return files


def prepare_media_dir(plan: Plan, connector: Connector) -> None:
    """The media directory: the host's own (one app host), the one the media host holds for every app host, or, on
    an app host that mounts it, the mount point, root's until the mount covers it."""
    paths = plan.paths
    if plan.media is None:
        connector.makedirs(plan.media_dir, mode=0o755, owner=plan.media_owner)
    elif plan.holds("media"):
        _ensure_media_user(plan, connector)
        connector.makedirs(paths.media_authorized_keys.parent, mode=0o755)
        connector.makedirs(paths.uploads, mode=0o755, owner=plan.media_owner)
        connector.makedirs(plan.media_dir, mode=0o755, owner=plan.media_owner)
    elif not _mounted(paths, connector):
        connector.makedirs(paths.uploads, mode=0o755)


def _ensure_media_user(plan: Plan, connector: Connector) -> None:
    accounts.ensure_sftp_user(connector, plan.media.user, plan.paths.media_home, "the media host")


def _mounted(paths: Paths, connector: Connector) -> bool:
    return is_mount(connector, paths.uploads)


def is_mount(connector: Connector, path: Path) -> bool:
    return connector.run(["mountpoint", "-q", str(path)]).ok


def mount(hosts: Mapping[str, Host], changes: Changes, reconfigured: Mapping[str, set[str]], reporter: Reporter) -> None:
    """Start (or, with a new key, host key or command, restart) each app host's mount and wait until the uploads are
    there: before any app server starts."""
    source = next(iter(hosts.values())).plan.media

    def mounted(host: Host) -> bool:
        plan = host.plan
        return _mounted(plan.paths, host.connector) and host.connector.run(["test", "-d", str(plan.media_dir)]).ok

    ensure_mounted(hosts, MEDIA_PROGRAM, changes, reconfigured, reporter, mounted,
                   lambda due: f"Mounting the uploads of {source.host} on {', '.join(due)} (sshfs)",
                   lambda host: f"the uploads mounted at {host.plan.paths.uploads} on {host.name}")


def ensure_mounted(hosts: Mapping[str, Host], program: str, changes: Changes, reconfigured: Mapping[str, set[str]],
                   reporter: Reporter, mounted: Callable[[Host], bool], title: Callable[[list[str]], str],
                   waited: Callable[[Host], str]) -> None:
    """Start (or, with a new key, host key or command, restart) the supervised sshfs program on each host where the
    changes say so, and wait until mounted says its mount is there."""
    due = {}
    for name in hosts:
        if program in changes.start.get(name, ()):
            due[name] = "start"
        elif program in changes.restart.get(name, ()) or program in reconfigured.get(name, set()):
            due[name] = "restart"
    if not due:
        return

    def ensure(host: Host) -> None:
        if due[host.name] == "start":
            host.supervisor.start(program)
        else:
            host.supervisor.restart(program, reconfigure=reconfigured.get(host.name, set()))
        wait_until(waited(host), lambda: (mounted(host), "not mounted yet"), MOUNT_TIMEOUT,
                   f"see `djship logs {program}`")

    with reporter.step(title(list(due))):
        on_each({name: hosts[name] for name in due}, ensure)
