"""What `up` must change: the differences between what runs on each host and what djship.toml asks, as a value.

`diff` is pure: what the hosts hold and run (Observed, read through their connectors) and the files each must
hold in, the changes out. `djship up --dry-run` prints them; `djship up` applies exactly them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from djship import render

if TYPE_CHECKING:
    from djship.topology import Host

APP_PROGRAM = re.compile(r"^(?P<server>.+)-(gunicorn|nginx)$")
SEPARATE = ("postgres", "haproxy", render.POOLER_PROGRAM)
"""Programs with their own rules: PostgreSQL restarts or reloads, HAProxy and PgBouncer reload seamlessly."""


@dataclass(frozen=True)
class Observed:
    """One host as it is."""

    supervisor: bool
    """Whether its supervisord answers."""
    statuses: dict[str, str]
    """Each supervised program's state (RUNNING, STOPPED, FATAL, ...)."""
    contents: dict[Path, bytes | None]
    """The content of each file the host must hold (None: missing)."""
    balancer: dict[str, str] = field(default_factory=dict)
    """An lb host: the status its HAProxy gives each app server (UP, DOWN, DRAIN, MAINT, ...)."""
    releases: tuple[str, ...] = ()
    """An app host: the releases it holds."""
    current: Path | None = None
    """An app host: where its `current` link points."""


@dataclass(frozen=True)
class Changes:
    files: dict[str, tuple[render.ConfigFile, ...]]
    """Per host, the files whose content changes."""
    supervisor_start: frozenset[str]
    """Hosts whose supervisord is not running."""
    supervisor_reread: frozenset[str]
    """Hosts whose running supervisord must read its changed configuration."""
    start: dict[str, tuple[str, ...]]
    """Per host, the programs that are not running."""
    restart: dict[str, tuple[str, ...]]
    """Per host, the app programs that run but read a changed file (each restarts out of rotation)."""
    postgres: str | None
    """"start", "restart" (postgresql.conf changed), "reload" (pg_hba.conf or its certificate only) or None."""
    haproxy: dict[str, str]
    """Per lb host: "start" or "reload"."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    """App servers that join, and those that are drained and removed."""
    resting: tuple[str, ...]
    """App servers a balancer holds out of rotation (drained or in maintenance) that go back into it."""
    release: str | None
    """The live release; None: there is none yet, a new one is built."""
    ship: tuple[str, ...]
    """App hosts that lack the live release."""
    balancers_running: bool
    endpoints: dict[str, tuple[tuple[str, int, str], ...]]
    """Per host, (address, port, the djship.toml key that sets it) that starting programs will listen on."""
    secrets: bool = False
    """Whether the system's secrets are made (the first up)."""
    standby: str | None = None
    """The standby's PostgreSQL, as `postgres` says the primary's."""
    standby_copy: str | None = None
    """Why the standby host gets a fresh pg_basebackup: "new", "rebuild" (a former primary's data kept aside) or None."""
    pooler: dict[str, str] = field(default_factory=dict)
    """Per app host with database.pooler: "start" or "reload" (its config or password file changed) PgBouncer."""
    pooler_hosts: tuple[str, ...] = ()
    """The hosts that run PgBouncer."""

    @property
    def empty(self) -> bool:
        return not (
            any(self.files.values()) or self.supervisor_start or self.supervisor_reread or any(self.start.values())
            or any(self.restart.values()) or self.postgres or self.standby or self.standby_copy or self.haproxy
            or self.pooler or self.added or self.removed
            or self.resting or self.release is None or self.ship
        )

    @property
    def paused_poolers(self) -> tuple[str, ...]:
        """The hosts whose PgBouncer runs already: a restart of PostgreSQL pauses them."""
        return tuple(host for host in self.pooler_hosts if self.pooler.get(host) != "start")

    def endpoints_to_bind(self, host: Host) -> tuple[tuple[str, int, str], ...]:
        return self.endpoints.get(host.name, ())

    def lines(self) -> list[str]:
        """One line per change, for `up --dry-run`."""
        lines = ["make the secrets (SECRET_KEY, database passwords)"] if self.secrets else []
        for host, files in self.files.items():
            lines += [f"{host}: write {file.path}" for file in files]
        lines += [f"{host}: start the supervisor (supervisord)" for host in sorted(self.supervisor_start)]
        lines += [f"{host}: re-read the supervisor's configuration" for host in sorted(self.supervisor_reread)]
        if self.release is None:
            lines.append("build a new release, migrate the database once")
        lines += [f"{host}: ship release {self.release}" for host in self.ship]
        if self.postgres:
            paused = " (PgBouncer paused meanwhile: no failed request)" \
                if self.postgres == "restart" and self.paused_poolers else ""
            lines.append(f"{self.postgres} PostgreSQL{paused}")
        lines += [f"{host}: {action} PgBouncer" for host, action in self.pooler.items()]
        if self.standby_copy:
            lines.append("fence the former primary on the standby host, keep its data directory aside, and copy the "
                         "primary to it" if self.standby_copy == "rebuild" else "copy the primary to the standby host")
        if self.standby:
            lines.append(f"{self.standby} PostgreSQL's standby")
        lines += [f"remove app server {name} (drained first)" for name in self.removed]
        lines += [f"add app server {name}" for name in self.added]
        for host, programs in self.start.items():
            lines += [f"{host}: start {program}" for program in programs if program not in SEPARATE]
        for host, programs in self.restart.items():
            lines += [f"{host}: restart {program}{' out of rotation' if APP_PROGRAM.match(program) else ''} "
                      "(configuration changed)" for program in programs]
        lines += [f"{host}: {action} the load balancer" for host, action in self.haproxy.items()]
        lines += [f"put {name} back into rotation" for name in self.resting]
        return lines


