"""One system over a topology of hosts: `up` (decide, then act), `down`, status, logs, manage, certificates, and what
deploy, rollback, scale and restore (deploy/rolling.py) need of it.

One machine is a topology of one host that holds every role; real hosts are the same topology over SSH. Nothing
here asks where a host is: every file and process goes through the host's connector.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

from djship import appenv, render
from djship.changes import Changes, Observed, diff
from djship.components import accounts, appserver, boot, external, jobs, media, offsite, orphans, pooler, redis
from djship.components.balancer import Balancer, ServerState, Traffic, https_probe, remote_sender
from djship.components.database import DatabaseServer
from djship.components.pgbackrest import PgBackRest
from djship.components.replication import Replication, wait_streaming
from djship.connectors import CommandFailed, Connector, on_each
from djship.connectors.local import LocalConnector
from djship.deploy.live import Live, read_live
from djship.deploy.lock import exclusive
from djship.deploy.pipeline import Pipeline
from djship.deploy.release import Release, ReleaseBuilder
from djship.errors import DjshipError
from djship.config import Config
from djship.plan import JOBS_PROGRAM, POOLER_PROGRAM, REDIS_PROGRAM, REDIS_URL, RENEWAL_PROGRAM, AppServer, Paths, Plan, \
    check_budget
from djship.progress import Reporter
from djship.tls import local_ca, renewal
from djship.tls.certificates import leaf_der
from djship.agent import RENEWED
from djship.tls.local_ca import Authority
from djship.tls.site import acme_certificate_is_current, ensure_authority, ensure_certificate, fetch_staple, \
    read_authority, site_info, staple_due, validated_files, write_staple
from djship.topology import Host, Topology
from djship.waiting import wait_until

READY_TIMEOUT = 60
ROTATION_TIMEOUT = 30
# Longest an ACME order on the renewer may take, with the installation after it (seconds).
AGENT_TIMEOUT = 300
# Run with the host's Python: prints each "address:port" of argv that another socket already holds.
PORT_PROBE = """
import errno, socket, sys
for endpoint in sys.argv[1:]:
    address, port = endpoint.rsplit(":", 1)
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((address, int(port)))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(endpoint)
    finally:
        probe.close()
"""


@dataclass(frozen=True)
class Secrets:
    secret_key: str
    database_password: str
    superuser_password: str
    redis_password: str | None = None
    """[redis]'s, made by the first up that has [redis]; kept when [redis] goes (its data stays too)."""
    replication_password: str | None = None
    """The replication role's (servers.db with a standby), made by the first up that has a standby."""

    def app_json(self) -> str:
        return json.dumps({"secret_key": self.secret_key, "database_password": self.database_password}, indent=2) + "\n"

    def admin_json(self, redis: bool = False) -> str:
        """What the db host's root reads: the superuser password (and the replication role's, with a standby);
        with redis ([redis] backup), Redis's password too, with which the daily backup takes its snapshot."""
        kept = {"postgres_password": self.superuser_password}
        if self.replication_password:
            kept["replication_password"] = self.replication_password
        if redis and self.redis_password:
            kept["redis_password"] = self.redis_password
        return json.dumps(kept, indent=2) + "\n"


@dataclass(frozen=True)
class UpResult:
    url: str
    ca_cert: Path | None
    """The CA to trust in local mode; None when the certificate comes from an ACME CA or the user's files."""
    release: str
    changed: bool


def daily_backups(plan: Plan) -> str:
    """Where the db host's daily backup goes, as status and up say it."""
    if plan.backup.daily_dir is None:
        return f"daily {plan.backup.schedule} UTC -> {plan.backup.dir}"
    if plan.backup.target is not None:
        return f"daily {plan.backup.schedule} UTC -> {plan.backup.target.dir} on {plan.backup.target.host} (sftp)"
    return (f"daily {plan.backup.schedule} UTC -> {plan.backup.daily_dir} on {plan.host}, the db host's own disk "
            "(copy them off it: `djship backups` lists them, `djship restore` takes them)")


def _json(connector: Connector, path: Path) -> dict | None:
    content = connector.get(path)
    return json.loads(content) if content else None


def keep_database_password(config: Config, control: Paths, password: str, admin: bool) -> Path:
    """An external PostgreSQL's password (the app's role's, or with admin database.admin_user's), kept here 0600;
    `up` gives the app's to the app hosts and the admin role's to the first app host. Returns where it is kept."""
    external = config.database.external
    if external is None:
        raise DjshipError("`djship db password` is for an external PostgreSQL (database.url); djship makes and keeps "
                          "its own server's passwords")
    if admin and config.database.admin_user is None:
        raise DjshipError("--admin: database.admin_user is not set; set it to the role that may create roles and "
                          "databases, or run `djship db password` for the app's role")
    if not password or "\n" in password or "\r" in password:
        raise DjshipError("the password is empty or holds a line break; give the role's password on one line")
    local = LocalConnector()
    kept = _json(local, control.database_secrets) or {}
    kept["admin_password" if admin else "password"] = password
    local.makedirs(control.state, mode=0o711)
    local.makedirs(control.secrets, mode=0o711)
    local.put(control.database_secrets, json.dumps(kept, indent=2) + "\n", mode=0o600)
    return control.database_secrets


def ensure_users(plan: Plan, connector: Connector) -> None:
    """The system user of each component of the host, with a group of its name; made once, kept afterwards."""
    for user in plan.users_here:
        if connector.run(["id", "-u", user]).ok:
            continue
        result = accounts.change_users(connector, [
            "useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", user,
        ])
        # Hosts that share /etc/passwd (containers, the tests' network namespaces) may make the same user at once.
        if not result.ok and not connector.run(["id", "-u", user]).ok:
            raise DjshipError(f"cannot create the system user {user}: {result.stderr.strip()}")


def point_server(server: AppServer, connector: Connector, live: Live) -> None:
    """The database and media directory the server's gunicorn uses from its next start."""
    connector.put(server.live_file, live.to_json(), mode=0o644)
    connector.symlink(server.media_link, live.media)


def prepare_state_dir(plan: Plan, connector: Connector) -> None:
    for directory in plan.directories:
        connector.makedirs(directory.path, mode=directory.mode, owner=directory.owner, group=directory.group)
    media.prepare_media_dir(plan, connector)
    offsite.prepare(plan, connector)
    offsite.prepare_archive_mount(plan, connector)
    live = read_live(plan, connector)
    for server in plan.servers_here:
        if connector.readlink(server.media_link) is None:  # nginx's /media/ alias must exist before nginx (re)starts
            point_server(server, connector, live)
        if connector.get(server.access_log) is None:
            connector.put(server.access_log, "", **_access(plan, server.access_log))
    for user in plan.users_here[:1]:  # to the parents of the state root every component's user is one of "others"
        if not connector.run(["test", "-x", str(plan.paths.state)], user=user).ok:
            raise DjshipError(
                f"the system user {user} cannot reach {plan.paths.state} (a parent directory is not searchable by "
                "others, e.g. /root); move the project, or set state_dir in djship.toml to a directory such as "
                "/srv/djship/site"
            )


def others_in_rotation(balancers: list[Balancer], leaving: set[str]) -> list[str]:
    """The app servers, other than those leaving, that every balancer is sending requests to."""
    views = [instance.states() for instance in balancers]
    names = set.intersection(*({name for name, state in view.items() if state.status == "UP"} for view in views))
    return sorted(names - leaving)


def take_out_for_good(instance: Balancer, names: list[str], timeout: float) -> None:
    """Drain app servers that are leaving the system, wait for their requests in flight, then take them out
    (maintenance) until the balancer's next configuration no longer lists them. One the running configuration does
    not list (a server whose start failed before the balancer took it in) has nothing to drain."""
    listed = instance.states()
    names = [name for name in names if name in listed] if listed else names
    for name in names:
        instance.set_state(name, "drain")
    for name in names:
        instance.wait_drained(name, timeout)
        instance.set_state(name, "maint")


def _access(plan: Plan, path: Path) -> dict:
    """put()'s mode and owner for a file of the plan's host."""
    access = plan.file_access(path)
    return {"mode": access.mode, "owner": access.owner}


