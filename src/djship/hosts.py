"""The hosts of a remote target: which roles each holds, how to reach it over SSH, and what it needs installed.

Checking a host is one shell script (`probe_script`) whose output a pure parser reads (`parse_probe`), so the
logic is tested without a host; `prepare_hosts` runs it on every host at once through the SSH connector.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from djship.config import Config, media_host
from djship.connectors import Connector, on_each
from djship.errors import DjshipError

if TYPE_CHECKING:  # imported where used: a local topology never loads paramiko (0.1 s of every command)
    from djship.connectors.ssh import SSHTarget

ROLES = ("lb", "app", "worker", "db", "standby", "media", "redis", "backup")
MIN_PYTHON = (3, 10)
INSTALL_TIMEOUT = 900


@dataclass(frozen=True)
class Requirement:
    package: str
    """The Debian/Ubuntu package that provides it."""
    probe: str
    """A shell test that succeeds when it is present."""
    roles: frozenset[str]
    """The roles that need it; every host when empty."""
    needed_for: str | None = None
    """Needed only when the system uses this (one of FEATURES); None: always."""


# What some systems do and others do not, and so need a package for only then.
FEATURES = {
    "mounts": "a media host holds the uploads (every app and worker host mounts them)",
    "sends": "a backup host keeps the backups (the db host sends them there)",
    "snapshots": "backups hold Redis's data ([redis] backup: the db host takes its snapshot with redis-cli)",
    "connects": "an external PostgreSQL (database.url): the first app host administers and backs it up with psql",
    "pooled": "database.pooler runs PgBouncer on every app host",
    "archives": "backup.archive: pgBackRest on the db hosts archives into the backup host's repository, mounted there",
}


REQUIREMENTS = (
    Requirement("python3", 'test -n "$PYTHON"', frozenset()),
    # The supervisor and the release virtualenvs run in virtualenvs of the host's own Python.
    Requirement("python3-venv", '"$PYTHON" -c \'import ensurepip, venv\'', frozenset()),
    Requirement("haproxy", "command -v haproxy || test -x /usr/sbin/haproxy", frozenset({"lb"})),
    # An lb host that follows the ACME renewer reads its certificate with `openssl s_client`.
    Requirement("openssl", "command -v openssl", frozenset({"lb"})),
    Requirement("nginx", "command -v nginx || test -x /usr/sbin/nginx", frozenset({"app"})),
    Requirement("postgresql", "ls /usr/lib/postgresql/*/bin/initdb", frozenset({"db", "standby"})),
    Requirement("redis-server", "command -v redis-server || test -x /usr/bin/redis-server", frozenset({"redis"})),
    Requirement("pgbouncer", "command -v pgbouncer || test -x /usr/sbin/pgbouncer", frozenset({"app"}), "pooled"),
    Requirement("sshfs", "command -v sshfs && command -v fusermount3", frozenset({"app", "worker"}), "mounts"),
    Requirement("openssh-client", "command -v sftp", frozenset({"db"}), "sends"),
    Requirement("pgbackrest", "command -v pgbackrest", frozenset({"db", "standby"}), "archives"),
    Requirement("sshfs", "command -v sshfs && command -v fusermount3", frozenset({"db", "standby"}), "archives"),
    Requirement("redis-tools", "command -v redis-cli", frozenset({"db"}), "snapshots"),
    Requirement("postgresql-client", "ls /usr/lib/postgresql/*/bin/pg_dump", frozenset({"app"}), "connects"),
)


@dataclass(frozen=True)
class SSHHost:
    name: str
    roles: tuple[str, ...]
    target: SSHTarget
    root: PurePosixPath
    """Where everything djship makes on this host lives."""
    features: frozenset[str] = frozenset()
    """What of FEATURES the system uses."""


def _local_path(value: str, project_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_dir / path


def remote_hosts(config: Config, project_dir: Path) -> list[SSHHost]:
    """Every host of the remote target, in the order djship.toml lists them."""
    from djship.connectors.ssh import SSHTarget

    if config.servers is None:
        raise DjshipError(
            "djship.toml lists no remote hosts ([servers] and [hosts]); this project runs on this machine "
            "(see the README, \"From one machine to real hosts\")"
        )
    media = media_host(config)
    backup = config.servers.backup
    db = {config.servers.primary} if config.servers.primary else set()
    holders = {"lb": set(config.servers.lb), "app": set(config.servers.app), "worker": set(config.servers.worker),
               "db": db, "standby": set(config.servers.db_hosts[1:]),
               "media": {media} if media else set(), "backup": {backup} if backup else set(),
               "redis": {config.servers.redis} if config.servers.redis else db if config.redis is not None else set()}
    features = frozenset(name for name, used in (("mounts", media is not None), ("sends", backup is not None),
                                                 ("snapshots", config.redis is not None and config.redis.backup),
                                                 ("connects", config.database.url is not None),
                                                 ("pooled", config.database.pooler != "none"),
                                                 ("archives", config.backup.archive and backup is not None))
                         if used)
    ssh = config.ssh
    hosts = []
    for name, host in config.hosts.items():
        key = host.ssh_key or ssh.key
        target = SSHTarget(
            host.address,
            port=host.ssh_port or ssh.port,
            user=host.ssh_user or ssh.user,
            key_file=_local_path(key, project_dir) if key else None,
            known_hosts=_local_path(ssh.known_hosts, project_dir),
            host_key=host.host_key,
        )
        roles = tuple(role for role in ROLES if name in holders[role])
        hosts.append(SSHHost(name, roles, target, PurePosixPath(host.root), features))
    return hosts


def requirements_for(roles: tuple[str, ...], features: frozenset[str] = frozenset()) -> list[Requirement]:
    """What a host of those roles needs, each package once (sshfs: for the uploads and for the archive)."""
    needed = [requirement for requirement in REQUIREMENTS if (not requirement.roles or requirement.roles & set(roles))
              and requirement.needed_for in (None, *features)]
    return list({requirement.package: requirement for requirement in needed}.values())


# Where each program djship drives is on a Debian/Ubuntu host ("tool <name> <path>" lines; empty when missing).
_TOOL_PROBES = {
    "nginx": "command -v nginx || ls /usr/sbin/nginx",
    "haproxy": "command -v haproxy || ls /usr/sbin/haproxy",
    "pg_bindir": "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1",
    "mime_types": "ls /etc/nginx/mime.types",
    "redis_server": "command -v redis-server || ls /usr/bin/redis-server",
    "pgbouncer": "command -v pgbouncer || ls /usr/sbin/pgbouncer",
    "pgbackrest": "command -v pgbackrest || ls /usr/bin/pgbackrest",
    "python3": 'echo "$PYTHON"',
}
# The distribution's Python first: every user can run it (a python3 first on root's PATH, e.g. pyenv's under
# /root, is not one the service user can reach).
_FIND_PYTHON = 'PYTHON=$(ls /usr/bin/python3 2>/dev/null || command -v python3)'


def probe_script(roles: tuple[str, ...], features: frozenset[str] = frozenset()) -> str:
    lines = [_FIND_PYTHON, "echo uid $(id -u)",
             '"$PYTHON" -c \'import sys; print("python", *sys.version_info[:2])\' 2>/dev/null']
    lines += [f"echo tool {name} $({probe} 2>/dev/null)" for name, probe in _TOOL_PROBES.items()]
    lines += [
        f"if {requirement.probe} >/dev/null 2>&1; then echo present {requirement.package}; "
        f"else echo missing {requirement.package}; fi"
        for requirement in requirements_for(roles, features)
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Facts:
    root: bool
    python: tuple[int, int] | None
    missing: tuple[str, ...]
    tools: dict[str, str]
    """Where each program is ("nginx", "haproxy", "pg_bindir", "mime_types", "python3"); absent when missing."""


def parse_probe(output: str) -> Facts:
    root, python, missing, tools = False, None, [], {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "tool":
            name, _, path = rest.partition(" ")
            if path.strip():
                tools[name] = path.strip()
        elif word == "uid":
            root = rest.strip() == "0"
        elif word == "python":
            major, minor = rest.split()
            python = (int(major), int(minor))
        elif word == "missing":
            missing.append(rest.strip())
    return Facts(root, python, tuple(missing), tools)


# Debian starts a package's own service on install; djship runs these programs under its own supervisord (the
# distribution's nginx would hold port 80, which a balancer on the same host needs).
DISTRIBUTION_SERVICES = {"nginx": "nginx", "haproxy": "haproxy", "postgresql": "postgresql",
                         "redis-server": "redis-server", "pgbouncer": "pgbouncer"}


def install_command(packages: tuple[str, ...], as_root: bool) -> list[str]:
    """apt-get, non-interactive; through `sudo -n` (never a password prompt) when the login user is not root.
    The services those packages start by themselves are stopped and disabled (djship supervises its own)."""
    script = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        + " ".join(shlex.quote(package) for package in packages)
    )
    services = [DISTRIBUTION_SERVICES[package] for package in packages if package in DISTRIBUTION_SERVICES]
    if services:
        script += (" && { ! command -v systemctl >/dev/null || systemctl disable --now "
                   + " ".join(services) + " >/dev/null 2>&1 || true; }")
    return ["sh", "-c", script] if as_root else ["sudo", "-n", "sh", "-c", script]


@dataclass(frozen=True)
class HostReport:
    name: str
    address: str
    roles: tuple[str, ...]
    python: str | None
    installed: tuple[str, ...]
    missing: tuple[str, ...]
    problem: str | None
    """What is wrong beyond missing packages (e.g. a Python that is too old)."""
    tools: dict[str, str]
    """Where the programs djship drives are on the host (see Facts.tools)."""
    root_login: bool

    @property
    def ready(self) -> bool:
        return not self.missing and self.problem is None

    def as_dict(self) -> dict:
        return {
            "name": self.name, "address": self.address, "roles": list(self.roles), "python": self.python,
            "installed": list(self.installed), "missing": list(self.missing), "problem": self.problem,
            "ready": self.ready,
        }


def _python_problem(facts: Facts) -> str | None:
    if facts.python is None or facts.python >= MIN_PYTHON:
        return None
    have, need = ".".join(map(str, facts.python)), ".".join(map(str, MIN_PYTHON))
    return f"python3 is {have}; djship needs {need} or newer (Debian 12 and Ubuntu 22.04 have it)"


def _prepare(host: SSHHost, connector: Connector, install: bool) -> HostReport:
    probe = ["sh", "-c", probe_script(host.roles, host.features)]
    facts = parse_probe(connector.run(probe, timeout=60).stdout)
    installed: tuple[str, ...] = ()
    if facts.missing and install:
        result = connector.run(install_command(facts.missing, facts.root), timeout=INSTALL_TIMEOUT)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
            raise DjshipError(f"apt-get install {' '.join(facts.missing)} failed: {detail[-1]}")
        before = facts.missing
        facts = parse_probe(connector.run(probe, timeout=60).stdout)
        installed = tuple(package for package in before if package not in facts.missing)
    python = ".".join(map(str, facts.python)) if facts.python else None
    return HostReport(
        host.name, host.target.address, host.roles, python, installed, facts.missing, _python_problem(facts),
        facts.tools, facts.root,
    )


def _ssh(host: SSHHost) -> AbstractContextManager[Connector]:
    from djship.connectors.ssh import SSHConnector

    return SSHConnector(host.target)


def prepare_hosts(
    hosts: list[SSHHost],
    install: bool,
    connect: Callable[[SSHHost], AbstractContextManager[Connector]] = _ssh,
) -> list[HostReport]:
    """Reach every host at once (its SSH host key verified) and check, or with install add, what its roles need."""

    def prepare(host: SSHHost) -> HostReport:
        with connect(host) as connector:
            return _prepare(host, connector, install)

    reports = on_each({host.name: host for host in hosts}, prepare)
    return [reports[host.name] for host in hosts]


def require_ready(reports: list[HostReport]) -> None:
    """One error naming, per host, what to install or fix; nothing when every host is ready."""
    problems = []
    for report in reports:
        if report.missing:
            problems.append(f"{report.name}: apt-get install -y {' '.join(report.missing)}")
        if report.problem:
            problems.append(f"{report.name}: {report.problem}")
    if problems:
        raise DjshipError(
            "hosts are missing what their roles need: " + "; ".join(problems)
            + " (or run `djship hosts --install` to let djship install the packages)"
        )