def _endpoints(host: Host, programs: set[str]) -> tuple[tuple[str, int, str], ...]:
    plan = host.plan
    endpoints = []
    if "haproxy" in programs:
        endpoints += [(plan.balancer_bind, plan.https_port, "balancer.https_port"),
                      (plan.balancer_bind, plan.http_port, "balancer.http_port")]
    if "postgres" in programs:
        endpoints.append((plan.database.own_address, plan.database.port, "database.port"))
    if "redis" in programs and plan.runs_redis:
        endpoints.append((plan.redis.address, plan.redis.port, "redis.port"))
    endpoints += [(server.address, server.port, "app.port") for server in plan.servers_here
                  if server.programs[1] in programs]
    return tuple(endpoints)


def diff(hosts: dict[str, Host], desired: dict[str, list[render.ConfigFile]], observed: dict[str, Observed],
         new_secrets: bool = False, certificate_changed: bool = False) -> Changes:
    """certificate_changed: the site certificate was made anew here (its copy on a host may be this very file)."""
    files, start, restart, haproxy, endpoints, pooler = {}, {}, {}, {}, {}, {}
    supervisor_start, supervisor_reread = set(), set()
    postgres = standby = None
    configured, listed, resting = set(), set(), set()
    for name, host in hosts.items():
        plan, seen = host.plan, observed[name]
        changed = tuple(
            file for file in desired[name]
            if seen.contents.get(file.path) != file.data
            or (certificate_changed and file.path == plan.paths.site_pem)
        )
        files[name] = changed
        programs = [program.name for program in render.programs(plan)]
        if not seen.supervisor:
            supervisor_start.add(name)
            stopped = set(programs)
        else:
            if any(file.path == plan.paths.supervisor_conf for file in changed):
                supervisor_reread.add(name)
            stopped = {program for program in programs if seen.statuses.get(program) != "RUNNING"}
        start[name] = tuple(program for program in programs if program in stopped)
        endpoints[name] = _endpoints(host, stopped)
        touched = {program for file in changed for program in file.programs} - stopped
        restart[name] = tuple(program for program in programs if program in touched and program not in SEPARATE)
        if plan.runs_postgres:
            names = {file.path.name for file in changed}
            # A reload reads pg_hba.conf, the certificate and replication.conf anew; postgresql.conf's settings need
            # a restart.
            reloaded = {"pg_hba.conf", "replication.conf", plan.database.cert_file.name, plan.database.key_file.name}
            action = "start" if "postgres" in stopped else "restart" if "postgresql.conf" in names \
                else "reload" if names & reloaded else None
            if host.holds("db"):
                postgres = action
            else:
                standby = action
        if plan.pools:
            action = "start" if render.POOLER_PROGRAM in stopped else "reload" if render.POOLER_PROGRAM in touched \
                else None
            if action:
                pooler[name] = action
        if host.holds("lb"):
            action = "start" if "haproxy" in stopped else "reload" if "haproxy" in touched else None
            if action:
                haproxy[name] = action
        configured |= {match["server"] for program in seen.statuses if (match := APP_PROGRAM.match(program))}
        listed |= set(seen.balancer)
        resting |= {server for server, status in seen.balancer.items() if status.startswith(("DRAIN", "MAINT"))}
    wanted = [server.name for server in next(iter(hosts.values())).plan.app_servers]
    removed = tuple(sorted((configured | listed) - set(wanted)))
    code_hosts = [name for name, host in hosts.items() if host.plan.runs_code]
    current = next((observed[name].current for name in code_hosts if observed[name].current is not None), None)
    release = current.name if current else None
    ship = tuple(name for name in code_hosts if release and release not in observed[name].releases)
    lbs = [name for name, host in hosts.items() if host.holds("lb")]
    return Changes(
        files=files, supervisor_start=frozenset(supervisor_start), supervisor_reread=frozenset(supervisor_reread),
        start=start, restart=restart, postgres=postgres, haproxy=haproxy,
        added=tuple(name for name in wanted if name not in configured and configured),
        removed=removed, resting=tuple(sorted(resting - set(removed))), release=release, ship=ship,
        balancers_running=all(observed[name].statuses.get("haproxy") == "RUNNING" for name in lbs),
        endpoints=endpoints, secrets=new_secrets, standby=standby, pooler=pooler,
        pooler_hosts=tuple(name for name, host in hosts.items() if host.plan.pools),
    )