class System:
    """The hosts of the topology, each with its own supervisord: lb hosts (HAProxy), app hosts (N x nginx ->
    gunicorn), the db host (PostgreSQL)."""

    def __init__(self, topology: Topology, reporter: Reporter):
        self.topology = topology
        self.reporter = reporter
        self.control = topology.control
        self.hosts = topology.hosts
        self.lb_hosts = topology.holding("lb")
        self.db_host = (topology.holding("db") or topology.holding("app"))[0]
        """Where djship administers the database from: the db host, or with an external PostgreSQL (database.url,
        no db host) the first app host, which connects to it as the app servers do."""
        self.plan = topology.holding("app")[0].plan
        """The plan every host shares (app servers, addresses, ports, timeouts), as the first app host has it."""
        self.pipeline = Pipeline(topology, reporter)
        self.balancers = [
            Balancer(host.plan.paths.haproxy_socket,
                     remote_sender(host.connector, host.plan.tools.python, host.plan.paths.haproxy_socket))
            for host in self.lb_hosts
        ]
        self.local = LocalConnector()
        # Secrets and the certificate are made on the control machine, once, and copied to the hosts that need them.
        self.control_plan = replace(self.plan, paths=self.control, users=None)

    def host_of(self, server: AppServer) -> Host:
        return self.hosts[server.host]

    @property
    def app_hosts(self) -> dict[str, Host]:
        return {host.name: host for host in self.topology.holding("app")}

    @property
    def code_hosts(self) -> dict[str, Host]:
        """The hosts that run the app's code: the app hosts and the worker hosts."""
        return {host.name: host for host in self.topology.running_code()}

    @property
    def database(self) -> DatabaseServer:
        return DatabaseServer(self.db_host.plan, self.db_host.connector)

    @property
    def lock_file(self) -> Path:
        return self.control.deploy_lock

    def close(self) -> None:
        self.topology.close()

    # -- secrets and certificate (made here once, read back from the hosts when .djship/ was lost) ---------------

    def read_secrets(self) -> Secrets | None:
        """The system's secrets: kept here, else read back from the hosts that hold them; None before the first up."""
        app = _json(self.local, self.control.app_secrets)
        admin = _json(self.local, self.control.admin_secrets)
        for host in self.code_hosts.values():
            if app is None and host.name not in self.topology.unreachable:
                app = _json(host.connector, host.plan.paths.app_secrets)
        for host in self.topology.holding("db") + self.topology.holding("standby"):
            if admin is None and host.name not in self.topology.unreachable:
                admin = _json(host.connector, host.plan.paths.admin_secrets)
        if app is None or admin is None:
            return None
        return Secrets(app["secret_key"], app["database_password"], admin["postgres_password"],
                       self._read_redis_password(), admin.get("replication_password"))

    @property
    def redis_host(self) -> Host | None:
        redis_ = self.plan.redis
        return self.hosts[redis_.host] if redis_ else None

    def _read_redis_password(self) -> str | None:
        """Kept here, else read back from the redis host's redis.conf."""
        kept = _json(self.local, self.control.redis_secrets)
        if kept is not None:
            return kept["password"]
        host = self.redis_host
        if host is None or host.name in self.topology.unreachable:
            return None
        conf = host.connector.get(host.plan.redis.conf)
        return render.redis_password_of(conf.decode()) if conf else None

    def secrets(self) -> Secrets:
        """The secrets of a system that has been up; never makes new ones (that is `up`'s job)."""
        found = self.read_secrets()
        if found is None:
            raise DjshipError(f"no secrets in {self.control.secrets} nor on the hosts; run `djship up` first")
        return found

    def recover(self) -> None:
        """Read back from the hosts what the control machine keeps, when it is missing here (.djship/ lost with a
        laptop, a fresh clone): the CA and the site certificate from a balancer host. Nothing that a host still
        holds is made anew; the secrets are read back by read_secrets, the releases listed from the app hosts."""
        for host in self.lb_hosts:
            if host.name in self.topology.unreachable:
                continue
            for path, mode in ((self.control.ca_cert, 0o644), (self.control.ca_key, 0o600),
                               (self.control.site_pem, 0o600)):
                kept = host.connector.get(host.plan.paths.state / path.relative_to(self.control.state))
                if kept is not None and self.local.get(path) is None:
                    self.local.makedirs(path.parent, mode=0o711)
                    self.local.put(path, kept, mode=mode)

    def _ensure_control_certificate(self) -> bool:
        """The local CA's or the user's certificate, made or checked here and copied to the lb hosts; whether it
        changed. An ACME certificate is the renewer's: obtained and kept there (see _ensure_acme_certificate)."""
        if self.plan.tls.mode == "acme":
            return False
        return ensure_certificate(self.control_plan, self.local) | self.refresh_staple()

    def _control_certificate(self) -> bytes | None:
        return None if self.plan.tls.mode == "acme" else self.local.get(self.control.site_pem)

    def _ensure_secrets(self) -> Secrets:
        """Generated once and kept: a new SECRET_KEY would log everyone out, a new password would lock the app out.
        An external server's passwords are the user's (`djship db password`)."""
        found = self.read_secrets() or Secrets(secrets.token_urlsafe(50), secrets.token_urlsafe(24),
                                               secrets.token_urlsafe(24))
        found = self._with_external_passwords(found)
        if self.plan.redis and not found.redis_password:  # hex: nothing to quote in a URL or in redis.conf
            found = replace(found, redis_password=secrets.token_hex(32))
        if self.plan.database.standby and not found.replication_password:
            found = replace(found, replication_password=secrets.token_urlsafe(24))
        self.local.makedirs(self.control.secrets, mode=0o711)
        self.local.put(self.control.app_secrets, found.app_json(), mode=0o600)
        self.local.put(self.control.admin_secrets, found.admin_json(), mode=0o600)
        if found.redis_password:
            self.local.put(self.control.redis_secrets, json.dumps({"password": found.redis_password}) + "\n",
                           mode=0o600)
        self.keep_env_secrets(self.env_secrets(), found)
        return found

    # -- an external PostgreSQL's passwords (`djship db password`) ------------------------------------------------

    def _with_external_passwords(self, found: Secrets) -> Secrets:
        """The app's password (when its role is the DBA's) and the admin role's, as `djship db password` kept them
        here, else as the hosts have them (read_secrets); without either, a one-line error naming the command."""
        db = self.plan.database
        if not db.external:
            return found
        kept = _json(self.local, self.control.database_secrets) or {}
        shown = f"{db.superuser}@{db.endpoint}"
        if db.creates:
            admin = kept.get("admin_password") or self._kept_admin_password()
            if admin is None:
                raise DjshipError(f"database.admin_user: no password kept for {shown}; run `djship db password "
                                  "--admin` (it asks for it, or reads it from standard input)")
            return replace(found, superuser_password=admin)
        app = kept.get("password") or self._kept_app_password()
        if app is None:
            raise DjshipError(f"database.url: no password kept for {shown}; run `djship db password` (it asks for it, "
                              "or reads it from standard input, and keeps it in .djship/secrets, 0600)")
        return replace(found, database_password=app, superuser_password=app)

    def _kept_app_password(self) -> str | None:
        kept = self.read_secrets()
        return kept.database_password if kept else None

    def _kept_admin_password(self) -> str | None:
        kept = self.read_secrets()
        return kept.superuser_password if kept else None

    def _check_external_database(self) -> None:
        """Before anything starts: the server answers, over TLS, with a certificate the CA bundle verifies for its
        name, to djship's password; and the app servers' connections fit its max_connections."""
        db = self.plan.database
        if not db.external:
            return
        bundle = db.ca_bundle
        if bundle is None or not bundle.is_file():
            raise DjshipError(f"database.ca_bundle: {bundle} is not a file; download the server's CA bundle (RDS: "
                              "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem) and point at it")
        found = self.read_secrets() or Secrets("", "", "")
        password = self._with_external_passwords(found).superuser_password
        host = self.db_host
        limit, reserved = DatabaseServer(host.plan, host.connector).check_external(password, bundle.read_bytes())
        check_budget(self.plan, limit, reserved)

    # -- the secrets of the app's environment (`djship env`) -----------------------------------------------------

    def env_secrets(self) -> dict[str, str]:
        """The secrets of the app's environment: kept here, else read back from an app host; {} before any."""
        kept = self.local.get(self.control.env_secrets)
        for host in self.code_hosts.values():
            if kept is None and host.name not in self.topology.unreachable:
                kept = host.connector.get(host.plan.paths.env_secrets)
        values = appenv.parse_env_file(kept.decode()) if kept else {}
        # djship's own REDIS_URL, in the same file on one machine (and on an app host): never one of `djship env`'s.
        password = self._read_redis_password() if REDIS_URL in values else None
        if password and values[REDIS_URL].startswith(f"redis://:{password}@"):
            del values[REDIS_URL]
        return values

    def keep_env_secrets(self, values: dict[str, str], secrets_: Secrets | None = None) -> None:
        """Here, 0600: what `up` gives every app host. On one machine this is the app's own file, so it holds djship's
        REDIS_URL as well."""
        text = render.env_file(values.items(), render.ENV_SECRETS_ORIGIN)
        kept = (secrets_ or self.read_secrets()) if self.topology.one_machine else None
        if kept is not None:
            text = self._env_secrets_text(self.plan, values, kept)
        self.local.makedirs(self.control.secrets, mode=0o711)
        self.local.put(self.control.env_secrets, text, mode=0o600)

    def give_env_secrets(self, host: Host, values: dict[str, str]) -> None:
        """To an app host, 0600 and readable by the app's user only; its programs read them when they next start."""
        path = host.plan.paths.env_secrets
        host.connector.put(path, self._env_secrets_text(host.plan, values, self.secrets()), **_access(host.plan, path))

    @staticmethod
    def _env_secrets_text(plan: Plan, values: dict[str, str], secrets_: Secrets) -> str:
        return render.app_secrets_env(plan, values, secrets_.redis_password)

    def _check_env(self, env_secrets: dict[str, str]) -> None:
        if self.plan.redis and (REDIS_URL in dict(self.plan.env) or REDIS_URL in env_secrets):
            where = "remove it from [env] in djship.toml" if REDIS_URL in dict(self.plan.env) else \
                f"run `djship env unset {REDIS_URL}`"
            raise DjshipError(f"{REDIS_URL} is set by djship from [redis] (with its password); {where}")
        both = [name for name, _ in self.plan.env if name in env_secrets]
        if both:
            raise DjshipError(f"env.{both[0]}: {both[0]} is also a secret of `djship env`; remove it from [env] in "
                              f"djship.toml, or run `djship env unset {both[0]}`")

    def _preflight(self) -> None:
        """What can be refused before anything starts or changes."""
        self._check_interface()
        self._check_external_database()
        if self.plan.tls.mode == "files":
            validated_files(self.control_plan, self.local)
        bundle = self.plan.tls.acme_ca_bundle
        if self.plan.tls.mode == "acme" and bundle is not None and not bundle.is_file():
            raise DjshipError(f"tls.acme_ca_bundle: {bundle} is not a file; point it at the PEM CA bundle that "
                              "verifies the ACME directory's HTTPS certificate, or remove the key to use the system's")

    def _check_interface(self) -> None:
        """`up` starts servers on the live release, which must be built for the interface (see require_interface)."""
        found = self._current_on() if self.plan.asgi else None
        if found is not None:
            self.require_interface(*found, "the live release", 'run `djship deploy` (it builds a release for ASGI, '
                                   'served as WSGI until then), then `djship up`')

    def require_interface(self, host: Host, release: Release, which: str, fix: str) -> None:
        """ASGI runs only on a release built for it: one built for WSGI has neither uvicorn in its virtualenv nor
        djship's ASGI entry point."""
        if self.plan.asgi and host.connector.get(release.asgi_worker) is None:
            raise DjshipError(f'app.interface: "asgi", but {which} {release.id} was built for WSGI; {fix}')

    # -- up: observe, decide, act --------------------------------------------------------------------------------

    def _link_files(self, host: Host, authority: Authority) -> list[render.ConfigFile]:
        """The files of the links between hosts on this host: its certificate for its address where it is reached
        from another host (nginx from the balancers, PostgreSQL from the app servers), and djship's CA where it
        reaches another host (the app servers the database; the balancers hold the CA already, see recover)."""
        plan, connector = host.plan, host.connector
        nginx = tuple(server.programs[1] for server in plan.servers_here if server.tls)
        presenting = [(plan.paths.host_cert, plan.paths.host_key, nginx)] if nginx else []
        if plan.runs_postgres and plan.database.tls:
            presenting.append((plan.database.cert_file, plan.database.key_file, ("postgres",)))
        if plan.runs_redis and plan.redis.tls:
            presenting.append((plan.redis.cert_file, plan.redis.key_file, (REDIS_PROGRAM,)))
        files = []
        if presenting:
            chain, key = local_ca.host_certificate(authority, host.address, [
                (connector.get(cert), connector.get(key)) for cert, key, _ in presenting])
            for cert_path, key_path, programs in presenting:
                files += [render.ConfigFile(cert_path, chain.decode(), programs),
                          render.ConfigFile(key_path, key.decode(), programs)]
        # With an external balancer and TLS to nginx, djship's own health checks from the host verify nginx too.
        if not host.holds("lb") and (self._verifies_links(plan) or (plan.external and nginx)):
            files.append(render.ConfigFile(plan.paths.ca_cert, authority.cert_pem().decode(), ()))
        return files

    @staticmethod
    def _verifies_links(plan: Plan) -> bool:
        """Whether this host verifies a link to another against djship's CA: the app's code reaching PostgreSQL or
        Redis, the db host reaching Redis for a backup; Redis, which names the CA in its config."""
        redis = plan.redis is not None and plan.redis.tls
        return (plan.runs_code and (plan.database.tls or redis)) or (redis and plan.runs_redis) or (
            redis and plan.holds("db") and plan.redis.backup) or (plan.database.standby is not None
                                                                  and plan.runs_postgres)

    def _desired(self, secrets_: Secrets | None, certificate: bytes | None, media_access: media.Access | None,
                 authority: Authority | None, backup_access: media.Access | None = None,
                 ) -> dict[str, list[render.ConfigFile]]:
        """Every file each host must hold, with the programs that read it when they start."""
        desired = {}
        env_secrets = self.env_secrets()
        self._check_env(env_secrets)
        for host in self.hosts.values():
            plan = host.plan
            files = render.system_files(plan)
            if secrets_ and host.plan.runs_code:
                programs = render.app_programs(plan)
                files.append(render.ConfigFile(plan.paths.app_secrets, secrets_.app_json(), programs))
                files.append(render.ConfigFile(plan.paths.env_secrets,
                                               self._env_secrets_text(plan, env_secrets, secrets_), programs))
            if secrets_ and plan.pools:
                files.append(render.ConfigFile(plan.paths.pooler_auth_file,
                                               render.pgbouncer_auth_file(plan, secrets_.database_password),
                                               (POOLER_PROGRAM,)))
            if secrets_ and (plan.runs_postgres or (plan.database.external and host.name == self.db_host.name)):
                files.append(render.ConfigFile(plan.paths.admin_secrets,
                                               secrets_.admin_json(bool(plan.redis and plan.redis.backup)), ()))
            if plan.database.external and plan.runs_code:
                files.append(render.ConfigFile(plan.paths.database_ca, plan.database.ca_bundle.read_text(),
                                               render.app_programs(plan)))
            if secrets_ and secrets_.replication_password and plan.runs_postgres and plan.database.standby:
                files.append(render.ConfigFile(plan.database.replication_passfile,
                                               render.replication_pgpass(plan, secrets_.replication_password),
                                               ("postgres",)))
            if secrets_ and secrets_.redis_password and plan.runs_redis:
                files.append(render.ConfigFile(plan.redis.conf, render.redis_conf(plan, secrets_.redis_password),
                                               (REDIS_PROGRAM,)))
            if plan.renews and plan.tls.acme_ca_bundle is not None:
                files.append(render.ConfigFile(plan.paths.acme_ca_bundle, plan.tls.acme_ca_bundle.read_bytes(),
                                               (RENEWAL_PROGRAM,)))
            if host.holds("lb") and plan.tls.mode == "acme":  # the renewer's ACME client reads it as root
                files.append(render.ConfigFile(plan.paths.acme_site_key, self._acme_site_key, (RENEWAL_PROGRAM,)))
            if certificate and host.holds("lb"):
                files.append(render.ConfigFile(plan.paths.site_pem, certificate.decode(), ("haproxy",)))
                staple = self.local.get(self.control.site_ocsp)
                if staple is not None:  # HAProxy loads it with site.pem, as its own user
                    files.append(render.ConfigFile(plan.paths.site_ocsp, staple, ("haproxy",)))
            if host.holds("lb"):
                # Copies kept for a control machine that lost .djship/ (see recover).
                files += [render.ConfigFile(plan.paths.state / path.relative_to(self.control.state), content.decode(), ())
                          for path in (self.control.ca_cert, self.control.ca_key)
                          if (content := self.local.get(path)) is not None]
            if authority is not None:
                files += self._link_files(host, authority)
            desired[host.name] = files + media.desired_files(plan, media_access) + \
                offsite.desired_files(plan, backup_access)
        return desired

    def _observe(self, desired: dict[str, list[render.ConfigFile]]) -> dict[str, Observed]:
        def observe(host: Host) -> Observed:
            running = host.supervisor.pid() is not None
            balancer = next((b for h, b in zip(self.lb_hosts, self.balancers) if h.name == host.name), None)
            return Observed(
                supervisor=running,
                statuses={name: status.state for name, status in (host.supervisor.status() if running else {}).items()},
                contents={file.path: host.connector.get(file.path) for file in desired[host.name]},
                balancer={name: state.status for name, state in balancer.states().items()} if balancer and running else {},
                releases=tuple(host.connector.listdir(host.plan.paths.releases) or ()) if host.plan.runs_code else (),
                current=host.connector.readlink(host.plan.paths.current) if host.plan.runs_code else None,
            )

        return on_each(self.hosts, observe)

    def changes(self) -> Changes:
        """What `up` would change, computed from what runs and what djship.toml asks; changes nothing."""
        self._preflight()
        secrets_ = self.read_secrets()
        certificate = self._control_certificate()
        authority = read_authority(self.control_plan, self.local) if self.plan.encrypted_links else None
        desired = self._desired(secrets_, certificate, media.read_access(self.topology), authority,
                                offsite.read_access(self.topology))
        return replace(diff(self.hosts, desired, self._observe(desired), secrets_ is None),
                       standby_copy=self._standby_base_backup())

    def up(self) -> UpResult:
        self._preflight()
        self.control.state.mkdir(parents=True, exist_ok=True)
        with exclusive(self.control.deploy_lock, "up"):
            return self.converge()

    def converge(self) -> UpResult:
        """Bring any state (nothing, running, half-started, a changed config) to what djship.toml says, without
        failing a request: the differences first, then only what they name."""
        with self.reporter.step(f"Secrets and certificate in {self.control.state}"):
            self.control.logs.mkdir(parents=True, exist_ok=True)
            self.recover()
            secrets_ = self._ensure_secrets()
            certificate_changed = self._ensure_control_certificate()
            certificate = self._control_certificate()
            authority = ensure_authority(self.control_plan, self.local) if self.plan.encrypted_links else None
            media_access = media.ensure_access(self.topology)
            backup_access = offsite.ensure_access(self.topology)
        adopted = self._adopt()
        desired = self._desired(secrets_, certificate, media_access, authority, backup_access)
        changes = diff(self.hosts, desired, self._observe(desired), False, certificate_changed)
        started: list[Host] = []
        try:
            release, renewed = self._apply(changes, desired, secrets_, started)
        except BaseException:
            if started and len(started) == len(self.hosts):  # a first start that failed: stop what it started
                self.reporter.note("Stopping what this run started (nothing is deleted)")
                on_each({host.name: host for host in started}, lambda host: host.supervisor.shutdown())
            raise
        self.topology.record()
        registered = on_each(self.hosts, lambda host: boot.register(host.connector, host.plan))
        changed = adopted or renewed or not changes.empty
        if changed:
            for line in dict.fromkeys(registered.values()):
                self.reporter.note(line)
        ca_cert = self.control.ca_cert if self.plan.tls.mode == "local" else None
        return UpResult(self.plan.url, ca_cert, release.id, changed=changed)

    def _adopt(self) -> bool:
        """Put back under a new supervisor what a dead one left running (the OOM killer, `kill -9`), without a
        failed request: database hosts first, then app hosts, then balancers. Returns whether it found any."""
        found = {name: orphans.orphans(host.connector, host.plan) for name, host in self.hosts.items()
                 if host.supervisor.pid() is None}
        order = sorted((name for name in found if found[name]), key=lambda name: (
            not self.hosts[name].holds("db"), not self.hosts[name].holds("app")))
        for name in order:
            host = self.hosts[name]
            if self.plan.external:  # no runtime API: its servers are replaced without a drain
                balancer, ready = external.NO_RUNTIME_API, lambda: None
            else:
                lb = next(((h, b) for h, b in zip(self.lb_hosts, self.balancers) if h.name == name),
                          (self.lb_hosts[0], self.balancers[0]))
                balancer, ready = lb[1], lambda lb=lb: self._wait_balancer(*lb)
            orphans.adopt(
                host.connector, host.plan, host.supervisor, balancer, found[name],
                lambda server: self.wait_healthy(server, self.release_of(server)), ready, self.reporter,
            )
        return bool(order)

    def _apply(self, changes: Changes, desired: dict[str, list[render.ConfigFile]], secrets_: Secrets,
               started: list[Host]) -> tuple[Release, bool]:
        """Apply the changes; returns the release the app servers run and whether an ACME certificate was obtained."""
        self._check_ports(changes)
        self.pipeline.prepare()
        if changes.removed and (changes.balancers_running or self.plan.external):
            self._take_out_for_good(changes.removed)
        base_backup = self._standby_base_backup()
        with self.reporter.step(f"Preparing {self._hosts_phrase()}: state root, supervisor, secrets, config files"):
            reconfigured = on_each(self.hosts, lambda host: self._prepare(host, desired[host.name], secrets_, changes,
                                                                            started, base_backup))
        release = self._release_beside_data(changes, lambda: self._data(secrets_, changes, desired, reconfigured))
        self._first_archive_backup()
        self._start_app_servers(changes, release)
        for server in self.plan.app_servers:
            self._restart_if_changed(server, release, changes, reconfigured[server.host])
        self._ensure_processes(changes, reconfigured)
        # After the app's programs read where the primary is: a former primary that turns into the standby here must
        # not start while an app server still names it first.
        self._standby(secrets_, changes, desired, base_backup)
        self._ensure_balancers(changes)
        renewed = self._ensure_extras(changes, reconfigured)
        for name in changes.removed:
            for host in self.app_hosts.values():
                host.connector.run(["rm", "-rf", "--", str(host.plan.paths.servers / name)])
        self._stop_departed()
        return release, renewed

    def _hosts_phrase(self) -> str:
        return "this machine" if len(self.hosts) == 1 else f"{len(self.hosts)} hosts"

    def _check_ports(self, changes: Changes) -> None:
        """Refuse before anything starts when a port a starting program needs is taken by another program."""

        def check(host: Host) -> None:
            endpoints = changes.endpoints_to_bind(host)
            if not endpoints:
                return
            busy = host.connector.run([host.python, "-c", PORT_PROBE, *(f"{a}:{p}" for a, p, _ in endpoints)]).stdout.split()
            for address, port, key in endpoints:
                if f"{address}:{port}" in busy:
                    raise DjshipError(f"port {port} on {address} is already in use by another program; stop that "
                                      f"program or change {key} in djship.toml")

        on_each(self.hosts, check)

    def _prepare(self, host: Host, files: list[render.ConfigFile], secrets_: Secrets, changes: Changes,
                 started: list[Host], base_backup: str | None = None) -> set[str]:
        """Everything a host needs before its programs start; returns the programs whose supervisor settings
        changed (they take effect at their next restart)."""
        plan, connector = host.plan, host.connector
        ensure_users(plan, connector)
        prepare_state_dir(plan, connector)
        self.pipeline.prepare_supervisor(host)
        if host.holds("standby"):
            connector.makedirs(plan.database.data_dir.parent, mode=0o700, owner=plan.user_of("db"))
            if plan.backup.archive is not None:  # its archive_command runs from its promotion on
                PgBackRest(plan, connector).prepare(secrets_.superuser_password)
        # initdb (_cluster) and pg_basebackup (_standby) want an empty data directory: its files are written after
        if (host.holds("db") and not DatabaseServer(plan, connector).initialized()) or (
                host.holds("standby") and base_backup):
            files = [file for file in files if not file.path.is_relative_to(plan.database.data_dir)]
        for file in files:  # every one, not only the changed ones: put() also puts owner and mode right
            connector.put(file.path, file.text, **_access(plan, file.path))
        if host.holds("lb") and plan.tls.mode == "acme":  # one HAProxy can start with, until the renewer's order
            ensure_certificate(plan, connector)
        if host.name in changes.supervisor_start:
            with self.reporter.step(f"Starting the supervisor (supervisord) on {host.name}"):
                host.supervisor.start_daemon()
            started.append(host)
            return set()
        if host.name in changes.supervisor_reread:
            with self.reporter.step(f"Applying the supervisor's new configuration on {host.name}"):
                return host.supervisor.reload_config()
        return set()

    def _release_beside_data(self, changes: Changes, data: Callable[[], None]) -> Release:
        """The release the app servers start on, installed on the app hosts while data() gets the database, the
        mounts and Redis ready: neither waits for the other, except a new release's migration, which runs once its
        check passed and data() is done (never when data() failed: that release is discarded)."""
        data_done, data_failed = threading.Event(), threading.Event()

        def data_ready() -> None:  # what a new release's migration waits for
            data_done.wait()
            if data_failed.is_set():
                raise DjshipError("the database did not get ready")  # the build is discarded; data()'s error is shown

        with ThreadPoolExecutor(max_workers=1) as pool:
            installing = pool.submit(self._install_release, changes, data_ready)
            try:
                data()
            except BaseException:
                data_failed.set()
                data_done.set()
                with suppress(Exception):
                    if changes.release is None:
                        self.pipeline.discard(installing.result().id)
                raise
            data_done.set()
            release = installing.result()
        self.set_current(release)
        return release

    def _data(self, secrets_: Secrets, changes: Changes, desired: dict[str, list[render.ConfigFile]],
              reconfigured: dict[str, set[str]]) -> None:
        """The database cluster, the shared mounts, PostgreSQL, PgBouncer and Redis, each as the changes say."""
        if self.db_host.holds("db"):
            self._cluster(secrets_, desired[self.db_host.name])
        media.mount(self.hosts, changes, reconfigured, self.reporter)
        offsite.mount_archive(self.hosts, changes, reconfigured, self.reporter)
        self._database(secrets_, changes)
        self._pooler(changes)
        self._redis(secrets_, changes, reconfigured)

    def _cluster(self, secrets_: Secrets, files: list[render.ConfigFile]) -> None:
        """A new cluster made with initdb and given its files (_prepare left those out), and pgBackRest's."""
        plan, connector = self.db_host.plan, self.db_host.connector
        database = DatabaseServer(plan, connector)
        if not database.initialized():
            with self.reporter.step(f"Creating the PostgreSQL cluster in {plan.database.data_dir}"):
                database.init_cluster(secrets_.superuser_password)
                for file in files:
                    if file.path.is_relative_to(plan.database.data_dir):
                        connector.put(file.path, file.text, **_access(plan, file.path))
        database.check_owner()
        if plan.backup.archive is not None:  # before PostgreSQL's archive_command first runs
            PgBackRest(plan, connector).prepare(secrets_.superuser_password)

    def _database(self, secrets_: Secrets, changes: Changes) -> None:
        host, database = self.db_host, self.database
        endpoint = host.plan.database.endpoint
        action = changes.postgres
        if action == "start":
            with self.reporter.step(f"Starting PostgreSQL on {endpoint}"):
                self._launch_postgres(host, database, restart=False)
        elif action == "restart":
            poolers = {name: self.hosts[name] for name in changes.paused_poolers}
            if poolers:
                with self.reporter.step(f"Restarting PostgreSQL (its configuration changed) with PgBouncer paused on "
                                        f"{', '.join(poolers)}: PAUSE, restart, RESUME"):
                    with pooler.paused(poolers, lambda: database.pooled_connections(secrets_.superuser_password)):
                        self._launch_postgres(host, database, restart=True)
            else:
                with self.reporter.step("Restarting PostgreSQL (its configuration changed)"):
                    self._launch_postgres(host, database, restart=True)
        elif action == "reload":  # which clients may connect, its certificate: a reload, no connection is dropped
            with self.reporter.step("Reloading PostgreSQL (its client list or certificate changed)"):
                host.supervisor.signal("postgres", "HUP")
        live = read_live(host.plan, host.connector).database
        if host.plan.database.external and not host.plan.database.creates:
            self.reporter.note(f"Database {live!r} on {endpoint} (external, as role {host.plan.database.user!r})")
            return
        with self.reporter.step(f"Database {live!r} and role {host.plan.database.user!r}"):
            database.ensure_app_database(secrets_.superuser_password, secrets_.database_password, live)
        if host.plan.backup.archive is not None:
            self._ensure_archiving(host)

    @staticmethod
    def _launch_postgres(host: Host, database: DatabaseServer, restart: bool) -> None:
        """Started (stopped first when restart) and waited for until it accepts connections, or exits."""
        host.supervisor.launch("postgres", again=restart)
        database.wait_ready(READY_TIMEOUT, lambda ready: host.supervisor.answering("postgres", ready))

    def _ensure_archiving(self, host: Host) -> None:
        """The stanza and a WAL segment pushed through archive_command."""
        archiver = PgBackRest(host.plan, host.connector)
        with self.reporter.step(f"Continuous archiving into {archiver.where} (pgBackRest check)"):
            archiver.ensure_stanza()

    def _first_archive_backup(self) -> None:
        """A first full backup when the archive has none, so the recoverable window starts now; taken once the
        release has migrated the database, so that it holds the app's tables (what a verification counts)."""
        host = self.db_host
        if host.plan.backup.archive is None:
            return
        archiver = PgBackRest(host.plan, host.connector)
        if not archiver.backups():
            with self.reporter.step("The first full backup of the archive (pgBackRest)"):
                archiver.backup("full")

    def _pooler(self, changes: Changes) -> None:
        """Start PgBouncer on the app hosts that run it, before anything of the app connects through it; reload
        the ones whose config or password file changed."""
        starting = {name: self.hosts[name] for name, action in changes.pooler.items() if action == "start"}
        reloading = {name: self.hosts[name] for name, action in changes.pooler.items() if action == "reload"}
        if starting:
            with self.reporter.step(f"Starting PgBouncer on {', '.join(starting)}"):
                on_each(starting, pooler.start)
        if reloading:
            with self.reporter.step(f"Reloading PgBouncer on {', '.join(reloading)} (its configuration changed)"):
                on_each(reloading, pooler.reload)

    # -- the standby ---------------------------------------------------------------------------------------------

    @property
    def standby_host(self) -> Host | None:
        return next(iter(self.topology.holding("standby")), None)

    def replication(self, host: Host, secrets_: Secrets | None = None) -> Replication:
        return Replication(DatabaseServer(host.plan, host.connector), (secrets_ or self.secrets()).superuser_password)

    def _standby_base_backup(self) -> str | None:
        """Why the standby host needs a fresh copy of the primary: "new" (no data directory yet), "rebuild" (the data
        directory of a former primary, or one a failover fenced), or None: it holds a standby's already."""
        host = self.standby_host
        if host is None:
            return None
        database = DatabaseServer(host.plan, host.connector)
        if not database.initialized():
            return "new"
        replica = Replication(database, "")
        if replica.has_standby_data():
            return None
        primary = DatabaseServer(self.db_host.plan, self.db_host.connector)
        if not primary.initialized():
            raise DjshipError(
                f"servers.db: {host.name} holds a primary's data directory ({host.plan.database.data_dir}) but names "
                f"{self.db_host.name}, which has none, as the primary; put {host.name} first in servers.db")
        return "rebuild"

    def _standby(self, secrets_: Secrets, changes: Changes, desired: dict[str, list[render.ConfigFile]],
                 base_backup: str | None) -> None:
        """The standby: its replication role and slot on the primary, its data directory copied from the primary
        when it has none (a former primary's kept aside first, fenced), then PostgreSQL started as a hot standby,
        streaming."""
        host = self.standby_host
        if host is None:
            if self.db_host.plan.database.replicated:
                self.replication(self.db_host, secrets_).ensure_synchronous("")  # no standby to wait for
            return
        plan, standby = host.plan, host.plan.database.standby
        primary = self.replication(self.db_host, secrets_)
        with self.reporter.step(f"Replication role and slot {standby.slot} on {self.db_host.name}"):
            primary.ensure_role_and_slot(secrets_.replication_password, standby.slot)
        replica = self.replication(host, secrets_)
        action = changes.standby
        if base_backup:
            if host.supervisor.pid() is not None:
                host.supervisor.stop("postgres")
            if base_backup == "rebuild":
                with self.reporter.step(f"Fencing {host.name}'s former primary and keeping its data aside"):
                    replica.fence("failover", self.db_host.name)
                    kept = replica.keep_aside()
                self.reporter.note(f"{host.name}'s former data directory is kept in {kept}")
            with self.reporter.step(f"Copying the primary to {host.name} (pg_basebackup over TLS)"):
                replica.base_backup()
                for file in desired[host.name]:
                    if file.path.is_relative_to(plan.database.data_dir):
                        host.connector.put(file.path, file.text, **_access(plan, file.path))
            action = "start"
        if action == "start":
            with self.reporter.step(f"Starting the standby on {host.name}"):
                host.supervisor.start("postgres")
                replica.server.wait_ready(READY_TIMEOUT)
        elif action == "restart":
            with self.reporter.step("Restarting the standby (its configuration changed)"):
                host.supervisor.restart("postgres")
                replica.server.wait_ready(READY_TIMEOUT)
        elif action == "reload":
            with self.reporter.step("Reloading the standby (its primary, client list or certificate changed)"):
                host.supervisor.signal("postgres", "HUP")
        wanted = f'"{standby.slot}"' if plan.database.synchronous else ""
        if not wanted and primary.ensure_synchronous(wanted):
            self.reporter.note(f"Commits on {self.db_host.name} no longer wait for {host.name}")
        if action or changes.postgres or wanted:
            with self.reporter.step(f"Waiting for {host.name} to stream from {self.db_host.name}"):
                wait_streaming(primary, standby.slot, READY_TIMEOUT)
        if wanted and primary.ensure_synchronous(wanted):
            self.reporter.note(f"Commits on {self.db_host.name} now return once {host.name} has them too")

    def _redis(self, secrets_: Secrets, changes: Changes, reconfigured: dict[str, set[str]]) -> None:
        """Start Redis, or restart it when its configuration changed, before the app servers and processes that
        connect to it; then wait until it answers PING with its password."""
        host = self.redis_host
        if host is None:
            return
        starting = REDIS_PROGRAM in changes.start.get(host.name, ())
        changed = REDIS_PROGRAM in changes.restart.get(host.name, ()) or REDIS_PROGRAM in reconfigured[host.name]
        if not starting and not changed:
            return
        title = f"Starting Redis on {host.plan.redis.endpoint}" if starting else \
            "Restarting Redis (its configuration changed; its data is on disk)"
        with self.reporter.step(title):
            if starting:
                host.supervisor.start(REDIS_PROGRAM)
            else:
                host.supervisor.restart(REDIS_PROGRAM, reconfigure=reconfigured[host.name])
            redis.wait_ready(host.plan, host.connector, secrets_.redis_password, READY_TIMEOUT)

    def redis_reply(self) -> str | None:
        """What Redis answers AUTH and PING from the first app host (where the app connects from); None: no [redis]."""
        if self.plan.redis is None:
            return None
        kept = self.read_secrets()
        if kept is None or not kept.redis_password:
            return "no password kept for Redis; run `djship up`"
        host = next(iter(self.app_hosts.values()))
        return redis.ping(host.plan, host.connector, self.plan.redis, kept.redis_password)

    def _install_release(self, changes: Changes, data_ready: Callable[[], None]) -> Release:
        """The live release (shipped to the hosts that lack it), else a new one built on every host and migrated
        once data_ready() returns."""
        if changes.release is None:
            return self.build_release(data_ready)
        release = Release(changes.release, self.control.releases / changes.release)
        missing = [self.hosts[name] for name in changes.ship]
        if missing:
            with self.reporter.step(f"Shipping release {release.id} to {', '.join(h.name for h in missing)}"):
                self.pipeline.ship(release.id, missing)
        else:
            self.reporter.note(f"Using release {release.id}")
        return release

    def _start_app_servers(self, changes: Changes, release: Release) -> None:
        """Start every stopped app server at once (each host its own, all hosts together), then wait until each
        answers its health check; nothing sends them requests before the balancer sees them healthy. A balancer that
        starts too (a first start) is launched with them: once djship's own check of each server passed, it is told
        they are healthy rather than left to find out at its next checks."""
        stopped = self._stopped_app_servers(changes)
        if not stopped:
            return
        balancers = [(host, instance) for host, instance in zip(self.lb_hosts, self.balancers)
                     if changes.haproxy.get(host.name) == "start"]
        launching = {**{name: self.hosts[name] for name in stopped}, **{host.name: host for host, _ in balancers}}

        def start(host: Host) -> None:
            servers = stopped.get(host.name, [])
            for server in servers:
                if host.connector.readlink(server.release_link) is None:
                    host.connector.symlink(server.release_link, self.pipeline.on(host, release.id).dir)
                point_server(server, host.connector, read_live(host.plan, host.connector))
            starting_balancer = any(lb.name == host.name for lb, _ in balancers)
            host.supervisor.launch(*(name for server in servers for name in server.programs),
                                   *(("haproxy",) if starting_balancer else ()))
            for server in servers:
                self.wait_healthy(server, self.release_of(server) or release, launched=True)

        names = ", ".join(server.name for servers in stopped.values() for server in servers)
        title = f"Starting app servers {names} (nginx + gunicorn)"
        if balancers:
            title += f" and the load balancer (HAProxy) on {', '.join(self._where(host) for host, _ in balancers)}"
        with self.reporter.step(f"{title}, all at once"):
            on_each(launching, start)
            healthy = tuple(server.name for servers in stopped.values() for server in servers)
            for host, instance in balancers:
                self._wait_balancer(host, instance, launched=True, healthy=healthy)

    def _restart_if_changed(self, server: AppServer, release: Release, changes: Changes, reconfigured: set[str]) -> None:
        """Restart what reads a changed file or changed supervisor settings, out of rotation when another server
        serves meanwhile."""
        host = self.host_of(server)
        started = set(changes.start.get(host.name, ()))
        restart = [name for name in server.programs if name not in started
                   and (name in changes.restart.get(host.name, ()) or name in reconfigured)]
        if not restart:
            return
        running_on = self.release_of(server) or release

        def apply() -> None:
            with self.reporter.step(f"Restarting {', '.join(restart)} (configuration changed)"):
                host.supervisor.restart(*restart, reconfigure=reconfigured)
                self.wait_healthy(server, running_on)

        if (changes.balancers_running or self.plan.external) and self.others_in_rotation({server.name}):
            with self.out_of_rotation((server,)):
                apply()
        else:
            self.reporter.note(f"{server.name} is the only app server in rotation: it restarts while serving")
            apply()

    def _ensure_processes(self, changes: Changes, reconfigured: dict[str, set[str]]) -> None:
        """Start the processes of [processes] and the scheduler of [jobs] that are not running; restart those whose
        settings, command or environment changed (each gets SIGTERM and its stop_timeout)."""
        def ensure(host: Host) -> None:
            names = host.plan.programs_beside_web
            stopped = [name for name in names if name in changes.start.get(host.name, ())]
            changed = [name for name in names if name not in stopped
                       and (name in changes.restart.get(host.name, ()) or name in reconfigured[host.name])]
            if stopped:
                with self.reporter.step(f"Starting {', '.join(stopped)} on {host.name}"):
                    host.supervisor.start(*stopped)
            if changed:
                with self.reporter.step(f"Restarting {', '.join(changed)} on {host.name} (configuration changed)"):
                    host.supervisor.restart(*changed, reconfigure=reconfigured[host.name])

        on_each(self.code_hosts, ensure)

    @property
    def programs_beside_web(self) -> tuple[str, ...]:
        """The processes of [processes] and the scheduler of [jobs], wherever they run."""
        return tuple(dict.fromkeys(name for host in self.code_hosts.values() for name in host.plan.programs_beside_web))

    def restart_processes(self, release: Release) -> None:
        """After the web switched to release: every process of [processes] and the scheduler of [jobs] restarted on
        it, gracefully (SIGTERM, then its stop_timeout), on every host that runs them at once."""
        names = self.programs_beside_web
        if not names:
            return
        hosts = {name: host for name, host in self.code_hosts.items() if host.plan.programs_beside_web}
        with self.reporter.step(f"Restarting {', '.join(names)} on release {release.id} (each finishes what it does "
                                "first)"):
            on_each(hosts, lambda host: host.supervisor.restart(*host.plan.programs_beside_web))

    def _ensure_balancers(self, changes: Changes) -> None:
        for host, instance in zip(self.lb_hosts, self.balancers):
            action = changes.haproxy.get(host.name)
            if action == "start" and self._stopped_app_servers(changes):
                continue  # started with the app servers
            if action == "start":
                with self.reporter.step(f"Starting the load balancer (HAProxy) on {self._where(host)}"):
                    host.supervisor.launch("haproxy")
                    self._wait_balancer(host, instance, launched=True)
                continue
            if action == "reload":
                self._reload_balancer(host, instance)
            resting = [name for name, state in instance.states().items()
                       if state.status.startswith(("DRAIN", "MAINT")) and name not in changes.removed]
            if resting:
                with self.reporter.step(f"Putting {', '.join(resting)} back into rotation"):
                    for name in resting:
                        instance.set_state(name, "ready")

    def _stopped_app_servers(self, changes: Changes) -> dict[str, list[AppServer]]:
        """The app servers the changes start, by host."""
        stopped: dict[str, list[AppServer]] = {}
        for server in self.plan.app_servers:
            if set(server.programs) & set(changes.start.get(server.host, ())):
                stopped.setdefault(server.host, []).append(server)
        return stopped

    def traffic(self) -> list[Traffic | None]:
        """Each balancer's counters of what it answered over HTTPS, None where none answers (see traffic_since)."""
        return [instance.traffic() for instance in self.balancers]

    def traffic_since(self, earlier: list[Traffic | None]) -> Traffic | None:
        """What the balancers that answered earlier (from traffic()) answered since, summed; None if none did."""
        pairs = [(now or Traffic(0, 0, restarted=True), then) for now, then in zip(self.traffic(), earlier) if then]
        return sum((now.since(then) for now, then in pairs), Traffic(0, 0)) if pairs else None

    def _where(self, host: Host) -> str:
        return self.plan.url if len(self.lb_hosts) == 1 else f"{host.name} ({self.plan.url})"

    def _reload_balancer(self, host: Host, instance: Balancer) -> None:
        """A new HAProxy worker takes over the listening sockets; the old one finishes its requests."""
        with self.reporter.step("Reloading the load balancer (no connection is dropped)"):
            check = host.connector.run([host.plan.tools.haproxy, "-c", "-q", "-f", str(host.plan.paths.haproxy_conf)])
            if not check.ok:
                raise CommandFailed(f"haproxy -c {host.plan.paths.haproxy_conf}", check)
            host.supervisor.signal("haproxy", "USR2")
            self._wait_balancer(host, instance)

    def _balancer_ready(self, host: Host, states: dict[str, ServerState]) -> tuple[bool, str]:
        """Whether HAProxy, whose view of the servers is states, sees every app server UP and answers over HTTPS."""
        down = [server.name for server in self.plan.app_servers
                if server.name not in states or states[server.name].status != "UP"]
        if down:
            return False, f"waiting for health checks of {', '.join(down)}"
        bundle = host.connector.get(host.plan.paths.site_pem)
        status = https_probe(host.address, self.plan.https_port, self.plan.domains[0], self.plan.health_path,
                             leaf_der(bundle) if bundle else b"")
        return status == 200, f"HTTPS health check through {host.address} answered {status}"

    def _wait_balancer(self, host: Host, instance: Balancer, launched: bool = False,
                       healthy: tuple[str, ...] = ()) -> None:
        """launched: HAProxy was just launched, so one that exits fails the wait at once. healthy: the servers djship
        itself just found healthy, which HAProxy is told are (a check of its own may have come before they were)."""
        def ready() -> tuple[bool, str]:
            states = instance.states()
            told = [name for name in healthy if name in states and states[name].status != "UP"]
            for name in told:
                instance.set_health(name, "up")
            return self._balancer_ready(host, instance.states() if told else states)

        wait_until(f"the load balancer on {host.name}", host.supervisor.answering("haproxy", ready) if launched
                   else ready, READY_TIMEOUT, f"see `djship logs {host.name if len(self.hosts) > 1 else 'haproxy'}`")

    def _wait_balancers(self) -> None:
        for host, instance in zip(self.lb_hosts, self.balancers):
            self._wait_balancer(host, instance)

    def _ensure_extras(self, changes: Changes, reconfigured: dict[str, set[str]]) -> bool:
        """The renewal timer and the backup scheduler, where the plan has them; returns whether an ACME certificate
        was obtained."""
        renewed = False
        for host in self.hosts.values():
            for program in (RENEWAL_PROGRAM, render.BACKUP_SCHEDULER):
                if program not in {p.name for p in render.programs(host.plan)}:
                    continue
                if program == RENEWAL_PROGRAM:
                    renewed = self._ensure_renewal(host, changes, reconfigured[host.name])
                elif program in changes.start.get(host.name, ()):
                    with self.reporter.step(f"Starting the daily backup: {daily_backups(host.plan)}"):
                        host.supervisor.start(program)
                elif program in changes.restart.get(host.name, ()):
                    with self.reporter.step(f"Restarting {program} (its schedule changed)"):
                        host.supervisor.restart(program, reconfigure=reconfigured[host.name])
        return renewed

    def _ensure_renewal(self, host: Host, changes: Changes, reconfigured: set[str]) -> bool:
        try:
            return self._ensure_acme_certificate() if host.plan.renews else False
        finally:  # also after a failed order: the timer retries it with back-off
            if RENEWAL_PROGRAM in changes.start.get(host.name, ()):
                with self.reporter.step(f"Starting the certificate renewal timer on {host.name}"):
                    host.supervisor.start(RENEWAL_PROGRAM)
            elif RENEWAL_PROGRAM in changes.restart.get(host.name, ()):
                with self.reporter.step(f"Restarting the certificate renewal timer on {host.name} (its plan changed)"):
                    host.supervisor.restart(RENEWAL_PROGRAM, reconfigure=reconfigured)

    def _take_out_for_good(self, names: tuple[str, ...]) -> None:
        if self.plan.external:
            self._take_out_of_external_rotation(names)
            return
        with self.reporter.step(f"Draining {', '.join(names)} before removing them"):
            if not others_in_rotation(self.balancers, set(names)):
                raise DjshipError(f"removing {', '.join(names)} would leave no app server in rotation")
            for instance in self.balancers:
                take_out_for_good(instance, list(names), self.plan.balancer_timeout)

    def _take_out_of_external_rotation(self, names: tuple[str, ...]) -> None:
        """Servers being removed: their health checks answer 503 until they stop (the balancer takes them out and,
        its target group, keeps them out)."""
        if not self.others_in_rotation(set(names)):
            raise DjshipError(f"removing {', '.join(names)} would leave no app server in rotation")
        leaving = {server.name: server for server in self.plan.app_servers if server.name in names}
        with self.reporter.step(f"Draining {', '.join(names)} before removing them ({self.plan.external.drain_seconds}s)"):
            def take_out(server: AppServer) -> None:
                host = self.host_of(server)
                start = external.drain(host.connector, server)
                external.wait_out(host.connector, self.plan, server, start)
                external.wait_in_flight(host.connector, host.plan, self.plan, server, self.plan.balancer_timeout)

            on_each(leaving, take_out)

    def _stop_departed(self) -> None:
        """Stop the supervisord of every host brought up before that djship.toml no longer lists (the balancers
        no longer send it anything); its files stay."""
        for name, state, supervisor in self.topology.departed():
            with self.reporter.step(f"Stopping {name} (no longer in djship.toml; its files stay in {state})"):
                try:
                    supervisor.shutdown()
                except DjshipError as error:
                    self.reporter.note(f"could not stop {name}: {error}; stop it yourself")
                finally:
                    supervisor.connector.close()

    # -- certificates -------------------------------------------------------------------------------------------

    @property
    def renewer(self) -> Host:
        """The lb host whose ACME client orders and renews the certificate (tls.mode = "acme")."""
        return self.hosts[self.plan.tls.renewer]

    @cached_property
    def _acme_site_key(self) -> bytes:
        """The ACME certificate's key, as the lb hosts hold it (made once, the first time: every renewal is for it)."""
        for host in self.lb_hosts:
            if host.name not in self.topology.unreachable:
                kept = host.connector.get(host.plan.paths.acme_site_key)
                if kept:
                    return kept
        from djship.tls import acme  # here: only ACME mode loads the ACME client

        return acme.new_site_key()

    @property
    def followers(self) -> list[Host]:
        """The other lb hosts, which install the renewer's certificate."""
        return [host for host in self.lb_hosts if host.plan.follows]

    def agent(self, *args: str, host: Host | None = None) -> str:
        """Run djship.agent on the renewer (or host); its last line of output, or DjshipError with its error."""
        host = host or self.renewer
        result = host.connector.run(render.agent_argv(host.plan, *args), timeout=AGENT_TIMEOUT)
        if not result.ok:
            lines = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
            raise DjshipError(lines[-1].removeprefix("error: ") + (f" (on {host.name})" if len(self.hosts) > 1 else ""))
        return result.stdout.strip().splitlines()[-1]

    def _acme_current(self) -> bool:
        host = self.renewer
        return acme_certificate_is_current(host.plan, host.connector, site_info(host.plan, host.connector))

    def _ensure_acme_certificate(self) -> bool:
        """Obtain and install an ACME certificate unless the served one is current; returns whether it did."""
        if self._acme_current():
            return False
        with self.reporter.step(f"Certificate for {', '.join(self.plan.domains)} from {self.plan.tls.acme_directory}"):
            renewed = self.agent("renew") == RENEWED
        self._follow()
        return renewed

    def _follow(self) -> None:
        """The renewer's certificate installed on the other lb hosts now (their timers would within 30 seconds)."""
        if self.followers:
            with self.reporter.step(f"Installing it on {', '.join(host.name for host in self.followers)}"):
                on_each({host.name: host for host in self.followers}, lambda host: self.agent("follow", host=host))

    def renew(self, force: bool) -> bool:
        """`djship certs renew`: renew now if due (or always with force); returns whether it renewed."""
        mode = self.plan.tls.mode
        if mode != "acme":
            raise DjshipError(
                f"tls.mode is {mode!r}: only ACME certificates are renewed by djship "
                + ("(the local CA's are reissued by `djship up`)" if mode == "local" else
                   "(point tls.cert_file and tls.key_file at the new files and run `djship up`)")
            )
        if not all(host.running("haproxy") for host in self.lb_hosts):
            raise DjshipError("the load balancer is not running, and it answers the ACME challenge; run `djship up` first")
        renewed = self.agent("renew", *(["--force"] if force else [])) == RENEWED
        self._follow()
        return renewed

    def _staple_for(self, bundle: bytes) -> bytes | None:
        return fetch_staple(self.control_plan, self.local, bundle, self.reporter.note)

    def refresh_staple(self) -> bool:
        """Fetch site.pem.ocsp for HAProxy's next start or reload when it is missing or half expired; returns
        whether it changed."""
        plan = self.control_plan
        if not staple_due(plan, self.local):
            return False
        return write_staple(plan, self.local, self._staple_for(self.local.get(plan.paths.site_pem)))

    # -- what deploy, rollback, scale and restore need (deploy/rolling.py) ------------------------------------

    def current(self) -> Release | None:
        """The release new app servers start on: what `current` points at on the first app host that has one."""
        found = self._current_on()
        return found[1] if found else None

    def _current_on(self) -> tuple[Host, Release] | None:
        """current(), with the host it was read on."""
        for host in self.code_hosts.values():
            if host.name in self.topology.unreachable:
                continue
            link = host.connector.readlink(host.plan.paths.current)
            if link is not None:
                return host, self.pipeline.on(host, link.name)
        return None

    def serving(self) -> bool:
        """Whether the system is up: a live release, and every balancer running."""
        return self.current() is not None and all(host.running("haproxy") for host in self.lb_hosts)

    def live_release(self) -> Release:
        """The release in service; refuses when the system is not running."""
        if not self.serving():
            raise DjshipError("the system is not running; start it with `djship up` first")
        return self.current()

    def build_release(self, data_ready: Callable[[], None] = lambda: None) -> Release:
        """A new release on every code host, its migration run (after data_ready()) as soon as the first app host's
        copy passed its check, while the static files are still collected."""
        def migrate(release_id: str) -> None:
            data_ready()
            with self.reporter.step("Migrating the database (once, under an advisory lock, before any app server "
                                    "runs the release)"):
                self.migrate(Release(release_id, self.control.releases / release_id))

        return self.pipeline.build((next(iter(self.app_hosts)), migrate))

    def migrate(self, release: Release, live_file: Path | None = None) -> None:
        """Once, from the first app host, under PostgreSQL's advisory lock."""
        host = next(iter(self.app_hosts.values()))
        log_dir = None if host.installs == "project" else self.control.logs / host.name
        ReleaseBuilder(host.plan, host.connector, self.reporter, log_dir=log_dir).migrate(
            self.pipeline.on(host, release.id), live_file)

    def discard_release(self, release: Release) -> None:
        self.pipeline.discard(release.id)

    def releases(self) -> list[Release]:
        host = next(iter(self.app_hosts.values()))
        return [self.pipeline.on(host, release_id) for release_id in self.pipeline.listed()]

    def release_of(self, server: AppServer) -> Release | None:
        host = self.host_of(server)
        link = host.connector.readlink(server.release_link)
        return None if link is None else self.pipeline.on(host, link.name)

    def run_release(self, server: AppServer, release: Release) -> None:
        """nginx follows the release link by itself (static files); only gunicorn restarts, on the live database
        (so a restore killed half-way is undone server by server, not left half-done)."""
        host = self.host_of(server)
        host.connector.symlink(server.release_link, self.pipeline.on(host, release.id).dir)
        point_server(server, host.connector, read_live(host.plan, host.connector))
        self.restart_app(server, release)

    def restart_app(self, server: AppServer, release: Release) -> None:
        """Restart the server's gunicorn (it reads its settings anew) and wait until its health check passes."""
        gunicorn, _ = server.programs
        self.host_of(server).supervisor.launch(gunicorn, again=True)
        self.wait_healthy(server, release, launched=True)

    def set_current(self, release: Release) -> None:
        on_each(self.code_hosts, lambda host: host.connector.symlink(host.plan.paths.current,
                                                                    self.pipeline.on(host, release.id).dir))

    def prune_releases(self) -> list[str]:
        """Delete the oldest releases beyond keep_releases, never one in use; return their ids."""
        ids = self.pipeline.listed()
        running = [self.release_of(server) for server in self.plan.app_servers] + [self.current()]
        in_use = {release.id for release in running if release is not None}
        removable = [release_id for release_id in ids[: -self.plan.keep_releases] if release_id not in in_use]
        for release_id in removable:
            self.pipeline.discard(release_id)
        return removable

    def wait_healthy(self, server: AppServer, release: Release, launched: bool = False) -> None:
        """Health-checked from a balancer host: the only place an app server accepts requests from (with an external
        balancer: from the server's own host, which it lets in too). launched: its gunicorn was just launched, so one
        that exits while starting fails the wait at once."""
        lb = self.host_of(server) if self.plan.external else self.lb_hosts[0]

        def probe() -> tuple[bool, str]:
            return appserver.health_from(lb.connector, lb.plan, self.plan, server)

        watched = self.host_of(server).supervisor.answering(server.programs[0], probe) if launched else probe
        appserver.wait_healthy(self.plan, server, release.id, watched, f"`djship logs {server.name}`")

    def others_in_rotation(self, leaving: set[str]) -> list[str]:
        if self.plan.external:  # as far as djship can tell: the servers it has not drained
            return [server.name for server in self.plan.app_servers if server.name not in leaving
                    and not external.draining(self.host_of(server).connector, server)]
        return others_in_rotation(self.balancers, leaving)

    @contextmanager
    def out_of_rotation(self, servers: tuple[AppServer, ...]) -> Iterator[None]:
        """Drain these servers in every balancer and wait for their requests in flight; afterwards put them back into
        rotation and wait until the balancers see them UP. Refuses when no other server would be left serving."""
        names = ", ".join(server.name for server in servers)
        if not self.others_in_rotation({server.name for server in servers}):
            raise DjshipError(
                f"taking {names} out would leave no app server in rotation; "
                + ("run `djship scale 2` first" if len(self.plan.app_servers) == 1 else "lower deploy.batch_size, "
                   "or run `djship up` to bring every server back into rotation")
            )

        if self.plan.external:
            with self._out_of_external_rotation(servers, names):
                yield
            return

        def set_state(state: str) -> None:
            for instance in self.balancers:
                for server in servers:
                    instance.set_state(server.name, state)

        with self.reporter.step(f"Draining {names} (no new requests; waiting for those in flight)"):
            set_state("drain")
            for instance in self.balancers:
                for server in servers:
                    instance.wait_drained(server.name, self.plan.balancer_timeout)
        try:
            yield
        except BaseException:
            set_state("ready")  # the balancers' own health checks decide whether they serve
            raise
        with self.reporter.step(f"Putting {names} back into rotation"):
            set_state("ready")
            for instance in self.balancers:
                for server in servers:
                    instance.wait_status(server.name, "UP", ROTATION_TIMEOUT)

    @contextmanager
    def _out_of_external_rotation(self, servers: tuple[AppServer, ...], names: str) -> Iterator[None]:
        """The same without a runtime API: each server's health check answers the balancer 503 for drain_seconds
        (it takes them out), then nginx's requests in flight finish; afterwards 200 again, until every node of the
        balancer that checked them has passed them healthy_threshold times."""
        balancer = self.plan.external
        on = {server.name: self.host_of(server) for server in servers}

        def put_back() -> dict[str, int]:
            return {server.name: external.undrain(on[server.name].connector, server) for server in servers}

        with self.reporter.step(f"Draining {names}: their health checks answer 503 for {balancer.drain_seconds}s "
                                "(deploy.drain_seconds), then their requests in flight finish"):
            starts = {server.name: external.drain(on[server.name].connector, server) for server in servers}
            try:
                on_each({server.name: server for server in servers}, lambda server: external.wait_out(
                    on[server.name].connector, self.plan, server, starts[server.name]))
                on_each({server.name: server for server in servers}, lambda server: external.wait_in_flight(
                    on[server.name].connector, on[server.name].plan, self.plan, server, self.plan.balancer_timeout))
            except BaseException:
                put_back()
                raise
        peers = {server.name: external.peers_told(on[server.name].connector, self.plan, server, starts[server.name])
                 for server in servers}
        try:
            yield
        except BaseException:
            put_back()  # the balancer's own health checks decide whether they serve
            raise
        with self.reporter.step(f"Putting {names} back: health checks answer 200, waiting until the balancer has "
                                f"passed {balancer.healthy_threshold} in a row"):
            back = put_back()
            on_each({server.name: server for server in servers}, lambda server: external.wait_back(
                on[server.name].connector, self.plan, server, back[server.name], peers[server.name]))

    # -- status, logs, manage, down, destroy ----------------------------------------------------------------------

    def status(self) -> dict:
        """The topology with live states; a host that does not answer is listed with why, its components as
        UNREACHABLE. The schema is documented in the README (`djship status --json`)."""
        self.recover()
        unreachable = self.topology.unreachable
        answering = {name: host for name, host in self.hosts.items() if name not in unreachable}
        views = on_each(answering, lambda host: host.statuses())
        balancer_views = {host.name: instance.states() for host, instance in zip(self.lb_hosts, self.balancers)
                          if views.get(host.name)}
        balancer_view = next(iter(balancer_views.values()), {})
        plan = self.plan

        def entry(host: Host, name: str, role: str, address: str, health: str, server: str | None = None) -> dict:
            process = views.get(host.name, {}).get(name)
            state = "UNREACHABLE" if host.name in unreachable else process.state if process else "STOPPED"
            return {
                "name": name, "role": role, "server": server, "host": host.name, "address": address,
                "pid": process.pid if process else None, "state": state,
                "health": health if process and process.state in ("RUNNING", orphans.UNSUPERVISED) else "down",
            }

        components = [
            entry(host, "haproxy", "balancer", f"{host.address}:{plan.https_port}",
                  "up" if balancer_views.get(host.name) else "down")
            for host in self.lb_hosts
        ]
        seen = self._seen_by_external_balancer(answering) if plan.external else {}
        for server in plan.app_servers:
            host = self.host_of(server)
            view = balancer_view.get(server.name)
            health = view.status.lower() if view else "unknown"
            if plan.external:
                health = external.health_word(seen.get(server.name))
            gunicorn, nginx = server.programs
            components.append({**entry(host, nginx, "app", server.endpoint, health, server.name),
                               **({"balancer": seen.get(server.name)} if plan.external else {})})
            components.append(entry(host, gunicorn, "app", f"unix:{server.socket}", health, server.name))
        for host in self.code_hosts.values():
            components += [entry(host, name, "process", process.command, "running")
                           for process in host.plan.processes_here for name in process.programs]
            if host.plan.jobs_here:
                components.append(entry(host, JOBS_PROGRAM, "jobs", f"{len(host.plan.jobs_here)} jobs", "scheduling"))
        for host in self.app_hosts.values():
            if host.plan.pools:
                listening = host.name in answering and pooler.is_listening(host)
                components.append(entry(host, POOLER_PROGRAM, "pooler", f"unix:{pooler.socket_path(host.plan)}",
                                        "accepting" if listening else "down"))
        db = self.db_host
        ready = bool(views.get(db.name)) and self.database.is_ready()
        if plan.database.external:  # no process of djship's: the server as the first app host reaches it
            components.append({"name": "database", "role": "database", "server": None, "host": "external",
                               "address": plan.database.endpoint, "pid": None, "state": "EXTERNAL",
                               "health": "accepting" if ready else "down"})
        else:
            components.append(entry(db, "postgres", "database", plan.database.endpoint,
                                    "accepting" if ready else "down"))
        standby = self.standby_host
        if standby is not None:
            answers = bool(views.get(standby.name)) and DatabaseServer(standby.plan, standby.connector).is_ready()
            components.append(entry(standby, "postgres", "standby", standby.plan.database.endpoint,
                                    "accepting reads" if answers else "down"))
        if self.redis_host is not None and self.redis_host.name in answering:
            reply = self.redis_reply()
            components.append(entry(self.redis_host, REDIS_PROGRAM, "redis", plan.redis.endpoint,
                                    "accepting" if redis.answers(reply or "") else "down"))
        for host in answering.values():
            if host.plan.schedules_backups:
                components.append(entry(host, render.BACKUP_SCHEDULER, "backup", daily_backups(host.plan), "scheduled"))
        for host in (db, *([standby] if standby is not None else [])):
            if host.plan.mounts_archive:
                components.append(entry(host, render.ARCHIVE_MOUNT_PROGRAM, "archive",
                                        f"{host.plan.backup.target.host}:{host.plan.backup.archive.store}", "mounted"))
        release = self.current()
        supervisors = on_each(answering, lambda host: host.supervisor.pid())
        return {
            "url": plan.url,
            "ca_path": str(self.control.ca_cert) if plan.local_ca_cert else None,
            "running": any(supervisors.values()),
            "release": release.id if release else None,
            "database": read_live(db.plan, db.connector).database if db.name in answering else None,
            "supervisor_pid": supervisors.get(db.name) if len(self.hosts) == 1 else None,
            "hosts": [{"name": host.name, "address": host.address, "roles": sorted(host.plan.roles),
                       "supervisor": supervisors.get(host.name), "problem": unreachable.get(host.name),
                       "boot": boot.registration(host.connector, host.plan).to_json() if host.name in answering
                       else None}
                      for host in self.hosts.values()],
            "components": components,
            "balancer": {"external": True, "trusted": list(plan.external.trusted)} if plan.external else
            {"external": False, "trusted": list(plan.balancer_sources)},
            "tls": self._tls_status(views, set(answering)),
            "jobs": [report.to_json() for report in self.job_reports()] if ready and plan.jobs else [],
            "archive_verified": self.status_of_archive_verification() if db.name in answering else None,
            "replication": self._replication_status(ready) if plan.database.replicated else None,
        }

    def _replication_status(self, primary_ready: bool) -> dict:
        """The roles of the db hosts and, from the primary's pg_stat_replication, each standby's state and lag."""
        standby = self.standby_host
        database = self.db_host.plan.database
        rows = self.replication(self.db_host).standbys() if primary_ready else []
        return {"primary": self.db_host.name, "standby": standby.name if standby else None,
                "synchronous": database.synchronous, "slot": database.standby.slot if database.standby else None,
                "standbys": rows}

    def _seen_by_external_balancer(self, answering: dict[str, Host]) -> dict[str, dict]:
        """Per app server: the last health check the balancer sent it, and whether djship drains it."""
        servers = {server.name: server for server in self.plan.app_servers if server.host in answering}

        def seen(server: AppServer) -> dict:
            connector = self.host_of(server).connector
            return {"last_check": external.seen_by_balancer(connector, self.plan, server),
                    "draining": external.draining(connector, server)}

        return on_each(servers, seen)

    def status_of_archive_verification(self) -> dict | None:
        """The last `djship backup verify` (backup.archive): when, which backup, whether it restored and counted."""
        archive = self.db_host.plan.backup.archive
        return _json(self.db_host.connector, archive.verified) if archive else None

    def job_reports(self) -> list[jobs.JobReport]:
        """Each job of [jobs] with its last run, as the schedulers recorded it in the live database."""
        database = read_live(self.db_host.plan, self.db_host.connector).database
        output = self.database.admin_psql(self.secrets().superuser_password, "reading the runs of [jobs]", jobs.RUNS,
                                          database=database)
        return jobs.reports(self.plan.jobs, output)

    def _tls_status(self, views: dict, answering: set[str]) -> dict:
        acme = self.plan.tls.mode == "acme"
        kept = (self.renewer.plan, self.renewer.connector) if acme else (self.control_plan, self.local)
        info = site_info(*kept) if not acme or self.renewer.name in answering else None
        report = {"mode": self.plan.tls.mode, "certificate": info.to_json() if info else None, "renewal": None}
        if acme and self.renewer.name in answering:
            process = views.get(self.renewer.name, {}).get(RENEWAL_PROGRAM)
            report["renewal"] = {
                "pid": process.pid if process else None,
                "state": process.state if process else "STOPPED",
                **asdict(renewal.load(*kept)),
            }
        return report

    def log_files(self, component: str | None) -> list[tuple[Host, Path]]:
        """(host, log file) for a component, an app server, a host name, or everything."""
        chosen = []
        for host in self.hosts.values():
            names = ["supervisord", *(program.name for program in render.programs(host.plan))]
            servers = {server.name for server in host.plan.servers_here}
            if component is None:
                picked = names
            elif component == host.name and len(self.hosts) > 1:  # a host: everything on it, access logs too
                picked = [*names, *(f"{server}-nginx-access" for server in sorted(servers))]
            elif component in names:
                picked = [component]
            elif component in servers:
                picked = [f"{component}-nginx", f"{component}-nginx-access", f"{component}-gunicorn"]
            elif component in (processes := {process.name: process.programs for process in host.plan.processes_here}):
                picked = list(processes[component])
            else:
                picked = []
            chosen += [(host, host.plan.paths.logs / f"{name}.log") for name in picked]
        if not chosen:
            known = sorted({*(self.hosts if len(self.hosts) > 1 else ()),
                            *(server.name for server in self.plan.app_servers),
                            *(process.name for process in self.plan.processes),
                            *(program.name for host in self.hosts.values() for program in render.programs(host.plan))})
            raise DjshipError(f"no component {component!r}; choose one of: {', '.join(known)}")
        return chosen

    def tail(self, component: str | None, lines: int, follow: bool, emit: Callable[[str], None]) -> None:
        """The last lines of each log, every line prefixed with its host and file; with follow, new lines as they
        come, from every host at once, until interrupted."""
        by_host: dict[str, list[Path]] = {}
        for host, path in self.log_files(component):
            by_host.setdefault(host.name, []).append(path)

        def read(host: Host) -> None:
            argv = ["tail", "-q" if len(by_host[host.name]) == 1 else "-v", "-n", str(lines),
                    *(["-F"] if follow else []), *map(str, by_host[host.name])]
            current = [Path(by_host[host.name][0]).stem]

            def line(text: str) -> None:
                if text.startswith("==> ") and text.endswith(" <=="):
                    current[0] = Path(text[4:-4]).stem
                elif text.strip() and not text.startswith("tail: "):
                    emit(f"{host.name} {current[0]} | {text}")

            host.connector.stream(argv, line)

        targets = {name: self.hosts[name] for name in by_host}
        if not follow:
            on_each(targets, read)
            return
        readers = [threading.Thread(target=read, args=(host,), daemon=True) for host in targets.values()]
        for reader in readers:
            reader.start()
        while any(reader.is_alive() for reader in readers):  # until Ctrl-C, or every host's connection is gone
            time.sleep(0.5)

    def manage(self, args: list[str], emit: Callable[[str], None], terminal: bool = False) -> int:
        """manage.py ARGS in the live release on the first app host, as the app runs: in a terminal when there is
        one (interactive commands work), else its output as it comes. Returns its exit code."""
        release = self.live_release()
        if not self.database.is_ready():
            raise DjshipError("the database is not running; start it with `djship up` first")
        host = next(iter(self.app_hosts.values()))
        argv = render.with_app_environment(host.plan, [str(release.python), str(release.app / "manage.py"), *args])
        options = {"user": host.plan.user_of("app"), "env": release.environment(), "cwd": release.app}
        if terminal:
            return host.connector.interactive(argv, **options)
        return host.connector.stream(argv, emit, **options)

    def down(self) -> bool:
        """Stop every process, balancers first, database last; every file and row stays. Returns whether anything
        ran."""
        on_each(self.hosts, lambda host: boot.unregister(host.connector, host.plan))
        running = {name for name, pid in on_each(self.hosts, lambda host: host.supervisor.pid()).items() if pid}
        left = self._stop_orphans(running)
        if not running:
            return left

        def stop(role: str | None, programs: Callable[[Host], list[str]], title: str) -> None:
            """programs(host) stopped on each running host that holds role (any role: None) and runs them."""
            targets = {name: host for name, host in self.hosts.items()
                       if name in running and (role is None or host.holds(role)) and programs(host)}
            if targets:
                with self.reporter.step(title):
                    on_each(targets, lambda host: host.supervisor.stop(*programs(host)))

        if self.plan.tls.mode == "acme":
            stop("lb", lambda host: [RENEWAL_PROGRAM], "Stopping the certificate renewal timer")
        stop("lb", lambda host: ["haproxy"], "Stopping the load balancer")
        stop(None, lambda host: list(host.plan.programs_beside_web),
             "Stopping the processes (each finishes what it does first)")
        stop("app", lambda host: [name for server in host.plan.servers_here for name in server.programs],
             "Stopping the app servers")
        if self.plan.pooler is not None:
            stop("app", lambda host: [POOLER_PROGRAM], "Stopping PgBouncer")
        if self.redis_host is not None and self.redis_host.name in running:
            with self.reporter.step("Stopping Redis (its data stays on disk)"):
                self.redis_host.supervisor.stop(REDIS_PROGRAM)
        stop("standby", lambda host: ["postgres"], "Stopping PostgreSQL's standby")
        stop("db", lambda host: ["postgres"], f"Stopping PostgreSQL (data stays in {self.db_host.plan.database.data_dir})")
        with self.reporter.step(f"Stopping the supervisor on {self._hosts_phrase()}"):
            on_each({name: self.hosts[name] for name in running}, lambda host: host.supervisor.shutdown())
        return True

    def _stop_orphans(self, running: set[str]) -> bool:
        """On hosts whose supervisor is gone, stop what it left running: balancers first, the database last."""
        found = {name: orphans.orphans(host.connector, host.plan) for name, host in self.hosts.items()
                 if name not in running}
        order = sorted((name for name in found if found[name]), key=lambda name: (
            not self.hosts[name].holds("lb"), self.hosts[name].holds("db")))
        for name in order:
            host = self.hosts[name]
            with self.reporter.step(f"Stopping what a supervisor that died left running on {name} "
                                    f"({len(found[name])} programs)"):
                orphans.stop_all(host.connector, host.plan, found[name])
        return bool(order)

    def destroy_targets(self) -> list[tuple[str, Path]]:
        """(host, directory) that `destroy` deletes: every host's state root (a backup host's but its backups), and
        .djship/ here."""
        targets = [(host.name, host.plan.paths.state) for host in self.hosts.values()]
        if all(state != self.control.state for _, state in targets):
            targets.append(("this machine", self.control.state))
        return targets

    def destroy(self) -> None:
        targets = self.destroy_targets()
        if not any(host.connector.get(host.plan.paths.supervisor_conf) is not None for host in self.hosts.values()) \
                and not self.control.state.exists():
            raise DjshipError(f"nothing to destroy: {self.control.state} does not exist")
        self.down()
        on_each(self.hosts, lambda host: boot.uninstall(host.connector, host.plan))
        for name, state in targets:
            connector = self.hosts[name].connector if name in self.hosts else self.local
            host = self.hosts.get(name)
            if host is not None and host.holds("backup"):  # the backups outlive the system they were taken of
                kept = host.plan.backup.kept
                with self.reporter.step(f"Deleting {state} on {name} but its backups ({', '.join(map(str, kept))})"):
                    spared = [word for directory in kept for word in ("!", "-path", str(directory))]
                    connector.run(["find", str(state), "-mindepth", "1", "-maxdepth", "1", *spared,
                                   "-exec", "rm", "-rf", "--", "{}", "+"])
                continue
            with self.reporter.step(f"Deleting {state} on {name} (database, releases, secrets, certificates)"):
                connector.run(["rm", "-rf", "--", str(state)])
