"""The hosts of the system, each with its roles, its connector and its plan.

One machine is a topology of one host that holds every role, reached through the local connector, its components
on loopback addresses; real hosts ([servers] and [hosts] in djship.toml) are the same topology reached over SSH.
This module and the connectors are the only code that knows where a host is.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

from djship.components import orphans
from djship.components.balancer import accepted_curves
from djship.components.supervisor import ProcessStatus, Supervisor
from djship.config import Config
from djship.connectors import Connector, on_each
from djship.connectors.local import LocalConnector
from djship.errors import DjshipError
from djship.hosts import HostReport, SSHHost, prepare_hosts, remote_hosts, require_ready
from djship.plan import ROLES, HostSpec, Paths, Plan, build_plans
from djship.progress import Reporter
from djship.tools import Tools, find_tools

HOSTS_RECORD = "hosts.json"
LOCAL_HOST = "local"


@dataclass(frozen=True)
class Host:
    """One host of the topology: where it is reached, what it runs (its plan) and how a release reaches it."""

    name: str
    address: str
    """Where the control machine reaches its balancer (HTTPS checks) and the other hosts reach it."""
    connector: Connector
    plan: Plan
    python: str
    """The host's own python3: the virtualenvs (the supervisor's, the releases') are made from it."""
    installs: str
    """How a release gets onto it: "project" (copied from the project and installed online, on the control
    machine's own host) or "wheels" (the code archive and the wheels built once on the control machine)."""

    def holds(self, role: str) -> bool:
        return self.plan.holds(role)

    @cached_property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.plan, self.connector)

    def statuses(self) -> dict[str, ProcessStatus]:
        """Each program's state; when no supervisor answers, what a dead one left running (UNSUPERVISED)."""
        answered = self.supervisor.answered_status()
        if answered is not None:
            return answered
        return orphans.as_statuses(orphans.orphans(self.connector, self.plan))

    def running(self, program: str) -> bool:
        status = self.statuses().get(program)
        return status is not None and status.state == "RUNNING"


@dataclass
class Topology:
    hosts: dict[str, Host]
    control: Paths
    """What the control machine (where djship runs) keeps: .djship/ beside manage.py."""
    unreachable: dict[str, str] = field(default_factory=dict)
    """Hosts that did not answer, with why (only when opened to observe)."""
    app_python: str = ""
    """The app hosts' Python major.minor (the wheels are built for it); empty on one machine."""

    @property
    def one_machine(self) -> bool:
        """Every role on this machine: the control machine's files are the host's own."""
        return all(host.installs == "project" for host in self.hosts.values())

    def holding(self, role: str) -> list[Host]:
        return [host for host in self.hosts.values() if host.holds(role)]

    def running_code(self) -> list[Host]:
        """The hosts that run the app's code (Plan.runs_code): the app hosts, then the worker hosts."""
        return [*self.holding("app"), *(host for host in self.holding("worker") if not host.holds("app"))]

    def record(self) -> None:
        """Which hosts were brought up and how to reach them, so a host later removed from djship.toml is stopped."""
        record = {name: entry for name, entry in ((host.name, _entry(host)) for host in self.hosts.values()) if entry}
        if record:
            LocalConnector().put(self.control.state / HOSTS_RECORD, json.dumps({"hosts": record}, indent=2) + "\n",
                                 mode=0o600)

    def departed(self) -> list[tuple[str, Path, Supervisor]]:
        """(name, state root, supervisor) of each host brought up before that djship.toml no longer lists."""
        content = LocalConnector().get(self.control.state / HOSTS_RECORD)
        entries = json.loads(content)["hosts"] if content else {}
        plan = next(iter(self.hosts.values())).plan
        gone = []
        if entries:
            from djship.connectors.ssh import SSHConnector, SSHTarget  # here: a local topology never loads paramiko
        for name, entry in entries.items():
            if name in self.hosts:
                continue
            target = entry["target"]
            target = SSHTarget(**{**target, "key_file": Path(target["key_file"]) if target["key_file"] else None,
                                  "known_hosts": Path(target["known_hosts"])})
            paths = Paths(Path(entry["root"]))
            tools = replace(plan.tools, python=str(paths.state / "venv/bin/python"))
            gone.append((name, paths.state, Supervisor(replace(plan, paths=paths, tools=tools), SSHConnector(target))))
        return gone

    def close(self) -> None:
        for host in self.hosts.values():
            host.connector.close()


def _entry(host: Host) -> dict | None:
    target = getattr(host.connector, "target", None)  # an SSH host's; the local host has none
    if target is None:
        return None
    return {"roles": sorted(host.plan.roles), "root": str(host.plan.paths.state), "target": {
        **asdict(target), "key_file": str(target.key_file) if target.key_file else None,
        "known_hosts": str(target.known_hosts)}}


