"""The system on real hosts over SSH: the plan, renderers, components and rolling switch of the one-machine
target, each component on its own host, reached through that host's connector.

On this machine (the "control" directory, .djship/ beside manage.py) stay what is made once and shipped: the
secrets, the certificate and its CA, the wheels, each release's code archive, the deploy lock, the build logs and
the list of hosts last brought up. Each host holds its own state root with the same layout as .djship/.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from djship import render
from djship.components import appserver
from djship.components.balancer import Balancer, https_probe, remote_sender
from djship.components.database import DatabaseServer
from djship.components.supervisor import ProcessStatus, Supervisor
from djship.config import Config
from djship.connectors import CommandFailed, on_each
from djship.connectors.local import LocalConnector
from djship.connectors.ssh import SSHConnector, SSHTarget
from djship.deploy import shipping
from djship.deploy.lifecycle import (
    READY_TIMEOUT, Secrets, UpResult, ensure_secrets, ensure_service_user, others_in_rotation, out_of_rotation,
    point_server, prepare_state_dir, take_out_for_good, write_system_files,
)
from djship.deploy.live import read_live
from djship.deploy.lock import exclusive
from djship.deploy.release import RUNTIME_PACKAGES, Release, ReleaseBuilder, new_release_id
from djship.errors import DjshipError
from djship.hosts import Host, HostReport, prepare_hosts, remote_hosts, require_ready
from djship.plan import AppServer, HostSpec, Paths, Plan, build_host_plans
from djship.progress import Reporter
from djship.tls.certificates import leaf_der
from djship.tls.site import ensure_certificate, site_info
from djship.tools import Tools
from djship.waiting import wait_until

SUPERVISOR_PACKAGE = "supervisor>=4.2"
WHEEL_PACKAGES = (*RUNTIME_PACKAGES, SUPERVISOR_PACKAGE)
HOSTS_RECORD = "hosts.json"


@dataclass(frozen=True)
class Side:
    """One host: its plan, its connection, its supervisord."""

    host: Host
    plan: Plan
    connector: SSHConnector
    supervisor: Supervisor
    python: str
    """The host's own python3 (for the virtualenvs); the plan's tools.python is the supervisor's venv in it."""

    @property
    def name(self) -> str:
        return self.host.name

    def statuses(self) -> dict[str, ProcessStatus]:
        return self.supervisor.status() if self.supervisor.pid() is not None else {}

    def running(self, program: str) -> bool:
        status = self.statuses().get(program)
        return status is not None and status.state == "RUNNING"


def _host_tools(report: HostReport | None, host: Host) -> Tools:
    """Where the host's programs are; None: not known (the host did not answer)."""
    found = report.tools if report else {}
    return Tools(
        nginx=found.get("nginx", ""), haproxy=found.get("haproxy", ""), pg_bindir=found.get("pg_bindir", ""),
        mime_types=found.get("mime_types", ""), python=str(Path(str(host.root)) / "venv" / "bin" / "python"),
    )


def open_remote(config: Config, project_dir: Path, reporter: Reporter, install: bool = False,
                observe_only: bool = False) -> RemoteSystem:
    """Reach every host (its SSH host key verified), check it has what its roles need (with install: apt-get it),
    and plan each one. observe_only (`status`): a host that cannot be reached is reported, not an error."""
    hosts = remote_hosts(config, project_dir)
    connectors = {host.name: SSHConnector(host.target) for host in hosts}
    connect = lambda host: nullcontext(connectors[host.name])  # noqa: E731
    unreachable: dict[str, str] = {}
    if observe_only:
        def check(host: Host) -> HostReport | DjshipError:
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
    specs, pythons = [], {}
    for host in hosts:
        report = by_name.get(host.name)  # None: the host did not answer (observe_only)
        root_login = report.root_login if report else host.target.user == "root"
        specs.append(HostSpec(host.name, host.target.address, host.roles, Path(str(host.root)),
                              _host_tools(report, host), root_login))
        pythons[host.name] = report.tools.get("python3", "python3") if report else "python3"
    plans = build_host_plans(config, project_dir, specs)
    sides = {
        host.name: Side(host, plans[host.name], connectors[host.name], Supervisor(plans[host.name], connectors[host.name]),
                        pythons[host.name])
        for host in hosts
    }
    control = Paths((project_dir.resolve() / config.state_dir).resolve())
    # The wheels are built for the first app host's Python; installing checks every other host against them.
    app_python = next((report.python for report in reports if "app" in report.roles), "")
    return RemoteSystem(sides, control, reporter, app_python, unreachable)


