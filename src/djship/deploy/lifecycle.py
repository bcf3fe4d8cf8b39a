"""Bringing the whole system up on this machine, reporting on it, and taking it down."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from djship import render
from djship.components import appserver, balancer, boot, orphans
from djship.components.database import DatabaseServer
from djship.components.supervisor import Supervisor
from djship.config import load_config
from djship.connectors import CommandFailed, Connector
from djship.connectors.local import LocalConnector
from djship.deploy.live import Live, read_live
from djship.deploy.lock import exclusive
from djship.deploy.release import Release, ReleaseBuilder, current_release, list_releases, prune_releases
from djship.errors import DjshipError
from djship.plan import RENEWAL_PROGRAM, AppServer, Plan, build_plan
from djship.progress import Reporter
from djship.tls import renewal
from djship.tls.certificates import leaf_der
from djship.tls.site import BalancerHost, acme_certificate_is_current, ensure_certificate, fetch_staple, install, \
    obtain_acme, site_info, staple_due, validated_files, write_staple
from djship.tools import find_tools
from djship.waiting import wait_until

READY_TIMEOUT = 60
ROTATION_TIMEOUT = 30
# The renewal timer fetches a missing or half-expired OCSP staple at most this often (seconds).
STAPLE_RETRY = 3600
_CERTIFICATE_STEP = {
    "local": "Local CA and site certificate",
    "files": "Site certificate from tls.cert_file and tls.key_file",
    "acme": "Site certificate (ACME; a placeholder until the first one is obtained)",
}
_APP_PROGRAM = re.compile(r"^(?P<server>app\d+)-(gunicorn|nginx)$")


def load_plan(project_dir: Path) -> Plan:
    config = load_config(project_dir)
    if config.remote:
        raise DjshipError(
            "djship.toml lists remote hosts ([servers]); on real hosts djship runs up, deploy, rollback, releases, "
            "status, logs, manage, down and hosts so far; this command works on the one-machine target only"
        )
    return build_plan(config, project_dir, find_tools(), running_as_root=os.geteuid() == 0)


@dataclass(frozen=True)
class Secrets:
    secret_key: str
    database_password: str
    superuser_password: str


def _read_json(connector: Connector, path: Path) -> dict | None:
    content = connector.get(path)
    return json.loads(content) if content else None


def ensure_secrets(plan: Plan, connector: Connector) -> Secrets:
    """Generated once and kept: a new SECRET_KEY would log everyone out, a new password would lock the app out."""
    connector.makedirs(plan.paths.secrets, mode=0o711)
    app = _read_json(connector, plan.paths.app_secrets)
    if app is None:
        app = {"secret_key": secrets.token_urlsafe(50), "database_password": secrets.token_urlsafe(24)}
    connector.put(plan.paths.app_secrets, json.dumps(app, indent=2) + "\n", mode=0o600, owner=plan.service_user)
    admin = _read_json(connector, plan.paths.admin_secrets)
    if admin is None:
        admin = {"postgres_password": secrets.token_urlsafe(24)}
        connector.put(plan.paths.admin_secrets, json.dumps(admin, indent=2) + "\n", mode=0o600)
    return Secrets(app["secret_key"], app["database_password"], admin["postgres_password"])


def read_secrets(plan: Plan, connector: Connector) -> Secrets:
    """The secrets of a system that has been up; never makes new ones (that is `up`'s job)."""
    app, admin = _read_json(connector, plan.paths.app_secrets), _read_json(connector, plan.paths.admin_secrets)
    if app is None or admin is None:
        raise DjshipError(f"no secrets in {plan.paths.secrets}; run `djship up` first")
    return Secrets(app["secret_key"], app["database_password"], admin["postgres_password"])


def ensure_service_user(plan: Plan, connector: Connector) -> None:
    if plan.service_user is None or connector.run(["id", "-u", plan.service_user]).ok:
        return
    result = connector.run([
        "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
        "--shell", "/usr/sbin/nologin", plan.service_user,
    ])
    if not result.ok:
        raise DjshipError(f"cannot create the service user {plan.service_user}: {result.stderr.strip()}")


def prepare_state_dir(plan: Plan, connector: Connector) -> None:
    owner = plan.service_user
    paths = plan.paths
    connector.makedirs(paths.state, mode=0o755)
    for directory in (paths.logs, paths.releases, paths.venvs, paths.servers):
        connector.makedirs(directory)
    connector.makedirs(paths.supervisor, mode=0o700)
    connector.makedirs(paths.balancer, mode=0o700, owner=owner)
    connector.makedirs(paths.media, mode=0o755, owner=owner)
    live = read_live(plan, connector)
    for server in plan.servers_here:
        connector.makedirs(server.dir, mode=0o700, owner=owner)
        connector.makedirs(server.nginx_temp, mode=0o700, owner=owner)
        if connector.readlink(server.media_link) is None:  # nginx's /media/ alias must exist before nginx (re)starts
            point_server(server, connector, live)
        if connector.get(server.access_log) is None:
            connector.put(server.access_log, "", owner=owner)
    if owner and not connector.run(["test", "-x", str(paths.state)], user=owner).ok:
        raise DjshipError(
            f"the service user {owner} cannot reach {paths.state} (a parent directory is not searchable by others, "
            "e.g. /root); move the project, or set state_dir in djship.toml to a directory such as /srv/djship/site"
        )


def listening_endpoints(plan: Plan) -> list[tuple[str, int, str]]:
    endpoints = [
        (plan.balancer_bind, plan.https_port, "balancer.https_port"),
        (plan.balancer_bind, plan.http_port, "balancer.http_port"),
        (plan.database.address, plan.database.port, "database.port"),
    ]
    endpoints += [(server.address, server.port, "app.port") for server in plan.app_servers]
    return endpoints


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return True
    return False


def check_ports_free(endpoints: list[tuple[str, int, str]]) -> None:
    """endpoints: (address, port, the djship.toml key that sets the port)."""
    for address, port, key in endpoints:
        if _port_in_use(address, port):
            raise DjshipError(
                f"port {port} on {address} is already in use by another program; stop that program "
                f"or change {key} in djship.toml"
            )


def write_system_files(plan: Plan, connector: Connector) -> list[render.ConfigFile]:
    """Write every rendered config file; return the ones whose content changed."""
    changed = []
    for file in render.system_files(plan):
        owner = plan.service_user if file.path.is_relative_to(plan.database.data_dir) else None
        if connector.put(file.path, file.text, owner=owner):
            changed.append(file)
    return changed


def point_server(server: AppServer, connector: Connector, live: Live) -> None:
    """The database and media directory the server's gunicorn uses from its next start."""
    connector.put(server.live_file, live.to_json(), mode=0o644)
    connector.symlink(server.media_link, live.media)


def others_in_rotation(balancers: list[balancer.Balancer], leaving: set[str]) -> list[str]:
    """The app servers, other than those leaving, that every balancer is sending requests to."""
    views = [instance.states() for instance in balancers]
    names = set.intersection(*({name for name, state in view.items() if state.status == "UP"} for view in views))
    return sorted(names - leaving)


@contextmanager
def out_of_rotation(
    balancers: list[balancer.Balancer], servers: tuple[AppServer, ...], plan: Plan, reporter: Reporter
) -> Iterator[None]:
    """Drain these servers in every balancer and wait for their requests in flight; afterwards put them back into
    rotation and wait until the balancers see them UP. Refuses when no other server would be left serving."""
    names = ", ".join(server.name for server in servers)
    if not others_in_rotation(balancers, {server.name for server in servers}):
        raise DjshipError(
            f"taking {names} out would leave no app server in rotation; "
            + ("run `djship scale 2` first" if len(plan.app_servers) == 1 else "lower deploy.batch_size, "
               "or run `djship up` to bring every server back into rotation")
        )

    def set_state(state: str) -> None:
        for instance in balancers:
            for server in servers:
                instance.set_state(server.name, state)

    with reporter.step(f"Draining {names} (no new requests; waiting for those in flight)"):
        set_state("drain")
        for instance in balancers:
            for server in servers:
                instance.wait_drained(server.name, plan.balancer_timeout)
    try:
        yield
    except BaseException:
        set_state("ready")  # the balancers' own health checks decide whether they serve
        raise
    with reporter.step(f"Putting {names} back into rotation"):
        set_state("ready")
        for instance in balancers:
            for server in servers:
                instance.wait_status(server.name, "UP", ROTATION_TIMEOUT)


def take_out_for_good(instance: balancer.Balancer, names: list[str], timeout: float) -> None:
    """Drain app servers that are leaving the system, wait for their requests in flight, then take them out
    (maintenance) until the balancer's next configuration no longer lists them."""
    for name in names:
        instance.set_state(name, "drain")
    for name in names:
        instance.wait_drained(name, timeout)
        instance.set_state(name, "maint")


@dataclass(frozen=True)
class UpResult:
    url: str
    ca_cert: Path | None
    """The CA to trust in local mode; None when the certificate comes from an ACME CA or the user's files."""
    release: str
    changed: bool


class LocalSystem:
    """The whole system on this machine: one supervisord, PostgreSQL, N app servers, HAProxy."""

    def __init__(self, plan: Plan, reporter: Reporter, connector: Connector | None = None):
        self.plan = plan
        self.reporter = reporter
        self.connector = connector or LocalConnector()
        self.supervisor = Supervisor(plan, self.connector)
        self.database = DatabaseServer(plan, self.connector)
        self.balancer = balancer.Balancer(plan.paths.haproxy_socket)

    @property
    def program_names(self) -> list[str]:
        return [program.name for program in render.programs(self.plan)]

    def up(self) -> UpResult:
        if self.plan.tls.mode == "files":  # before anything starts or changes
            validated_files(self.plan, self.connector)
        bundle = self.plan.tls.acme_ca_bundle
        if self.plan.tls.mode == "acme" and bundle is not None and not bundle.is_file():
            raise DjshipError(f"tls.acme_ca_bundle: {bundle} is not a file; point it at the PEM CA bundle that "
                              "verifies the ACME directory's HTTPS certificate, or remove the key to use the system's")
        found = orphans.orphans(self.connector, self.plan) if self.supervisor.pid() is None else []
        if found or self.supervisor.pid() is not None:
            with exclusive(self.plan.paths.deploy_lock, "up"):
                if found:
                    self._adopt(found)
                result = self.reconcile()
                return self._registered(replace(result, changed=True) if found else result)
        check_ports_free(listening_endpoints(self.plan))
        try:
            started = self._start()
        except BaseException:
            if self.supervisor.pid() is not None:
                self.reporter.note("Stopping what this run started (nothing is deleted)")
                self.supervisor.shutdown()
            raise
        return self._registered(started)

    def _registered(self, result: UpResult) -> UpResult:
        """With the init system, so that it comes back after a reboot or a supervisor crash."""
        registered = boot.register(self.connector, self.plan)
        if result.changed:
            self.reporter.note(registered)
        return result

    def _adopt(self, found: list[orphans.Orphan]) -> None:
        orphans.adopt(
            self.connector, self.plan, self.supervisor, self.balancer, found,
            lambda server: self.wait_healthy(server, self.release_of(server)),
            lambda: wait_until("the load balancer", self._balancer_ready, READY_TIMEOUT,
                               f"see {self.plan.paths.logs / 'haproxy.log'}"),
            self.reporter,
        )

    def _start(self) -> UpResult:
        plan, connector = self.plan, self.connector
        with self.reporter.step(f"Preparing the state directory {plan.paths.state}"):
            ensure_service_user(plan, connector)
            prepare_state_dir(plan, connector)
            secrets_ = ensure_secrets(plan, connector)
        with self.reporter.step(_CERTIFICATE_STEP[plan.tls.mode]):
            ensure_certificate(plan, connector)
            self.refresh_staple()
        if not self.database.initialized():
            with self.reporter.step(f"Creating the PostgreSQL cluster in {plan.database.data_dir}"):
                self.database.init_cluster(secrets_.superuser_password)
        write_system_files(plan, connector)
        with self.reporter.step("Starting the supervisor (supervisord)"):
            self.supervisor.start_daemon()
        with self.reporter.step(f"Starting PostgreSQL on {plan.database.endpoint}"):
            self.supervisor.start("postgres")
            self.database.wait_ready(READY_TIMEOUT)
        live_database = read_live(plan, connector).database
        with self.reporter.step(f"Database {live_database!r} and role {plan.database.user!r}"):
            self.database.ensure_app_database(secrets_.superuser_password, secrets_.database_password, live_database)
        release = current_release(plan)
        if release is None:
            builder = ReleaseBuilder(plan, connector, self.reporter)
            release = builder.build()
            with self.reporter.step("Migrating the database (once, before any app server starts)"):
                builder.migrate(release)
            self.connector.symlink(plan.paths.current, release.dir)
        else:
            self.reporter.note(f"Using release {release.id}")
        for server in plan.app_servers:
            self.start_app_server(server, release)
        self._start_balancer()
        if plan.tls.mode == "acme":
            self._ensure_acme_certificate()
            with self.reporter.step("Starting the certificate renewal timer"):
                self.supervisor.start(RENEWAL_PROGRAM)
        self._start_backup_scheduler()
        return UpResult(plan.url, plan.local_ca_cert, release.id, changed=True)

    @property
    def balancer_hosts(self) -> list[BalancerHost]:
        return [BalancerHost(self.connector, self.balancer)]

    def _ensure_acme_certificate(self) -> bool:
        """Obtain and install an ACME certificate unless the served one is current; returns whether it did."""
        if acme_certificate_is_current(self.plan, self.connector, site_info(self.plan, self.connector)):
            return False
        with self.reporter.step(f"Certificate for {', '.join(self.plan.domains)} from {self.plan.tls.acme_directory}"):
            self.renew_certificate()
        return True

    def renew_certificate(self) -> None:
        """A new ACME certificate, installed into every balancer without a reload; recorded for `djship status`."""

        def renew() -> str:
            bundle = obtain_acme(self.plan, self.connector, self.balancer_hosts)
            install(self.plan, self.balancer_hosts, bundle, self._staple_for(bundle))
            wait_until(
                "the load balancer serving the new certificate", self._balancer_ready, READY_TIMEOUT,
                f"see {self.plan.paths.logs / 'haproxy.log'}",
            )
            return site_info(self.plan, self.connector).serial

        renewal.attempt(self.plan, self.connector, renew)

    def renew(self, force: bool) -> bool:
        """`djship certs renew`: renew now if due (or always with force); returns whether it renewed."""
        if self.plan.tls.mode != "acme":
            raise DjshipError(
                f"tls.mode is {self.plan.tls.mode!r}: only ACME certificates are renewed by djship "
                + ("(the local CA's are reissued by `djship up`)" if self.plan.tls.mode == "local" else
                   "(point tls.cert_file and tls.key_file at the new files and run `djship up`)")
            )
        haproxy = self.supervisor.status().get("haproxy") if self.supervisor.pid() else None
        if haproxy is None or haproxy.state != "RUNNING":
            raise DjshipError("the load balancer is not running, and it answers the ACME challenge; run `djship up` first")
        if not force and acme_certificate_is_current(self.plan, self.connector, site_info(self.plan, self.connector)):
            return False
        self.renew_certificate()
        return True

    def _staple_for(self, bundle: bytes) -> bytes | None:
        return fetch_staple(self.plan, self.connector, bundle, self.reporter.note)

    def refresh_staple(self) -> bool:
        """Fetch site.pem.ocsp for HAProxy's next start or reload when it is missing or half expired; returns
        whether it changed."""
        if not staple_due(self.plan, self.connector):
            return False
        return write_staple(self.plan, self.connector, self._staple_for(self.connector.get(self.plan.paths.site_pem)))

    def watch_renewals(self, log) -> None:
        """The renewal timer's loop (the supervised program `renewal`); never returns."""

        def site() -> tuple:
            info = site_info(self.plan, self.connector)
            return info, acme_certificate_is_current(self.plan, self.connector, info)

        last_staple_attempt = [-STAPLE_RETRY]

        def refresh_live_staple() -> None:
            if not staple_due(self.plan, self.connector) or time.monotonic() - last_staple_attempt[0] < STAPLE_RETRY:
                return
            last_staple_attempt[0] = time.monotonic()
            bundle = self.connector.get(self.plan.paths.site_pem)
            staple = self._staple_for(bundle)
            if staple != self.connector.get(self.plan.paths.site_ocsp):
                install(self.plan, self.balancer_hosts, bundle, staple)
                log("OCSP response for stapling " + ("refreshed" if staple else "removed"))

        renewal.watch(self.plan, self.connector, site, self.renew_certificate, log, maintain=refresh_live_staple)

    def _start_backup_scheduler(self) -> None:
        if self.plan.backup.schedule:
            with self.reporter.step(f"Starting the daily backup at {self.plan.backup.schedule} UTC ({render.BACKUP_SCHEDULER})"):
                self.supervisor.start(render.BACKUP_SCHEDULER)

    def start_app_server(self, server: AppServer, release: Release) -> None:
        with self.reporter.step(f"Starting app server {server.name}: nginx + gunicorn on {server.endpoint}"):
            self.connector.symlink(server.release_link, release.dir)
            point_server(server, self.connector, read_live(self.plan, self.connector))
            self.supervisor.start(*server.programs)
            self.wait_healthy(server, release)

    def wait_healthy(self, server: AppServer, release: Release) -> None:
        """Until the server answers its health check, through nginx and gunicorn, from this release."""
        appserver.wait_healthy(
            self.plan, server, release.id, lambda: appserver.health(self.plan, server),
            str(self.plan.paths.logs / f"{server.name}-gunicorn.log"),
        )

    # What deploy, rollback and restore need of a system (see rolling.Rollout); a remote target has the same.

    def live_release(self) -> Release:
        """The release in service; refuses when the system is not running."""
        release = current_release(self.plan)
        statuses = self.supervisor.status() if self.supervisor.pid() else {}
        if release is None or statuses.get("haproxy") is None or statuses["haproxy"].state != "RUNNING":
            raise DjshipError("the system is not running; start it with `djship up` first")
        return release

    def current(self) -> Release | None:
        """The release new app servers start on (also when nothing runs)."""
        return current_release(self.plan)

    @property
    def lock_file(self) -> Path:
        return self.plan.paths.deploy_lock

    def build_release(self) -> Release:
        return ReleaseBuilder(self.plan, self.connector, self.reporter).build()

    def migrate(self, release: Release) -> None:
        ReleaseBuilder(self.plan, self.connector, self.reporter).migrate(release)

    def discard_release(self, release: Release) -> None:
        shutil.rmtree(release.dir, ignore_errors=True)

    def releases(self) -> list[Release]:
        return list_releases(self.plan)

    def release_of(self, server: AppServer) -> Release | None:
        return Release.at(server.release_link.resolve()) if server.release_link.is_symlink() else None

    def run_release(self, server: AppServer, release: Release) -> None:
        """nginx follows the release link by itself (static files); only gunicorn restarts, on the live database
        (so a restore killed half-way is undone server by server, not left half-done)."""
        self.connector.symlink(server.release_link, release.dir)
        point_server(server, self.connector, read_live(self.plan, self.connector))
        self.restart_app(server, release)

    def restart_app(self, server: AppServer, release: Release) -> None:
        """Restart the server's gunicorn (it reads its settings anew) and wait until its health check passes."""
        gunicorn, _ = server.programs
        self.supervisor.restart(gunicorn)
        self.wait_healthy(server, release)

    def set_current(self, release: Release) -> None:
        self.connector.symlink(self.plan.paths.current, release.dir)

    def prune_releases(self) -> list[str]:
        """Delete the oldest releases beyond keep_releases, never one in use; return their ids."""
        in_use = {server.release_link.resolve() for server in self.plan.app_servers} | {self.plan.paths.current.resolve()}
        return prune_releases(self.plan, in_use)

    def _balancer_ready(self) -> tuple[bool, str]:
        states = self.balancer.states()
        down = [name for name in (s.name for s in self.plan.app_servers) if states.get(name, None) is None
                or states[name].status != "UP"]
        if down:
            return False, f"waiting for health checks of {', '.join(down)}"
        bundle = self.connector.get(self.plan.paths.site_pem)
        status = balancer.https_probe(
            self.plan.balancer_bind, self.plan.https_port, self.plan.domains[0], self.plan.health_path,
            leaf_der(bundle) if bundle else b"",
        )
        return status == 200, f"HTTPS health check with the certificate in {self.plan.paths.site_pem} answered {status}"

    def _start_balancer(self) -> None:
        with self.reporter.step(f"Starting the load balancer (HAProxy) on {self.plan.url}"):
            self.supervisor.start("haproxy")
            wait_until(
                "the load balancer", self._balancer_ready, READY_TIMEOUT, f"see {self.plan.paths.logs / 'haproxy.log'}"
            )

    def others_in_rotation(self, leaving: set[str]) -> list[str]:
        return others_in_rotation([self.balancer], leaving)

    def out_of_rotation(self, servers: tuple[AppServer, ...]):
        return out_of_rotation([self.balancer], servers, self.plan, self.reporter)

    def _configured_server_names(self) -> set[str]:
        """The app servers the running supervisord knows, whatever djship.toml says now."""
        return {match["server"] for name in self.supervisor.status() if (match := _APP_PROGRAM.match(name))}

    def reconcile(self) -> UpResult:
        """`up` on a running system: bring it to what djship.toml says without failing a request, or change
        nothing. Removed app servers are drained before they stop; added ones join the balancer once healthy;
        servers whose configuration changed restart one at a time out of rotation; HAProxy reloads seamlessly."""
        plan = self.plan
        release = current_release(plan)
        if release is None:
            raise DjshipError(
                f"supervisord is running for {plan.paths.state} but there is no release; run `djship down`, then `djship up`"
            )
        balancer_running = self.supervisor.status().get("haproxy")
        balancer_running = balancer_running is not None and balancer_running.state == "RUNNING"
        configured = self._configured_server_names()
        removed = sorted(configured - {server.name for server in plan.app_servers})
        check_ports_free([(s.address, s.port, "app.address_prefix") for s in plan.app_servers if s.name not in configured])
        if removed and balancer_running:
            self._take_out_for_good(removed)
        prepare_state_dir(plan, self.connector)
        changed_files = write_system_files(plan, self.connector)
        reconfigured: set[str] = set()
        if any(file.path == plan.paths.supervisor_conf for file in changed_files):
            with self.reporter.step("Applying the supervisor's new configuration"):
                reconfigured = self.supervisor.reload_config()
            for name in removed:
                shutil.rmtree(plan.paths.servers / name, ignore_errors=True)
        # The balancer and the database pick up new supervisor settings at their next restart, not now.
        changed = {program for file in changed_files for program in file.programs} | (reconfigured - {"haproxy", "postgres"})
        if ensure_certificate(plan, self.connector) | self.refresh_staple():
            changed.add("haproxy")
        statuses = self.supervisor.status()
        not_running = {name for name in self.program_names if statuses.get(name) is None or statuses[name].state != "RUNNING"}
        out_of_rotation = [
            name for name, state in self.balancer.states().items()
            if state.status.startswith(("DRAIN", "MAINT"))
        ]
        certificate_due = plan.tls.mode == "acme" and not acme_certificate_is_current(
            plan, self.connector, site_info(plan, self.connector))
        if not (removed or changed or not_running or out_of_rotation or certificate_due):
            return UpResult(plan.url, plan.local_ca_cert, release.id, changed=False)
        if "postgres" in not_running:
            with self.reporter.step("Starting PostgreSQL"):
                self.supervisor.start("postgres")
                self.database.wait_ready(READY_TIMEOUT)
        elif "postgres" in changed:
            with self.reporter.step("Restarting PostgreSQL (its configuration changed)"):
                self.supervisor.restart("postgres")
                self.database.wait_ready(READY_TIMEOUT)
        for server in plan.app_servers:
            if set(server.programs) & not_running:
                self.start_app_server(server, release)
            elif set(server.programs) & changed:
                self._restart_in_rotation(server, [name for name in server.programs if name in changed], reconfigured)
        if "haproxy" in not_running:
            self._start_balancer()
        elif "haproxy" in changed:
            self._reload_balancer()
        elif out_of_rotation:
            with self.reporter.step(f"Putting {', '.join(out_of_rotation)} back into rotation"):
                for name in out_of_rotation:
                    self.balancer.set_state(name, "ready")
        if plan.tls.mode == "acme":
            try:
                self._ensure_acme_certificate()
            finally:  # also after a failed order: the timer retries it with back-off
                # The timer read djship.toml when it started: restart it so it renews for what the file says now.
                with self.reporter.step("Restarting the certificate renewal timer"):
                    self.supervisor.restart(RENEWAL_PROGRAM, reconfigure=reconfigured)
        if render.BACKUP_SCHEDULER in not_running:
            self._start_backup_scheduler()
        elif render.BACKUP_SCHEDULER in changed:
            with self.reporter.step(f"Restarting {render.BACKUP_SCHEDULER} (its schedule changed)"):
                self.supervisor.restart(render.BACKUP_SCHEDULER, reconfigure=reconfigured)
        return UpResult(plan.url, plan.local_ca_cert, release.id, changed=True)

    def _take_out_for_good(self, names: list[str]) -> None:
        with self.reporter.step(f"Draining {', '.join(names)} before removing them"):
            if not self.others_in_rotation(set(names)):
                raise DjshipError(f"removing {', '.join(names)} would leave no app server in rotation")
            take_out_for_good(self.balancer, names, self.plan.balancer_timeout)

    def _restart_in_rotation(self, server: AppServer, programs: list[str], reconfigured: set[str]) -> None:
        running_on = Release.at(server.release_link.resolve())

        def restart() -> None:
            with self.reporter.step(f"Restarting {', '.join(programs)} (configuration changed)"):
                self.supervisor.restart(*programs, reconfigure=reconfigured)
                self.wait_healthy(server, running_on)

        if self.others_in_rotation({server.name}):
            with self.out_of_rotation((server,)):
                restart()
        else:
            self.reporter.note(f"{server.name} is the only app server in rotation: it restarts while serving")
            restart()

    def _reload_balancer(self) -> None:
        """A new HAProxy worker takes over the listening sockets; the old one finishes its requests."""
        with self.reporter.step("Reloading the load balancer (no connection is dropped)"):
            check = self.connector.run([self.plan.tools.haproxy, "-c", "-q", "-f", str(self.plan.paths.haproxy_conf)])
            if not check.ok:
                raise CommandFailed(f"haproxy -c {self.plan.paths.haproxy_conf}", check)
            self.supervisor.signal("haproxy", "USR2")
            wait_until(
                "the load balancer", self._balancer_ready, READY_TIMEOUT, f"see {self.plan.paths.logs / 'haproxy.log'}"
            )

    def down(self) -> bool:
        """Stop everything in reverse order; every file and every row stays. Returns whether anything ran."""
        boot.unregister(self.connector, self.plan)
        if self.supervisor.pid() is None:
            found = orphans.orphans(self.connector, self.plan)
            if found:
                with self.reporter.step(f"Stopping what a supervisor that died left running ({len(found)} programs)"):
                    orphans.stop_all(self.connector, self.plan, found)
            return bool(found)
        if self.plan.tls.mode == "acme":
            with self.reporter.step("Stopping the certificate renewal timer"):
                self.supervisor.stop(RENEWAL_PROGRAM)
        with self.reporter.step("Stopping the load balancer"):
            self.supervisor.stop("haproxy")
        with self.reporter.step("Stopping the app servers"):
            self.supervisor.stop(*(name for server in self.plan.app_servers for name in server.programs))
        with self.reporter.step(f"Stopping PostgreSQL (data stays in {self.plan.database.data_dir})"):
            self.supervisor.stop("postgres")
        with self.reporter.step("Stopping the supervisor"):
            self.supervisor.shutdown()
        return True

    def destroy(self) -> None:
        if not self.plan.paths.state.exists():
            raise DjshipError(f"nothing to destroy: {self.plan.paths.state} does not exist")
        self.down()
        boot.uninstall(self.connector, self.plan)
        with self.reporter.step(f"Deleting {self.plan.paths.state} (database, releases, secrets, certificates)"):
            shutil.rmtree(self.plan.paths.state)

    def status(self) -> dict:
        """The topology with live states; the schema is documented in the README (`djship status --json`)."""
        plan = self.plan
        running = self.supervisor.pid() is not None
        processes = self.supervisor.status() if running else orphans.as_statuses(orphans.orphans(self.connector, plan))
        servers = self.balancer.states() if processes else {}
        release = current_release(plan)

        def entry(name: str, role: str, address: str, health: str, server: str | None = None) -> dict:
            process = processes.get(name)
            return {
                "name": name,
                "role": role,
                "server": server,
                "address": address,
                "pid": process.pid if process else None,
                "state": process.state if process else "STOPPED",
                "health": health if process and process.state in ("RUNNING", orphans.UNSUPERVISED) else "down",
            }

        components = [
            entry("haproxy", "balancer", f"{plan.balancer_bind}:{plan.https_port}", "up" if servers else "down")
        ]
        for server in plan.app_servers:
            view = servers.get(server.name)
            health = view.status.lower() if view else "unknown"
            gunicorn, nginx = server.programs
            components.append(entry(nginx, "app", server.endpoint, health, server.name))
            components.append(entry(gunicorn, "app", f"unix:{server.socket}", health, server.name))
        db_health = "accepting" if "postgres" in processes and self.database.is_ready() else "down"
        components.append(entry("postgres", "database", plan.database.endpoint, db_health))
        if plan.backup.schedule:
            components.append(
                entry(render.BACKUP_SCHEDULER, "backup", f"daily {plan.backup.schedule} UTC -> {plan.backup.dir}", "scheduled")
            )
        return {
            "url": plan.url,
            "ca_path": str(plan.local_ca_cert) if plan.local_ca_cert else None,
            "running": running,
            "release": release.id if release else None,
            "database": read_live(plan, self.connector).database,
            "supervisor_pid": self.supervisor.pid() if running else None,
            "components": components,
            "tls": self._tls_status(processes),
            "boot": boot.registration(self.connector, plan).to_json(),
        }

    def _tls_status(self, processes: dict) -> dict:
        info = site_info(self.plan, self.connector)
        report = {"mode": self.plan.tls.mode, "certificate": info.to_json() if info else None, "renewal": None}
        if self.plan.tls.mode == "acme":
            process = processes.get(RENEWAL_PROGRAM)
            report["renewal"] = {
                "pid": process.pid if process else None,
                "state": process.state if process else "STOPPED",
                **asdict(renewal.load(self.plan, self.connector)),
            }
        return report

    def log_files(self, component: str | None) -> list[Path]:
        names = ["supervisord", *self.program_names]
        if component is None:
            chosen = names
        elif component in names:
            chosen = [component]
        elif component in {server.name for server in self.plan.app_servers}:
            chosen = [f"{component}-nginx", f"{component}-nginx-access", f"{component}-gunicorn"]
        else:
            choices = ", ".join([*names, *(server.name for server in self.plan.app_servers)])
            raise DjshipError(f"no component {component!r}; choose one of: {choices}")
        return [self.plan.paths.logs / f"{name}.log" for name in chosen]

    def manage_command(self, args: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment for manage.py in the live release, as the user the app servers run as."""
        release = current_release(self.plan)
        if release is None or self.supervisor.pid() is None or not self.database.is_ready():
            raise DjshipError("the system is not running; start it with `djship up` first")
        argv = [str(release.python), str(release.app / "manage.py"), *args]
        if self.plan.service_user:
            argv = ["runuser", "-u", self.plan.service_user, "--", *argv]
        return argv, {**os.environ, **release.environment()}