def control_paths(config: Config, project_dir: Path) -> Paths:
    return Paths((project_dir.resolve() / config.state_dir).resolve())


def local_tools() -> Tools:
    """This machine's programs, with the TLS groups its HAProxy accepts."""
    tools = find_tools()
    return replace(tools, tls_curves=accepted_curves(LocalConnector(), tools.haproxy))


def local_spec(config: Config, project_dir: Path, tools: Tools, login_root: bool) -> HostSpec:
    """This machine as the one host of the topology, holding every role on loopback."""
    bind = config.balancer.bind
    roles = tuple(role for role in ROLES if role != "db" or config.database.url is None)  # no PostgreSQL of its own
    return HostSpec(LOCAL_HOST, "127.0.0.1" if bind == "0.0.0.0" else bind, roles,
                    control_paths(config, project_dir).state, tools, login_root, loopback=True)


def open_topology(config: Config, project_dir: Path, reporter: Reporter, install: bool = False,
                  observe_only: bool = False) -> Topology:
    """The topology djship.toml describes, every host reached and planned. install: apt-get what a host lacks
    first; observe_only (`status`): a host that cannot be reached is reported, not an error."""
    control = control_paths(config, project_dir)
    if not config.remote:
        if install:
            raise DjshipError("--install is for real hosts ([servers] in djship.toml); on this machine "
                              "`./bootstrap demo` or apt-get installs nginx, haproxy and postgresql")
        spec = local_spec(config, project_dir, local_tools(), os.geteuid() == 0)
        plan = build_plans(config, project_dir, [spec])[spec.name]
        host = Host(spec.name, spec.address, LocalConnector(), plan, sys.executable, "project")
        return Topology({host.name: host}, control)
    return _ssh_topology(config, project_dir, control, reporter, install, observe_only)


def _host_tools(report: HostReport | None, host: SSHHost, tls_curves: tuple[str, ...]) -> Tools:
    """Where the host's programs are; empty when not known (the host did not answer)."""
    found = report.tools if report else {}
    return Tools(
        nginx=found.get("nginx", ""), haproxy=found.get("haproxy", ""), pg_bindir=found.get("pg_bindir", ""),
        mime_types=found.get("mime_types", ""), python=str(Path(str(host.root)) / "venv" / "bin" / "python"),
        redis_server=found.get("redis_server", ""), pgbouncer=found.get("pgbouncer", ""), pgbackrest=found.get("pgbackrest", ""),
        tls_curves=tls_curves,
    )


def _ssh_topology(config: Config, project_dir: Path, control: Paths, reporter: Reporter, install: bool,
                  observe_only: bool) -> Topology:
    from djship.connectors.ssh import SSHConnector  # here: a local topology never loads paramiko (0.1 s a command)

    hosts = remote_hosts(config, project_dir)
    connectors = {host.name: SSHConnector(host.target) for host in hosts}
    connect = lambda host: nullcontext(connectors[host.name])  # noqa: E731
    unreachable: dict[str, str] = {}
    if observe_only:
        def check(host: SSHHost) -> HostReport | DjshipError:
            try:
                return prepare_hosts([host], install=False, connect=connect)[0]
            except DjshipError as error:
                return error

        checked = on_each({host.name: host for host in hosts}, check)
        unreachable = {name: str(result) for name, result in checked.items() if isinstance(result, DjshipError)}
        reports = [result for result in checked.values() if isinstance(result, HostReport)]
    else:
        checking = reporter.step(f"Installing what the {len(hosts)} hosts lack (apt-get)") if install else nullcontext()
        with checking:  # quiet otherwise: `status --json` prints JSON alone
            reports = prepare_hosts(hosts, install=install, connect=connect)
        require_ready(reports)
    by_name = {report.name: report for report in reports}
    balancers = {name: (connectors[name], report.tools["haproxy"]) for name, report in by_name.items()
                 if "lb" in report.roles and report.tools.get("haproxy")}
    curves = on_each(balancers, lambda balancer: accepted_curves(*balancer))
    specs = []
    for host in hosts:
        report = by_name.get(host.name)
        login_root = report.root_login if report else host.target.user == "root"
        specs.append(HostSpec(host.name, host.target.address, host.roles, Path(str(host.root)),
                              _host_tools(report, host, curves.get(host.name, ())), login_root))
    plans = build_plans(config, project_dir, specs)
    planned = {
        host.name: Host(host.name, host.target.address, connectors[host.name], plans[host.name],
                        by_name[host.name].tools.get("python3", "python3") if host.name in by_name else "python3",
                        "wheels")
        for host in hosts
    }
    # The wheels are built for the first app host's Python; installing checks every other host against them.
    app_python = next((report.python for report in reports if {"app", "worker"} & set(report.roles)), "")
    return Topology(planned, control, unreachable, app_python or "")