class RemoteSystem:
    """lb hosts (HAProxy), app hosts (nginx -> gunicorn), one db host (PostgreSQL), each with its own supervisord."""

    def __init__(self, sides: dict[str, Side], control: Paths, reporter: Reporter, app_python: str,
                 unreachable: dict[str, str] | None = None):
        """unreachable: hosts that did not answer, with why (only when opened to observe)."""
        self.sides = sides
        self.unreachable = unreachable or {}
        self.control = control
        self.reporter = reporter
        self.app_python = app_python
        self.lb_sides = [side for side in sides.values() if side.plan.holds("lb")]
        self.db_side = next(side for side in sides.values() if side.plan.holds("db"))
        first_app = next(side for side in sides.values() if side.plan.holds("app"))
        self.plan = first_app.plan
        self.app_sides = {server.name: sides[server.host] for server in self.plan.app_servers}
        self.balancers = [
            Balancer(side.plan.paths.haproxy_socket,
                     remote_sender(side.connector, side.plan.tools.python, side.plan.paths.haproxy_socket))
            for side in self.lb_sides
        ]
        self.local = LocalConnector()
        self.changes: list[str] = []
        # Secrets and the certificate are made here, once, and copied to the hosts that need them.
        self.control_plan = replace(self.plan, paths=control, service_user=None, host=None)

    def _change(self, title: str):
        """A step of `up` that changes the running system (so `up` can say when it changed nothing)."""
        self.changes.append(title)
        return self.reporter.step(title)

    def close(self) -> None:
        for side in self.sides.values():
            side.connector.close()

    # -- up --------------------------------------------------------------------------------------------------

    def up(self) -> UpResult:
        self.control.state.mkdir(parents=True, exist_ok=True)
        with exclusive(self.control.deploy_lock, "up"):
            return self._up()

    def _up(self) -> UpResult:
        plan = self.plan
        with self.reporter.step(f"Secrets and certificate in {self.control.state}"):
            self.control.logs.mkdir(parents=True, exist_ok=True)
            secrets_ = ensure_secrets(self.control_plan, self.local)
            ensure_certificate(self.control_plan, self.local)
            certificate = self.local.get(self.control.site_pem)
        wheelhouse = self._wheelhouse()
        with self.reporter.step(f"Preparing {len(self.sides)} hosts: state root, supervisor, secrets, config files"):
            changed_files = on_each(self.sides, lambda side: self._prepare(side, secrets_, certificate, wheelhouse))
        changed = {name: {program for file in files for program in file.programs} for name, files in changed_files.items()}
        self._database(secrets_, {file.path.name for file in changed_files[self.db_side.name]})
        release = self.current()
        fresh = release is None
        if fresh:
            release = self._build(wheelhouse)
            with self._change("Migrating the database (once, before any app server starts)"):
                self.migrate(release)
        else:
            missing = [server.name for server, side in self._app_items() if not self._installed(side, release.id)]
            if missing:
                with self._change(f"Shipping release {release.id} to {', '.join(missing)}"):
                    on_each({name: self.app_sides[name] for name in missing},
                            lambda side: self._install(side, release.id, wheelhouse))
        self.set_current(release)
        removed = self._removed_servers()
        balancers_running = all(side.running("haproxy") for side in self.lb_sides)
        for server, side in self._app_items():
            self._ensure_app_server(server, side, release, changed[side.name], balancers_running)
        self._ensure_balancers(changed, removed)
        self._stop_removed_hosts()
        self._record_hosts()
        ca_cert = self.control.ca_cert if plan.tls.mode == "local" else None
        return UpResult(plan.url, ca_cert, release.id, changed=bool(self.changes))

    def _app_items(self) -> list[tuple[AppServer, Side]]:
        return [(server, self.app_sides[server.name]) for server in self.plan.app_servers]

    def _wheelhouse(self) -> shipping.Wheelhouse:
        with self.reporter.step(f"Wheels for {self.plan.requirements.name} and djship's runtime (built here, once)"):
            return shipping.build_wheelhouse(
                self.plan.requirements, WHEEL_PACKAGES, self._build_python(), self.control.state / "wheelhouse",
                self.local, self.control.logs / "wheels.log",
            )

    def _build_python(self) -> str:
        """A Python on this machine of the app hosts' version: the wheels it builds are the ones they install."""
        version = ".".join(map(str, sys.version_info[:2]))
        if version == self.app_python:
            return sys.executable
        candidate = shutil.which(f"python{self.app_python}")
        if candidate:
            return candidate
        raise DjshipError(
            f"the app hosts run Python {self.app_python} but djship runs on Python {version} here, and there is no "
            f"python{self.app_python} on this machine to build their wheels with; install python{self.app_python} here"
        )

    def _prepare(self, side: Side, secrets_: Secrets, certificate: bytes | None,
                 wheelhouse: shipping.Wheelhouse) -> list[render.ConfigFile]:
        """Everything a host needs before its programs start; returns the config files that changed."""
        plan, connector = side.plan, side.connector
        ensure_service_user(plan, connector)
        prepare_state_dir(plan, connector)
        shipping.upload_wheelhouse(connector, wheelhouse, plan.paths.wheels)
        shipping.ensure_venv(connector, side.python, plan.paths.state / "venv", wheelhouse.on_host(plan.paths.wheels),
                             None, (SUPERVISOR_PACKAGE,))
        # Files the programs read only when they start: a change restarts them as a changed config file does.
        read_at_start = []
        connector.makedirs(plan.paths.secrets, mode=0o711)
        if plan.holds("app"):
            app = {"secret_key": secrets_.secret_key, "database_password": secrets_.database_password}
            if connector.put(plan.paths.app_secrets, json.dumps(app, indent=2) + "\n", mode=0o600, owner=plan.service_user):
                gunicorns = tuple(server.programs[0] for server in plan.servers_here)
                read_at_start.append(render.ConfigFile(plan.paths.app_secrets, "", gunicorns))
        if plan.holds("db"):
            connector.put(plan.paths.admin_secrets,
                          json.dumps({"postgres_password": secrets_.superuser_password}, indent=2) + "\n", mode=0o600)
        if plan.holds("lb"):
            connector.makedirs(plan.paths.tls, mode=0o711)
            if connector.put(plan.paths.site_pem, certificate, mode=0o600, owner=plan.service_user):
                read_at_start.append(render.ConfigFile(plan.paths.site_pem, "", ("haproxy",)))
        if plan.holds("db"):  # initdb wants an empty data directory: before postgresql.conf is written into it
            database = DatabaseServer(plan, connector)
            if not database.initialized():
                database.init_cluster(secrets_.superuser_password)
        changed = write_system_files(plan, connector) + read_at_start
        if side.supervisor.pid() is None:
            side.supervisor.start_daemon()
        return changed

    def _database(self, secrets_: Secrets, changed: set[str]) -> None:
        """changed: the names of the db host's config files that changed."""
        side = self.db_side
        database = DatabaseServer(side.plan, side.connector)
        endpoint = side.plan.database.endpoint
        if not side.running("postgres"):
            with self._change(f"Starting PostgreSQL on {side.name} ({endpoint}, app hosts only)"):
                side.supervisor.start("postgres")
                database.wait_ready(READY_TIMEOUT)
        elif "postgresql.conf" in changed:
            with self._change(f"Restarting PostgreSQL on {side.name} (its configuration changed)"):
                side.supervisor.restart("postgres")
                database.wait_ready(READY_TIMEOUT)
        elif "pg_hba.conf" in changed:  # which app hosts may connect: a reload, no connection is dropped
            with self._change(f"Reloading PostgreSQL's client list on {side.name} (the app hosts changed)"):
                side.supervisor.signal("postgres", "HUP")
        live = read_live(side.plan, side.connector).database
        with self.reporter.step(f"Database {live!r} and role {side.plan.database.user!r}"):
            database.ensure_app_database(secrets_.superuser_password, secrets_.database_password, live)

    def _ensure_app_server(self, server: AppServer, side: Side, release: Release, changed: set[str],
                           balancers_running: bool) -> None:
        statuses = side.statuses()
        stopped = [name for name in server.programs if statuses.get(name) is None or statuses[name].state != "RUNNING"]
        restart = [name for name in server.programs if name in changed and name not in stopped]
        if stopped:
            with self._change(f"Starting {server.name} on {side.name}: nginx + gunicorn on {server.endpoint}"):
                if side.connector.readlink(server.release_link) is None:
                    side.connector.symlink(server.release_link, self._on(side, release).dir)
                point_server(server, side.connector, read_live(side.plan, side.connector))
                side.supervisor.start(*server.programs)
                self.wait_healthy(server, self.release_of(server) or release)
        if restart:
            def apply() -> None:
                with self._change(f"Restarting {', '.join(restart)} on {side.name} (configuration changed)"):
                    side.supervisor.restart(*restart)
                    self.wait_healthy(server, self.release_of(server) or release)

            if balancers_running and others_in_rotation(self.balancers, {server.name}):
                with self.out_of_rotation((server,)):
                    apply()
            else:
                apply()

    def _ensure_balancers(self, changed: dict[str, set[str]], removed: list[str]) -> None:
        for side, instance in zip(self.lb_sides, self.balancers):
            if not side.running("haproxy"):
                with self._change(f"Starting the load balancer on {side.name} ({self.plan.url})"):
                    side.supervisor.start("haproxy")
                    self._wait_balancer(side, instance)
                continue
            if removed:
                with self._change(f"Draining {', '.join(removed)} on {side.name} before removing them"):
                    take_out_for_good(instance, removed, self.plan.balancer_timeout)
            if "haproxy" in changed[side.name]:
                with self._change(f"Reloading the load balancer on {side.name} (no connection is dropped)"):
                    check = side.connector.run([side.plan.tools.haproxy, "-c", "-q", "-f", str(side.plan.paths.haproxy_conf)])
                    if not check.ok:
                        raise CommandFailed(f"haproxy -c on {side.name}", check)
                    side.supervisor.signal("haproxy", "USR2")
                    self._wait_balancer(side, instance)
            resting = [name for name, state in instance.states().items() if state.status.startswith(("DRAIN", "MAINT"))]
            if resting:
                with self._change(f"Putting {', '.join(resting)} back into rotation on {side.name}"):
                    for name in resting:
                        instance.set_state(name, "ready")

    def _wait_balancer(self, side: Side, instance: Balancer) -> None:
        certificate = leaf_der(self.local.get(self.control.site_pem))

        def ready() -> tuple[bool, str]:
            states = instance.states()
            down = [server.name for server in self.plan.app_servers
                    if server.name not in states or states[server.name].status != "UP"]
            if down:
                return False, f"waiting for health checks of {', '.join(down)}"
            status = https_probe(side.host.target.address, self.plan.https_port, self.plan.domains[0],
                                 self.plan.health_path, certificate)
            return status == 200, f"HTTPS health check through {side.host.target.address} answered {status}"

        wait_until(f"the load balancer on {side.name}", ready, READY_TIMEOUT, f"see `djship logs {side.name}`")

    # -- hosts that left the config ---------------------------------------------------------------------------

    def _recorded_hosts(self) -> dict[str, dict]:
        content = self.local.get(self.control.state / HOSTS_RECORD)
        return json.loads(content)["hosts"] if content else {}

    def _record_hosts(self) -> None:
        record = {
            side.name: {"roles": list(side.host.roles), "root": str(side.host.root), "server_names": [
                server.name for server in side.plan.servers_here], "target": {
                **asdict(side.host.target), "key_file": str(side.host.target.key_file) if side.host.target.key_file else None,
                "known_hosts": str(side.host.target.known_hosts)}}
            for side in self.sides.values()
        }
        self.local.put(self.control.state / HOSTS_RECORD, json.dumps({"hosts": record}, indent=2) + "\n", mode=0o600)

    def _removed_servers(self) -> list[str]:
        """App servers the balancers still list that djship.toml no longer has."""
        current = {server.name for server in self.plan.app_servers}
        listed = set().union(*(instance.states() for instance in self.balancers))
        return sorted(listed - current)

    def _stop_removed_hosts(self) -> None:
        """Stop the supervisord of every host brought up before that djship.toml no longer lists (the balancers
        no longer send it anything); its files stay."""
        for name, entry in self._recorded_hosts().items():
            if name in self.sides:
                continue
            target = entry["target"]
            target = SSHTarget(**{**target, "key_file": Path(target["key_file"]) if target["key_file"] else None,
                                  "known_hosts": Path(target["known_hosts"])})
            paths = Paths(Path(entry["root"]))
            plan = replace(self.plan, paths=paths, tools=replace(self.plan.tools, python=str(paths.state / "venv/bin/python")))
            with self._change(f"Stopping {name} (no longer in djship.toml; its files stay in {paths.state})"):
                with SSHConnector(target) as connector:
                    try:
                        Supervisor(plan, connector).shutdown()
                    except DjshipError as error:
                        self.reporter.note(f"could not stop {name}: {error}; stop it yourself")

    # -- releases ---------------------------------------------------------------------------------------------

    def _on(self, side: Side, release: Release) -> Release:
        """The release as it lies on that host."""
        return Release(release.id, side.plan.paths.releases / release.id)

    def _archive(self, release_id: str) -> Path:
        return self.control.releases / release_id / "code.tar.gz"

    def _build(self, wheelhouse: shipping.Wheelhouse) -> Release:
        """One release, packed once here and installed on every app host."""
        release_id = new_release_id(self.control_plan)
        archive = self._archive(release_id)
        with self._change(f"Packing the project code as release {release_id}"):
            archive.parent.mkdir(parents=True, exist_ok=True)
            archive.write_bytes(shipping.pack_code(self.plan.project_dir, self.plan.exclude, self.control.state))
            (archive.parent / "release.json").write_text(json.dumps(
                {"id": release_id, "created": time.time(), "wheelhouse": wheelhouse.key}) + "\n")
        try:
            with self.reporter.step(f"Shipping release {release_id} to {len(self.app_sides)} app hosts (offline install, "
                                    "check --deploy, collectstatic)"):
                on_each(self._app_sides_by_host(), lambda side: self._install(side, release_id, wheelhouse))
        except BaseException:
            self.discard_release(Release(release_id, archive.parent))
            raise
        return Release(release_id, archive.parent)

    def _app_sides_by_host(self) -> dict[str, Side]:
        return {side.name: side for side in self.app_sides.values()}

    def _installed(self, side: Side, release_id: str) -> bool:
        return side.connector.get(side.plan.paths.releases / release_id / "release.json") is not None

    def _install(self, side: Side, release_id: str, wheelhouse: shipping.Wheelhouse) -> None:
        if self._installed(side, release_id):
            return
        plan, connector = side.plan, side.connector
        release = Release(release_id, plan.paths.releases / release_id)
        builder = ReleaseBuilder(plan, connector, self.reporter, log_dir=self.control.logs / side.name)
        try:
            shipping.require_python(connector, side.python, wheelhouse)
            shipping.upload_wheelhouse(connector, wheelhouse, plan.paths.wheels)
            archive = self._archive(release_id)
            if not archive.is_file():
                raise DjshipError(f"release {release_id}'s code archive {archive} is gone, so {side.name} cannot get "
                                  "the release the others run; run `djship deploy` to ship a new one to every app host")
            shipping.unpack_code(connector, archive.read_bytes(), release.app)
            venv = plan.paths.venvs / wheelhouse.key
            requirements = release.dir / "requirements.txt"  # the file the wheels were built from, wherever it lives
            connector.put(requirements, plan.requirements.read_bytes())
            shipping.ensure_venv(connector, side.python, venv, wheelhouse.on_host(plan.paths.wheels), requirements,
                                 RUNTIME_PACKAGES)
            connector.symlink(release.venv, venv)
            builder.write_settings(release)
            connector.makedirs(release.static, owner=plan.service_user)
            builder.manage(release, "check", "--deploy", "--fail-level", "WARNING", what=f"manage.py check --deploy on {side.name}")
            builder.manage(release, "collectstatic", "--noinput", what=f"collectstatic on {side.name}")
            connector.put(release.dir / "release.json", json.dumps({"id": release_id, "created": time.time()}) + "\n")
        except BaseException:
            connector.run(["rm", "-rf", "--", str(release.dir)])
            raise

    # What deploy, rollback (rolling.Rollout) need of a system; LocalSystem has the same.

    def current(self) -> Release | None:
        """The release the app hosts serve: what `current` points at on the first app host that has one."""
        for side in self._app_sides_by_host().values():
            if side.name in self.unreachable:
                continue
            link = side.connector.readlink(side.plan.paths.current)
            if link is not None:
                return Release(link.name, self.control.releases / link.name)
        return None

    def live_release(self) -> Release:
        release = self.current()
        if release is None or not all(side.running("haproxy") for side in self.lb_sides):
            raise DjshipError("the system is not running on its hosts; start it with `djship up` first")
        return release

    @property
    def lock_file(self) -> Path:
        return self.control.deploy_lock

    def build_release(self) -> Release:
        return self._build(self._wheelhouse())

    def migrate(self, release: Release) -> None:
        side = next(iter(self._app_sides_by_host().values()))
        ReleaseBuilder(side.plan, side.connector, self.reporter, log_dir=self.control.logs / side.name).migrate(
            self._on(side, release))

    def discard_release(self, release: Release) -> None:
        def discard(side: Side) -> None:
            side.connector.run(["rm", "-rf", "--", str(side.plan.paths.releases / release.id)])

        on_each(self._app_sides_by_host(), discard)
        shutil.rmtree(self.control.releases / release.id, ignore_errors=True)

    def releases(self) -> list[Release]:
        """The releases kept here (each one's code archive), oldest first."""
        if not self.control.releases.is_dir():
            return []
        # Only releases shipped to hosts: those of a one-machine run in the same .djship/ have no code archive.
        return [Release.at(directory) for directory in sorted(self.control.releases.iterdir(), key=lambda p: p.name)
                if (directory / "release.json").is_file() and self._archive(directory.name).is_file()]

    def release_of(self, server: AppServer) -> Release | None:
        link = self.app_sides[server.name].connector.readlink(server.release_link)
        return None if link is None else Release(link.name, self.control.releases / link.name)

    def run_release(self, server: AppServer, release: Release) -> None:
        side = self.app_sides[server.name]
        side.connector.symlink(server.release_link, self._on(side, release).dir)
        point_server(server, side.connector, read_live(side.plan, side.connector))
        gunicorn, _ = server.programs
        side.supervisor.restart(gunicorn)
        self.wait_healthy(server, release)

    def set_current(self, release: Release) -> None:
        on_each(self._app_sides_by_host(), lambda side: side.connector.symlink(side.plan.paths.current,
                                                                             self._on(side, release).dir))

    def prune_releases(self) -> list[str]:
        releases = self.releases()
        running = [self.release_of(server) for server in self.plan.app_servers] + [self.current()]
        in_use = {release.id for release in running if release is not None}
        removable = [release for release in releases[: -self.plan.keep_releases] if release.id not in in_use]
        for release in removable:
            self.discard_release(release)
        return [release.id for release in removable]

    def wait_healthy(self, server: AppServer, release: Release) -> None:
        """Health-checked from a balancer host: the only place an app server accepts requests from."""
        lb = self.lb_sides[0]
        appserver.wait_healthy(
            self.plan, server, release.id,
            lambda: appserver.health_from(lb.connector, lb.plan.tools.python, self.plan, server),
            f"`djship logs {server.name}`",
        )

    def out_of_rotation(self, servers: tuple[AppServer, ...]):
        return out_of_rotation(self.balancers, servers, self.plan, self.reporter)

    # -- status, logs, down ------------------------------------------------------------------------------------

    def status(self) -> dict:
        """The same report as on one machine, each component naming its host; a host that does not answer is
        listed with why, its components as UNREACHABLE."""
        answering = {name: side for name, side in self.sides.items() if name not in self.unreachable}
        views = on_each(answering, lambda side: side.statuses())
        balancer_views = {side.name: instance.states() for side, instance in zip(self.lb_sides, self.balancers)
                          if views.get(side.name)}
        balancer_view = next(iter(balancer_views.values()), {})
        plan = self.plan

        def entry(side: Side, name: str, role: str, address: str, health: str, server: str | None = None) -> dict:
            process = views.get(side.name, {}).get(name)
            state = "UNREACHABLE" if side.name in self.unreachable else process.state if process else "STOPPED"
            return {
                "name": name, "role": role, "server": server, "host": side.name, "address": address,
                "pid": process.pid if process else None, "state": state,
                "health": health if process and process.state == "RUNNING" else "down",
            }

        components = [
            entry(side, "haproxy", "balancer", f"{side.host.target.address}:{plan.https_port}",
                  "up" if balancer_views.get(side.name) else "down")
            for side in self.lb_sides
        ]
        for server, side in self._app_items():
            view = balancer_view.get(server.name)
            health = view.status.lower() if view else "unknown"
            gunicorn, nginx = server.programs
            components.append(entry(side, nginx, "app", server.endpoint, health, server.name))
            components.append(entry(side, gunicorn, "app", f"unix:{server.socket}", health, server.name))
        db = self.db_side
        ready = bool(views.get(db.name)) and DatabaseServer(db.plan, db.connector).is_ready()
        components.append(entry(db, "postgres", "database", plan.database.endpoint, "accepting" if ready else "down"))
        release = self.current()
        info = site_info(self.control_plan, self.local)
        return {
            "url": plan.url,
            "ca_path": str(self.control.ca_cert) if plan.local_ca_cert else None,
            "running": any(views.values()),
            "release": release.id if release else None,
            "database": read_live(db.plan, db.connector).database if db.name in answering else None,
            "supervisor_pid": None,
            "hosts": [{"name": side.name, "address": side.host.target.address, "roles": list(side.host.roles),
                       "supervisor": bool(views.get(side.name)), "problem": self.unreachable.get(side.name)}
                      for side in self.sides.values()],
            "components": components,
            "tls": {"mode": plan.tls.mode, "certificate": info.to_json() if info else None, "renewal": None},
        }

    def log_files(self, component: str | None) -> list[tuple[Side, Path]]:
        """(host, log file) for a component, an app server, a host name, or everything."""
        chosen = []
        for side in self.sides.values():
            names = ["supervisord", *(program.name for program in render.programs(side.plan))]
            servers = {server.name for server in side.plan.servers_here}
            if component is None:
                picked = names
            elif component == side.name:  # a host: everything on it, its app servers' access logs too
                picked = [*names, *(f"{server}-nginx-access" for server in sorted(servers))]
            elif component in names:
                picked = [component]
            elif component in servers:
                picked = [f"{component}-nginx", f"{component}-nginx-access", f"{component}-gunicorn"]
            else:
                picked = []
            chosen += [(side, side.plan.paths.logs / f"{name}.log") for name in picked]
        if not chosen:
            known = sorted({*self.sides, *(program.name for side in self.sides.values()
                                           for program in render.programs(side.plan))})
            raise DjshipError(f"no component or host {component!r}; choose one of: {', '.join(known)}")
        return chosen

    def tail(self, component: str | None, lines: int, follow: bool, emit: Callable[[str], None]) -> None:
        """The last lines of each log, every line prefixed with its host and file; with follow, new lines as they
        come, from every host at once, until interrupted."""
        by_host: dict[str, list[Path]] = {}
        for side, path in self.log_files(component):
            by_host.setdefault(side.name, []).append(path)

        def read(side: Side) -> None:
            argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), *map(str, by_host[side.name])]
            current = [""]

            def line(text: str) -> None:
                if text.startswith("==> ") and text.endswith(" <=="):
                    current[0] = Path(text[4:-4]).stem
                elif text.strip():
                    emit(f"{side.name} {current[0]} | {text}")

            side.connector.stream(argv, line)

        targets = {name: self.sides[name] for name in by_host}
        if not follow:
            on_each(targets, read)
            return
        readers = [threading.Thread(target=read, args=(side,), daemon=True) for side in targets.values()]
        for reader in readers:
            reader.start()
        while any(reader.is_alive() for reader in readers):  # until Ctrl-C, or every host's SSH is gone
            time.sleep(0.5)

    def manage(self, args: list[str], emit: Callable[[str], None]) -> int:
        """manage.py ARGS in the live release on the first app host, as the app runs; its output as it comes (no
        terminal: interactive commands need their --noinput form). Returns its exit code."""
        release = self.live_release()
        side = next(iter(self._app_sides_by_host().values()))
        on_host = self._on(side, release)
        return side.connector.stream(
            [str(on_host.python), str(on_host.app / "manage.py"), *args], emit,
            user=side.plan.service_user, env=on_host.environment(), cwd=on_host.app,
        )

    def down(self) -> bool:
        """Stop every process, balancers first, database last; every file and row stays."""
        running = {name for name, pid in on_each(self.sides, lambda side: side.supervisor.pid()).items() if pid}
        if not running:
            return False

        def stop(role: str, programs: Callable[[Side], list[str]], title: str) -> None:
            targets = {name: side for name, side in self.sides.items() if name in running and side.plan.holds(role)}
            if targets:
                with self.reporter.step(title):
                    on_each(targets, lambda side: side.supervisor.stop(*programs(side)))

        stop("lb", lambda side: ["haproxy"], "Stopping the load balancers")
        stop("app", lambda side: [name for server in side.plan.servers_here for name in server.programs],
             "Stopping the app servers")
        stop("db", lambda side: ["postgres"], f"Stopping PostgreSQL on {self.db_side.name} (data stays)")
        with self.reporter.step(f"Stopping the supervisor on {len(running)} hosts"):
            on_each({name: self.sides[name] for name in running}, lambda side: side.supervisor.shutdown())
        return True


