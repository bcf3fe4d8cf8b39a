"""Every derived value (addresses, ports, paths, timeouts, budgets) computed once from the config."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from djship.config import Config, default_database_name, interval_seconds, is_local_domain, media_host
from djship.errors import DjshipError
from djship.logfile import LOG_MODE
from djship.tools import Tools

STATIC_URL = "/static/"
# With an external balancer: nginx's count of the requests it is reading or answering, for djship on the host only.
IN_FLIGHT_PATH = "/-/djship/in-flight"
MEDIA_URL = "/media/"
# Connections kept free for migrate, manage.py commands and djship itself.
CONNECTION_HEADROOM = 10
# PostgreSQL's superuser_reserved_connections default.
SUPERUSER_RESERVED = 3
# Longest path a unix socket may have on Linux (sun_path is 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107
# HSTS max-age for real domains (Mozilla's guidelines: two years); an hour where a domain is localhost, so a browser
# does not pin HTTPS on localhost for long.
HSTS_SECONDS = 63072000
LOCAL_HSTS_SECONDS = 3600
# The supervised program that renews ACME certificates (tls.mode = "acme").
RENEWAL_PROGRAM = "renewal"
# On the local target every component talks over loopback.
LOOPBACK_NETWORK = "127.0.0.0/8"
ROLES = ("lb", "app", "db")
# The supervised sshfs that mounts the media host's uploads on an app host, and the media host's SFTP-only user.
MEDIA_PROGRAM = "media-mount"
# On real hosts with backup.archive: the supervised sshfs that mounts the backup host's archive on the db host.
ARCHIVE_MOUNT_PROGRAM = "archive-mount"
# The supervised redis-server of [redis], and the variable that hands its URL to the app and its processes.
REDIS_PROGRAM = "redis"
REDIS_URL = "REDIS_URL"
# The supervised scheduler of [jobs] on every app host; it stops its running jobs with SIGTERM and waits this long.
JOBS_PROGRAM = "jobs"
JOBS_STOP_TIMEOUT = 30
# The whole environment supervisord starts with, on every host: its programs inherit it, so nothing of the shell
# (or SSH session) that runs djship reaches them. The app adds [env] and its secrets to it (appenv.DJSHIP_SETS).
PROGRAM_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


# WebSockets (app.interface = "asgi"): how long an idle one is kept open, by nginx and then by HAProxy's tunnel 10 s
# later (the HTTP timeouts are ordered the same way). uvicorn pings every 20 s, so only a vanished client idles that
# long. And how long HAProxy keeps a connection whose client closed its side (a WebSocket's last frames).
WEBSOCKET_IDLE_SECONDS = 3600
CLIENT_FIN_SECONDS = 30
# Django keeps a database connection per thread for CONN_MAX_AGE seconds; under ASGI each request's sync code runs
# in a thread of its own, so a kept connection would never be reused (Django's docs: disable them under ASGI).
PERSISTENT_CONNECTION_SECONDS = {"wsgi": 60, "asgi": 0}


# database.pooler = "pgbouncer": PgBouncer on every app host, in transaction mode, reached by the app on a unix socket
# (its port only names the socket, .s.PGSQL.6432: it listens on no TCP port). Its server connections carry an
# application_name of their own, by which djship counts them in pg_stat_activity (a PAUSE is done when none is
# left). It retries a failed login to PostgreSQL after half a second (its default, 15 s, would keep a restarted
# database unused that long). What PAUSE may wait for at most, for running queries to end, before a planned
# restart goes on without it.
POOLER_PROGRAM = "pgbouncer"
POOLER_PORT = 6432
POOLER_APPLICATION = "djship-pgbouncer"
POOLER_LOGIN_RETRY = 0.5
POOLER_PAUSE_TIMEOUT = 30
# With the pooler, how long a GET that failed on a database that went away (a crash restart) waits for it before
# answering its 500, which the balancer retries on another server; and how long the health check waits, within
# HAProxy's check timeout (its `inter`, 2 s), so a short outage shared by every server takes none out of rotation.
DATABASE_HOLD = 10
HEALTH_HOLD = 1.5
# The variable that has a program of the app connect to PostgreSQL itself rather than through the pooler: migrate
# and the scheduler of [jobs] hold session advisory locks, which transaction pooling cannot keep.
DIRECT_DATABASE = "DJSHIP_DATABASE_DIRECT"


# The settings module of every release (its djship_production package).
SETTINGS_MODULE = "djship_production.settings"


def release_environment(release_dir: Path) -> dict[str, str]:
    """What djship sets for Python code run in a release: the production settings, the project and djship_production
    importable."""
    return {"DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "PYTHONPATH": f"{release_dir / 'app'}:{release_dir}"}


def in_clean_environment(argv: list[str]) -> list[str]:
    """argv run with PROGRAM_ENVIRONMENT and nothing else (env -i)."""
    return ["/usr/bin/env", "-i", *(f"{name}={value}" for name, value in PROGRAM_ENVIRONMENT.items()), *argv]


@dataclass(frozen=True)
class AppServer:
    name: str
    address: str
    port: int
    dir: Path
    access_log: Path
    host: str
    """The host of the topology it runs on."""
    tls: bool = False
    """Whether the balancers reach it over TLS: a balancer runs on another host, so requests cross the network."""

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def release_link(self) -> Path:
        """The release this server runs: a symlink, switched one server at a time."""
        return self.dir / "release"

    @property
    def socket_dir(self) -> Path:
        """The one directory gunicorn writes: its socket's, which only nginx's workers may enter besides it."""
        return self.dir / "socket"

    @property
    def socket(self) -> Path:
        return self.socket_dir / "gunicorn.sock"

    @property
    def gunicorn_conf(self) -> Path:
        return self.dir / "gunicorn.conf.py"

    @property
    def nginx_conf(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def nginx_temp(self) -> Path:
        return self.dir / "nginx-temp"

    @property
    def live_file(self) -> Path:
        """The database and media directory this server's gunicorn uses (switched with media_link on restore)."""
        return self.dir / "live.json"

    @property
    def media_link(self) -> Path:
        """The media directory this server serves and writes: a symlink, switched with the database on restore."""
        return self.dir / "media"

    @property
    def programs(self) -> tuple[str, str]:
        return (f"{self.name}-gunicorn", f"{self.name}-nginx")

    @property
    def drain_file(self) -> Path:
        """With an external balancer: while it exists, nginx answers the health check 503 (the server leaves
        rotation without a runtime API)."""
        return self.dir / "draining"

    @property
    def health_log(self) -> Path:
        """With an external balancer: every health check nginx answered, "<time> <status> <peer>" a line."""
        return self.access_log.with_name(f"{self.name}-health.log")


@dataclass(frozen=True)
class Process:
    """A process type of [processes]: `count` supervised programs on each app host, in the live release."""

    name: str
    command: str
    """As djship.toml has it (status shows it)."""
    count: int
    stop_timeout: int

    @property
    def argv(self) -> list[str]:
        """The command's words, as a shell splits them; it runs without one, in the release's app directory, with the
        release's virtualenv first on PATH."""
        return shlex.split(self.command)

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(f"{self.name}-{number}" for number in range(1, self.count + 1))


@dataclass(frozen=True)
class Job:
    """A job of [jobs]: its command run once per slot, on whichever app host claims the slot first. Slots are
    `every` seconds apart, `offset` seconds after each multiple of `every` since the epoch (UTC): a daily job at
    03:00 has every 86400 and offset 10800."""

    name: str
    command: str
    """As djship.toml has it; split into words like a process's, `manage.py` run by the release's Python."""
    every: int
    offset: int = 0

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def schedule(self) -> str:
        if self.every == 86400:
            return f"daily at {self.offset // 3600:02d}:{self.offset % 3600 // 60:02d} UTC"
        unit, size = next((unit, size) for unit, size in (("h", 3600), ("m", 60), ("s", 1)) if self.every % size == 0)
        return f"every {self.every // size}{unit}"

    @property
    def window(self) -> int:
        """Seconds after its time a slot may still be started (a scheduler that was restarting, a host that died):
        the whole interval, at most an hour."""
        return min(self.every, 3600)

    def slot(self, now: float) -> int:
        """The latest slot at or before now (seconds since the epoch)."""
        return (int(now) - self.offset) // self.every * self.every + self.offset


REPLICATION_USER = "djship_replication"


@dataclass(frozen=True)
class Standby:
    """The db host that streams the primary's WAL (servers.db's second), over TLS, into a slot of its own."""

    host: str
    address: str
    primary_host: str

    @property
    def slot(self) -> str:
        """Its physical replication slot on the primary (the primary keeps the WAL it has not received yet), also
        its application_name in synchronous_standby_names."""
        return "djship_" + self.host.replace("-", "_")


@dataclass(frozen=True)
class Database:
    address: str
    port: int
    name: str
    user: str
    superuser: str
    max_connections: int
    data_dir: Path
    app_clients: tuple[str, ...]
    """Where the app servers connect from (pg_hba.conf: the app's role, from these only)."""
    admin_clients: tuple[str, ...]
    """Where djship administers it from, as the superuser."""
    tls: bool = False
    """Whether the app servers connect over TLS (verify-full): an app host is not the db host."""
    external: bool = False
    """database.url: a server djship does not run, reached with sslmode=verify-full against ca_bundle (each host's
    copy is Paths.database_ca); superuser is then the role djship administers as (database.admin_user, else the
    app's own), admin_database the database it connects to for that, and max_connections 0 until queried."""
    ca_bundle: Path | None = None
    """With external: database.ca_bundle, on the control machine."""
    admin_database: str = "postgres"
    creates: bool = True
    """Whether djship creates the app's role and database (its own server, or database.admin_user given)."""
    replicated: bool = False
    """servers.db is a list ([primary] or [primary, standby]): the app hosts then read where the primary is from
    database.json (connection_hosts), which a failover or switchover changes without a new release."""
    standby: Standby | None = None
    """servers.db's second host: a streaming replica of the primary (address)."""
    listen: str = ""
    """Where this plan's host's PostgreSQL listens: the primary's address, or on the standby host its own."""
    synchronous: bool = False
    """database.synchronous with a standby: a commit returns once the standby has flushed it too."""

    @property
    def endpoint(self) -> str:
        return f"{self.own_address}:{self.port}"

    @property
    def own_address(self) -> str:
        return self.listen or self.address

    @property
    def connection_hosts(self) -> str:
        """The app's libpq host list: the primary first, then the standby, which serves reads (and refuses writes)
        while the primary is gone and until a failover promotes it."""
        return ",".join([self.address, *([self.standby.address] if self.standby else [])])

    @property
    def is_standby(self) -> bool:
        """Whether this plan's host runs the standby."""
        return self.standby is not None and self.own_address == self.standby.address

    @property
    def replication_passfile(self) -> Path:
        """The replication role's password as the standby's walreceiver and pg_basebackup read it (0600)."""
        return self.data_dir.parent / "replication.pgpass"

    @property
    def fence_marker(self) -> Path:
        """Written into a former primary's data directory by a failover: it is never to be started as primary."""
        return self.data_dir / "djship-fenced"

    @property
    def cert_file(self) -> Path:
        """The db host's certificate for its address, which PostgreSQL presents (with tls)."""
        return self.data_dir / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "server.key"


@dataclass(frozen=True)
class Pooler:
    """database.pooler: PgBouncer on every app host between its app servers and PostgreSQL."""

    pool_size: int
    """PostgreSQL connections each app host's PgBouncer opens at most."""
    app_hosts: int
    max_client_conn: int
    """The app's connections one PgBouncer accepts: every thread of its host's app servers twice over, at least 100
    (its processes, `djship manage`)."""

    @property
    def server_connections(self) -> int:
        return self.pool_size * self.app_hosts


@dataclass(frozen=True)
class Redis:
    """[redis]: one redis-server on its host, password-protected, which the app hosts reach at address:port."""

    host: str
    address: str
    port: int
    dir: Path
    """On its host: the directory of its config (root's) and of its data (its user's alone)."""
    maxmemory: str | None
    backup: bool = False
    """[redis] backup: backups hold a snapshot of its data."""
    tls: bool = False
    """Clients on other hosts: Redis speaks TLS only, with its host's certificate from djship's CA."""

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def conf(self) -> Path:
        """Its configuration, with the password: 0600, its user's (redis-server reads it at start)."""
        return self.dir / "redis.conf"

    @property
    def data_dir(self) -> Path:
        """The append-only file and the snapshots."""
        return self.dir / "data"

    @property
    def cert_file(self) -> Path:
        return self.dir / "redis.crt"

    @property
    def key_file(self) -> Path:
        """0600, its user's."""
        return self.dir / "redis.key"

    def url(self, password: str, ca: Path) -> str:
        """REDIS_URL, for redis-py (Django's cache) and Celery (kombu) alike: over TLS, the certificate verified
        against ca (both pass the ssl_* parameters of the query on to Python's ssl)."""
        if not self.tls:
            return f"redis://:{password}@{self.endpoint}/0"
        return f"rediss://:{password}@{self.endpoint}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"


@dataclass(frozen=True)
class MediaStore:
    """The one directory of uploads on the media host, which every app host mounts over SFTP at its own `uploads`."""

    host: str
    address: str
    ssh_port: int
    export: Path
    """The media host's `uploads` directory (the media directory and those restores make beside it)."""
    clients: tuple[str, ...]
    """The app hosts' addresses, the only ones its key is accepted from; empty when one is a host name."""
    user: str
    """The media host's SFTP-only user ([users] media)."""

    @property
    def source(self) -> str:
        return f"{self.user}@{self.address}:{self.export}"

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.ssh_port == 22 else f"[{self.address}]:{self.ssh_port}"


@dataclass(frozen=True)
class Users:
    """Who each component runs as where djship acts as root: a system user each, owning only what that component
    writes (Plan.directories, Plan.file_access), so one that is compromised reaches nothing of the others."""

    app: str
    """gunicorn, Django and manage.py: read the release and their own secrets, write the uploads."""
    web: str
    """nginx's workers (its master stays root's): read the static files and the uploads, write nginx's temp files."""
    db: str
    """PostgreSQL: owns its data directory."""
    lb: str
    """HAProxy: the only reader of the site's private key, owns its runtime socket."""
    redis: str = "djship-redis"
    """redis-server: reads its config (with the password), owns its data directory."""
    pooler: str = "djship-pgbouncer"
    """PgBouncer: reads its password file alone, owns its socket directory."""


@dataclass(frozen=True)
class Directory:
    """A directory of the state root as it must be: its mode, its owner and group (None: djship's own user's)."""

    path: Path
    mode: int = 0o755
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class FileAccess:
    """Mode and owner (None: djship's own user) of a file djship writes on a host."""

    mode: int
    owner: str | None


@dataclass(frozen=True)
class Tls:
    """Where the site certificate comes from: djship's local CA, an ACME directory, or the user's own files."""

    mode: str
    acme_directory: str
    acme_email: str | None
    acme_ca_bundle: Path | None
    """CA bundle that verifies the ACME directory's own HTTPS certificate; None: the system's trust store."""
    cert_file: Path | None
    key_file: Path | None
    renewer: str = ""
    """acme: the host whose ACME client orders and renews the certificate (the first lb host) and runs the
    renewal timer."""
    renewer_address: str = ""
    """acme: where the other lb hosts reach the renewer: they pass it the CA's HTTP-01 requests and read its
    certificate from its TLS handshake."""


@dataclass(frozen=True)
class Paths:
    state: Path

    @property
    def tls(self) -> Path:
        return self.state / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def database_ca(self) -> Path:
        """database.ca_bundle's copy: what libpq verifies an external PostgreSQL's certificate against."""
        return self.tls / "database-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls / "ca.key"

    @property
    def host_cert(self) -> Path:
        """An app host's certificate for its address, signed by ca.crt, which nginx presents to the balancers on
        other hosts (the CA, then it, in one chain)."""
        return self.tls / "host.crt"

    @property
    def host_key(self) -> Path:
        return self.tls / "host.key"

    @property
    def site_pem(self) -> Path:
        return self.tls / "site.pem"

    @property
    def site_ocsp(self) -> Path:
        """The OCSP response HAProxy staples; its name is the certificate's plus .ocsp, as HAProxy expects."""
        return self.tls / "site.pem.ocsp"

    @property
    def acme_account_key(self) -> Path:
        return self.tls / "acme-account.key"

    @property
    def acme_site_key(self) -> Path:
        """The private key of the ACME certificate, the same on every lb host: each new certificate is for it, so
        the other lb hosts need only the certificate itself, which any TLS handshake with the renewer shows."""
        return self.tls / "acme-site.key"

    @property
    def challenge_map(self) -> Path:
        """HAProxy's map of ACME HTTP-01 challenge paths to key authorizations; filled through its runtime API."""
        return self.balancer / "acme-challenges.map"

    @property
    def renewal_state(self) -> Path:
        return self.tls / "renewal.json"

    @property
    def acme_ca_bundle(self) -> Path:
        """The copy of tls.acme_ca_bundle on the renewer, the host whose ACME client asks the directory."""
        return self.tls / "acme-ca.pem"

    @property
    def plan_file(self) -> Path:
        """The host's own plan, which djship's programs on it (djship.agent) run by."""
        return self.state / "plan.json"

    @property
    def secrets(self) -> Path:
        return self.state / "secrets"

    @property
    def app_secrets(self) -> Path:
        return self.secrets / "app.json"

    @property
    def admin_secrets(self) -> Path:
        return self.secrets / "admin.json"

    @property
    def env_secrets(self) -> Path:
        """The secrets of the app's environment (`djship env set`), in the shell syntax the app's programs source."""
        return self.secrets / "env"

    @property
    def env_file(self) -> Path:
        """The plain values of the app's environment ([env] in djship.toml), in the same syntax."""
        return self.state / "env"

    @property
    def database_secrets(self) -> Path:
        """On the control machine: the passwords of an external PostgreSQL (`djship db password`), 0600."""
        return self.secrets / "database.json"

    @property
    def redis_secrets(self) -> Path:
        """On the control machine: the Redis password, made once (read back from the redis host when lost)."""
        return self.secrets / "redis.json"

    @property
    def redis(self) -> Path:
        return self.state / "redis"

    @property
    def pgpass(self) -> Path:
        """The superuser's password as psql reads it (PGPASSFILE), beside the database it administers."""
        return self.secrets / "pgpass"

    @property
    def media_key(self) -> Path:
        """The private key an app host mounts the media host's uploads with."""
        return self.secrets / "media_ed25519"

    @property
    def media_known_hosts(self) -> Path:
        """The media host's SSH host key, as djship verified it: the app hosts' sshfs trusts only it."""
        return self.secrets / "media_known_hosts"

    @property
    def backup_key(self) -> Path:
        """On the db host: the private key it sends backups to the backup host with."""
        return self.secrets / "backup_ed25519"

    @property
    def backup_known_hosts(self) -> Path:
        """On the db host: the backup host's SSH host key, as djship verified it."""
        return self.secrets / "backup_known_hosts"

    @property
    def archive_store(self) -> Path:
        """On the backup host: pgBackRest's repository (backup.archive), owned by its SFTP user."""
        return self.state / "archive"

    @property
    def archive_mount(self) -> Path:
        """On the db host: where it mounts the backup host's archive_store (root's until the mount covers it)."""
        return self.state / "archive-mount"

    @property
    def backup_home(self) -> Path:
        """On the backup host: the home of its SFTP user (root-owned), holding the db host's key."""
        return self.state / "backup-access"

    @property
    def backup_authorized_keys(self) -> Path:
        return self.backup_home / ".ssh" / "authorized_keys"

    @property
    def media_home(self) -> Path:
        """On the media host: the home of its SFTP user (root-owned), holding the app hosts' key."""
        return self.state / "media-access"

    @property
    def media_authorized_keys(self) -> Path:
        return self.media_home / ".ssh" / "authorized_keys"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def releases(self) -> Path:
        return self.state / "releases"

    @property
    def wheels(self) -> Path:
        """On a remote host: the wheels shipped from the control machine, one directory per wheelhouse."""
        return self.state / "wheels"

    @property
    def venvs(self) -> Path:
        return self.state / "venvs"

    @property
    def shared(self) -> Path:
        return self.state / "shared"

    @property
    def shared_static(self) -> Path:
        """The static files of every kept release, each app server's fallback (see deploy/static.py)."""
        return self.shared / "static"

    @property
    def media(self) -> Path:
        """Without a media host: the media directory until a restore makes another one live (see `live`)."""
        return self.shared / "media"

    @property
    def uploads(self) -> Path:
        """With a media host: the directory it holds and every app host mounts, where the media directories are."""
        return self.state / "uploads"

    @property
    def database_json(self) -> Path:
        """On a code host with servers.db as a list: where the primary and the standby are (read by the settings)."""
        return self.state / "database.json"

    @property
    def live(self) -> Path:
        """Which database and media directory the app uses, when a restore changed them (read by the settings)."""
        return self.state / "live.json"

    @property
    def restoring(self) -> Path:
        """live.json's shape, naming the database a restore is about to switch to (for its migrate)."""
        return self.state / "restoring.json"

    @property
    def backup_lock(self) -> Path:
        return self.state / "backup.lock"

    @property
    def daily_backups(self) -> Path:
        """On a db host, its daily backups (on one machine they go to backup.dir)."""
        return self.state / "backups"

    @property
    def servers(self) -> Path:
        return self.state / "servers"

    @property
    def supervisor(self) -> Path:
        return self.state / "supervisor"

    @property
    def supervisor_conf(self) -> Path:
        return self.supervisor / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.supervisor / "supervisor.sock"

    @property
    def supervisor_pid(self) -> Path:
        return self.supervisor / "supervisord.pid"

    @property
    def balancer(self) -> Path:
        return self.state / "balancer"

    @property
    def haproxy_conf(self) -> Path:
        return self.balancer / "haproxy.cfg"

    @property
    def haproxy_socket(self) -> Path:
        return self.balancer / "haproxy.sock"

    @property
    def postgres(self) -> Path:
        return self.state / "postgres"

    @property
    def pooler(self) -> Path:
        """PgBouncer's config and password file (root's directory) and its socket directory."""
        return self.state / "pgbouncer"

    @property
    def pooler_conf(self) -> Path:
        return self.pooler / "pgbouncer.ini"

    @property
    def pooler_auth_file(self) -> Path:
        """The app role's password, with which PgBouncer checks the app (scram) and logs in to PostgreSQL: 0600,
        its user's alone."""
        return self.pooler / "userlist.txt"

    @property
    def pooler_socket_dir(self) -> Path:
        return self.pooler / "socket"

    @property
    def deploy_lock(self) -> Path:
        return self.state / "deploy.lock"

    @property
    def current(self) -> Path:
        """The release that new app servers start on and that `djship manage` runs in."""
        return self.state / "current"

    @property
    def jobs_file(self) -> Path:
        """On an app host: the jobs of [jobs] its scheduler runs, as JSON."""
        return self.state / "jobs.json"


@dataclass(frozen=True)
class BackupTarget:
    """The backup host: the db host sends it each backup (djship.agent, over SFTP, as its SFTP-only user)."""

    host: str
    address: str
    ssh_port: int
    dir: Path
    """Where the backups are kept there: its `<root>/backups`, owned by the SFTP user."""
    senders: tuple[str, ...]
    """The db hosts' addresses (the primary's, the standby's), the only ones the key is accepted from."""
    user: str
    """The backup host's SFTP-only user ([users] backup)."""

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.ssh_port == 22 else f"[{self.address}]:{self.ssh_port}"


@dataclass(frozen=True)
class Archive:
    """backup.archive: pgBackRest's repository (off the db host: on one machine in backup.dir) and its files on the db
    host, where PostgreSQL's archive_command pushes every WAL segment as the db user."""

    repo: Path
    """pgBackRest's repo1-path on the db host: backup.dir's `archive` on one machine; on real hosts the mount point of
    store."""
    work: Path
    """On the db host: pgBackRest's log and lock directories and the superuser's password file, the db user's."""
    timeout: int
    """archive_timeout: seconds after which a WAL segment is pushed even if not full."""
    scratch_port: int
    """The port of the scratch cluster a point-in-time restore recovers into (on the db host's address)."""
    stanza: str = "main"
    store: Path | None = None
    """On real hosts: the repository's directory on the backup host (BackupPlan.target), which the db host mounts at
    repo with sshfs (ARCHIVE_MOUNT_PROGRAM) as its SFTP-only user."""

    @property
    def conf(self) -> Path:
        """Beside the db user's directory, in root's state directory: the db user reads it, never writes it."""
        return self.work.parent / "pgbackrest.conf"

    @property
    def pgpass(self) -> Path:
        return self.work / "pgpass"

    @property
    def scratch_dir(self) -> Path:
        return self.work / "scratch"

    @property
    def verified(self) -> Path:
        """The last verification's result (`djship backup verify` or the daily backup's), in root's state directory."""
        return self.work.parent / "archive-verified.json"

    @property
    def scratch_lock(self) -> Path:
        """Held while the scratch cluster is in use (a point-in-time restore, a verification): one at a time."""
        return self.work.parent / "archive-scratch.lock"


@dataclass(frozen=True)
class ExternalBalancer:
    """[balancer] external = true: a balancer djship does not run (an ALB). It sends requests only to the app servers
    whose health check answers 200, so a server leaves rotation by answering 503 (its drain file) for drain_seconds."""

    trusted: tuple[str, ...]
    """Its networks: the only peers an app server takes requests, X-Forwarded-For and X-Forwarded-Proto from."""
    drain_seconds: int
    healthy_threshold: int
    health_interval: int

    @property
    def back_timeout(self) -> int:
        """How long a server back in rotation may wait for the balancer's checks that put it back: its threshold,
        twice over, plus a minute (a check lost, a balancer node that checks late)."""
        return 2 * self.healthy_threshold * self.health_interval + 60


@dataclass(frozen=True)
class BackupPlan:
    dir: Path
    keep: int
    schedule: str | None
    """UTC "HH:MM" at which the db host's supervised scheduler takes a backup daily; None: no scheduler."""
    daily_dir: Path | None = None
    """On real hosts, where the db host keeps its daily backups (the control machine is off at 03:30); None on one
    machine, where they go to dir like every other."""
    target: BackupTarget | None = None
    """servers.backup: the host every backup is sent to (daily_dir then only stages them on the db host)."""
    archive: Archive | None = None
    """backup.archive: continuous archiving with pgBackRest; None: pg_dump backups only."""

    @property
    def archive_place(self) -> tuple[str | None, Path]:
        """Where the archive's repository is: (the backup host, its directory there), or (None, backup.dir's)."""
        if self.archive.store is not None and self.target is not None:
            return self.target.host, self.archive.store
        return None, self.archive.repo

    @property
    def kept(self) -> tuple[Path, ...]:
        """On the backup host: what `destroy` keeps (the backups, and the archive's repository)."""
        if self.target is None:
            return ()
        store = self.archive.store if self.archive is not None else None
        return (self.target.dir, *((store,) if store is not None else ()))


@dataclass(frozen=True)
class Plan:
    project_dir: Path
    settings_module: str
    wsgi_application: str
    requirements: Path
    python: str | None
    exclude: tuple[str, ...]
    domains: tuple[str, ...]
    hsts_seconds: int
    hsts_subdomains: bool
    """includeSubDomains: never where a domain is localhost (it would pin every *.localhost name too)."""
    hsts_preload: bool
    tls: Tls
    balancer_bind: str
    balancer_sources: tuple[str, ...]
    """The only addresses app servers accept requests from (and trust X-Forwarded-For from): the balancers'."""
    https_port: int
    http_port: int
    app_servers: tuple[AppServer, ...]
    workers: int
    threads: int
    gunicorn_timeout: int
    nginx_timeout: int
    balancer_timeout: int
    max_body_size: str
    health_path: str
    health_timeout: int
    batch_size: int
    keep_releases: int
    backup: BackupPlan
    database: Database
    paths: Paths
    users: Users | None
    """None where djship does not act as root: every component then runs as djship's own user."""
    tools: Tools
    host: str = ""
    """The host of the topology this plan is for."""
    roles: frozenset[str] = frozenset(ROLES)
    media: MediaStore | None = None
    """The media host holding the uploads; None: they are in this host's own `shared` directory."""
    env: tuple[tuple[str, str], ...] = ()
    """[env]: the plain values of the app's environment, as (name, value) in the file's order."""
    processes: tuple[Process, ...] = ()
    """[processes]: what runs beside the web on every host of `process_role`."""
    process_role: Literal["app", "worker"] = "app"
    """Where [processes] run: on the app hosts, or on the worker hosts once servers.worker names them."""
    redis: Redis | None = None
    """[redis]: the one Redis of the system, whichever host runs it; None: no Redis, no REDIS_URL."""
    pooler: Pooler | None = None
    """database.pooler: PgBouncer on every app host; None: the app connects to PostgreSQL itself."""
    jobs: tuple[Job, ...] = ()
    """[jobs]: run by the scheduler on every app host, each slot on one of them."""
    interface: Literal["wsgi", "asgi"] = "wsgi"
    """What gunicorn serves: the WSGI application with sync/gthread workers, or the ASGI one with uvicorn's."""
    asgi_application: str | None = None
    external: ExternalBalancer | None = None
    """A balancer djship does not run; None: djship's HAProxy on the lb hosts."""
    websocket_timeout: int = WEBSOCKET_IDLE_SECONDS
    """nginx's read and send timeouts of an upgraded (WebSocket) connection."""
    balancer_tunnel_timeout: int = WEBSOCKET_IDLE_SECONDS + 10
    balancer_client_fin_timeout: int = CLIENT_FIN_SECONDS

    @property
    def asgi(self) -> bool:
        return self.interface == "asgi"

    @property
    def conn_max_age(self) -> int:
        return PERSISTENT_CONNECTION_SECONDS[self.interface]

    def holds(self, role: str) -> bool:
        return role in self.roles

    @property
    def runs_code(self) -> bool:
        """This host runs the app's code (an app or a worker host): it has the releases, their settings, the app's
        secrets and environment, and the uploads."""
        return self.holds("app") or self.holds("worker")

    @property
    def runs_postgres(self) -> bool:
        """This host runs PostgreSQL: the primary (db) or the standby."""
        return self.holds("db") or self.holds("standby")

    @property
    def runs_redis(self) -> bool:
        return self.redis is not None and self.redis.host == self.host

    @property
    def pools(self) -> bool:
        """Whether this host runs PgBouncer (an app host, with database.pooler)."""
        return self.pooler is not None and self.holds("app")

    @property
    def renews(self) -> bool:
        """Whether this host runs the ACME client and its renewal timer."""
        return self.tls.mode == "acme" and self.tls.renewer == self.host

    @property
    def mounts_archive(self) -> bool:
        """This db host mounts the backup host's archive (backup.archive on real hosts): the primary, whose
        archive_command pushes into it, and the standby, so that it does the moment it is promoted."""
        archive = self.backup.archive
        return self.runs_postgres and archive is not None and archive.store is not None and self.backup.target is not None

    @property
    def schedules_backups(self) -> bool:
        """Whether this host runs the daily backup (the db host, when backup.schedule is set)."""
        return self.backup.schedule is not None and self.holds("db")

    @property
    def follows(self) -> bool:
        """Whether this lb host takes the renewer's ACME certificate (tls.mode = "acme" with several lb hosts)."""
        return self.tls.mode == "acme" and self.holds("lb") and not self.renews

    @property
    def sends_backups(self) -> bool:
        """Whether this host sends the backups to a backup host (the db host, with servers.backup)."""
        return self.backup.target is not None and self.holds("db")

    @property
    def runs_agent(self) -> bool:
        """Whether djship's own program (djship.agent) runs here: the ACME client or its follower, the daily
        backup."""
        return self.renews or self.follows or self.schedules_backups or self.sends_backups

    @property
    def media_dirs(self) -> Path:
        """Where the media directories are: the live one and those restores make beside it."""
        return self.paths.uploads if self.media else self.paths.shared

    @property
    def media_dir(self) -> Path:
        """The media directory until a restore makes another one live."""
        return self.media_dirs / "media"

    @property
    def media_owner(self) -> str | None:
        """Who owns the uploads here: the media host's SFTP user, through which every app host writes them, else
        the app's user."""
        return self.media.user if self.media and self.holds("media") else self.user_of("app")

    def user_of(self, component: Literal["app", "web", "db", "lb", "redis", "pooler"]) -> str | None:
        """Who a component runs as: its user of [users], or None (djship's own user) where djship is not root."""
        return getattr(self.users, component) if self.users else None

    @property
    def users_here(self) -> tuple[str, ...]:
        """The system users the components of this host run as."""
        if self.users is None:
            return ()
        wanted = {"app": (self.users.app, self.users.web), "worker": (self.users.app,), "db": (self.users.db,),
                  "standby": (self.users.db,), "lb": (self.users.lb,)}
        users = tuple(dict.fromkeys(user for role, users in wanted.items() if self.holds(role) for user in users))
        return users + ((self.users.redis,) if self.runs_redis else ()) + ((self.users.pooler,) if self.pools else ())

    @property
    def directories(self) -> tuple[Directory, ...]:
        """The directories of the state root on this host, parents first, each as it must be: root's, except the
        few a component writes into (HAProxy's socket directory, gunicorn's socket directory)."""
        paths = self.paths
        root = "root" if self.users else None  # named, so a directory an earlier djship gave away comes back
        directories = [Directory(paths.state, owner=root)]
        directories += [Directory(path, owner=root) for path in (paths.logs, paths.releases, paths.venvs, paths.servers)]
        directories += [Directory(paths.supervisor, 0o700, root), Directory(paths.secrets, 0o711, root),
                        Directory(paths.tls, 0o711, root)]
        if self.holds("lb"):
            directories.append(Directory(paths.balancer, 0o700, self.user_of("lb")))
        if self.runs_redis:
            directories += [Directory(self.redis.dir, owner=root), Directory(self.redis.data_dir, 0o700,
                                                                             self.user_of("redis"))]
        if self.pools:  # its socket: the app's group may connect (and must still give the password)
            directories += [Directory(paths.pooler, owner=root),
                            Directory(paths.pooler_socket_dir, 0o750, self.user_of("pooler"), self.user_of("app"))]
        for server in self.servers_here:
            # nginx's master (root's) makes its temp directories inside nginx_temp and gives them to its workers.
            directories += [Directory(server.dir, owner=root), Directory(server.nginx_temp, owner=root)]
            directories.append(Directory(server.socket_dir, 0o750, self.user_of("app"), self.user_of("web")))
        return tuple(directories)

    def file_access(self, path: Path) -> FileAccess:
        """Secrets and keys 0600, each owned by the one component that reads it (the app its secrets, HAProxy the
        site key, PostgreSQL its configuration), every other file root's: the superuser password, the CA key."""
        paths = self.paths
        redis_conf = self.redis.conf if self.redis else None
        private = path.parent == paths.secrets or path in (
            paths.site_pem, paths.site_ocsp, paths.ca_key, paths.host_key, paths.acme_site_key, self.database.key_file,
            redis_conf, self.redis.key_file if self.redis else None, paths.pooler_auth_file,
            self.database.replication_passfile)
        owner = None
        if self.users:  # nginx's master, root's, reads the host's certificate and key
            readers = {paths.app_secrets: self.users.app, paths.env_secrets: self.users.app,
                       paths.site_pem: self.users.lb, paths.site_ocsp: self.users.lb, redis_conf: self.users.redis,
                       paths.pooler_auth_file: self.users.pooler,
                       **({self.redis.key_file: self.users.redis} if self.redis else {})}
            owner = self.users.db if path.is_relative_to(self.database.data_dir) \
                or path == self.database.replication_passfile else readers.get(path, "root")
        mode = 0o600 if private else LOG_MODE if path.is_relative_to(paths.logs) else 0o644
        return FileAccess(mode, owner)

    @property
    def processes_here(self) -> tuple[Process, ...]:
        """The process types that run on this plan's host: every one on a host of the process role."""
        return self.processes if self.holds(self.process_role) else ()

    @property
    def jobs_here(self) -> tuple[Job, ...]:
        """The jobs this plan's host schedules: every one on an app host."""
        return self.jobs if self.holds("app") else ()

    @property
    def programs_beside_web(self) -> tuple[str, ...]:
        """The programs of the app beside its servers on this plan's host, restarted on each new release: the
        processes of [processes], then the scheduler of [jobs]."""
        return (*(name for process in self.processes_here for name in process.programs),
                *((JOBS_PROGRAM,) if self.jobs_here else ()))

    @property
    def servers_here(self) -> tuple[AppServer, ...]:
        """The app servers that run on this plan's host."""
        return tuple(server for server in self.app_servers if server.host == self.host)

    @property
    def url(self) -> str:
        return f"{self.origins[0]}/"

    @property
    def balancer_starts_as_root(self) -> bool:
        """HAProxy binds a port below 1024 (443 and 80 on real hosts): it starts as root and its workers then
        run as the balancer's user."""
        return self.users is not None and min(self.https_port, self.http_port) < 1024

    @property
    def local_ca_cert(self) -> Path | None:
        """The CA a client must trust: djship's own in local mode; none to add for ACME or the user's files."""
        return self.paths.ca_cert if self.tls.mode == "local" else None

    @property
    def origins(self) -> tuple[str, ...]:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return tuple(f"https://{domain}{port}" for domain in self.domains)

    @property
    def hsts_header(self) -> str:
        """The Strict-Transport-Security value the balancer sends."""
        return "; ".join([f"max-age={self.hsts_seconds}", *(["includeSubDomains"] if self.hsts_subdomains else []),
                          *(["preload"] if self.hsts_preload else [])])

    @property
    def health_host(self) -> str:
        return self.domains[0]

    @property
    def encrypted_links(self) -> bool:
        """Whether a link between hosts carries requests or queries (then over TLS, verified against ca.crt)."""
        return self.database.tls or any(server.tls for server in self.app_servers)

    @property
    def connections_needed(self) -> int:
        """What PostgreSQL must accept: a connection per thread of every app server, or with the pooler what every
        app host's PgBouncer opens at most, whatever the number of app servers; plus the headroom (migrate, the
        schedulers of [jobs] and djship connect directly)."""
        if self.pooler:
            return self.pooler.server_connections + CONNECTION_HEADROOM
        return len(self.app_servers) * self.workers * self.threads + CONNECTION_HEADROOM


def _in_project(project_dir: Path, path: str | None) -> Path | None:
    """A path from djship.toml: absolute, or relative to the project directory."""
    return None if path is None else project_dir / Path(path).expanduser()


def _database(config: Config, paths: Paths, address: str, app_clients: tuple[str, ...],
              admin_clients: tuple[str, ...], tls: bool, config_dir: Path) -> Database:
    external = config.database.external
    if external is not None:
        admin = config.database.admin_user
        return Database(
            address=external.host, port=external.port, name=external.name, user=external.user,
            superuser=admin or external.user, max_connections=0, data_dir=paths.postgres / "data", app_clients=(),
            admin_clients=(), external=True, ca_bundle=_in_project(config_dir, config.database.ca_bundle),
            admin_database="postgres" if admin else external.name, creates=admin is not None,
        )
    name = config.database.name or default_database_name(config.project.settings_module)
    return Database(
        address=address,
        port=config.database.port,
        name=name,
        user=config.database.user or name,
        superuser="postgres",
        max_connections=config.database.max_connections,
        data_dir=paths.postgres / "data",
        app_clients=app_clients,
        admin_clients=admin_clients,
        tls=tls,
    )


@dataclass(frozen=True)
class HostSpec:
    """What the plans need to know of one host of the topology."""

    name: str
    address: str
    """Where the other hosts reach it."""
    roles: tuple[str, ...]
    root: Path
    """Its state root: where everything djship makes on it lives."""
    tools: Tools
    login_root: bool
    """Whether djship acts there as root (then each component runs as its own user of [users]; else as djship's own
    user)."""
    loopback: bool = False
    """One machine: its components sit on the loopback addresses and ports of [app], [database] and [balancer]
    (app server i on app.address_prefix.i); else on the host's address, app server i on app.port + i - 1."""


# The settings that say where things run on this machine; on real hosts [servers] and [hosts] say it instead.
_LOCAL_ONLY = {"app": ("address_prefix",), "database": ("address",), "balancer": ("bind",), "redis": ("address",)}


def remote_config_problems(config: Config) -> list[str]:
    """What a remote target cannot take: the one-machine placement keys, and what is not built for hosts yet."""
    problems = [
        f"{section}.{key}: on real hosts [servers] and [hosts] say where things run; remove {section}.{key}"
        for section, keys in _LOCAL_ONLY.items() for key in keys
        if getattr(config, section) is not None and key in getattr(config, section).model_fields_set
    ]
    media = media_host(config)
    if config.backup.schedule and media is not None and media != config.servers.primary:
        problems.append(f"backup.schedule: the daily backup runs on the db host, which must hold the uploads too, but "
                        f"servers.media puts them on {media!r}; remove servers.media (the db host then holds them)")
    if config.backup.archive and (config.servers is None or config.servers.backup is None):
        problems.append("backup.archive: on real hosts pgBackRest's repository is kept on the backup host, never on the "
                        "db host; name one in servers.backup, or remove backup.archive")
    return problems


def _address_rule(address: str) -> str:
    return f"{address}/32" if re.fullmatch(r"[0-9.]+", address) else address


def _servers_of(config: Config, host: HostSpec, count: int, tls: bool) -> list[AppServer]:
    """The app servers of one app host: app1..appN on one machine; on a host, the first named after the host and
    the others <host>-2, <host>-3 … (so adding one never renames another)."""
    paths = Paths(host.root)
    servers = []
    for index in range(1, count + 1):
        if host.loopback:
            name, address, port = f"app{index}", f"{config.app.address_prefix}.{index}", config.app.port
        else:
            name, address, port = host.name if index == 1 else f"{host.name}-{index}", host.address, config.app.port + index - 1
        servers.append(AppServer(name, address, port, paths.servers / name, paths.logs / f"{name}-nginx-access.log",
                                 host.name, tls))
    return servers


def batch_size(setting: int | str, servers: int) -> int:
    """deploy.batch_size as a number of servers: a share ("25%") rounded up, but never every server (one stays in
    rotation) and never none."""
    if isinstance(setting, int):
        return setting
    return max(1, min(math.ceil(servers * int(setting[:-1]) / 100), servers - 1))


def servers_per_host(config: Config, app_hosts: int) -> int:
    """app.servers, else 2 where one host holds the app role (so it deploys with no downtime too), else 1 each."""
    return config.app.servers or (2 if app_hosts == 1 else 1)


def build_plans(config: Config, project_dir: Path, hosts: list[HostSpec]) -> dict[str, Plan]:
    """One plan per host of the topology: its own paths under its root, its own tools, only the roles it holds;
    every address and port is the same in all of them (HAProxy's server lines, the database's address, pg_hba)."""
    one_machine = any(host.loopback for host in hosts)
    problems = [] if one_machine else remote_config_problems(config)
    if problems:
        raise DjshipError(f"djship.toml: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    project_dir = project_dir.resolve()
    app_hosts = [host for host in hosts if "app" in host.roles]
    code_hosts = [host for host in hosts if {"app", "worker"} & set(host.roles)]
    lb_hosts = [host for host in hosts if "lb" in host.roles]
    # With database.url no host holds the db role: the first app host stands in where a path on it is needed.
    db_host = next((host for host in hosts if "db" in host.roles), app_hosts[0])
    standby_host = next((host for host in hosts if "standby" in host.roles), None)
    count = servers_per_host(config, len(app_hosts))
    # A link that crosses from one host to another is encrypted; one within a host (loopback) is not.
    external = _external_balancer(config)
    servers = tuple(server for host in app_hosts
                    for server in _servers_of(config, host, count, tls=config.balancer.tls if external else
                                              any(lb.name != host.name for lb in lb_hosts)))
    database_tls = any(host.name != db_host.name for host in code_hosts) or standby_host is not None
    taken = next((name for name in config.processes if name in {*(s.name for s in servers), *(h.name for h in hosts)}),
                 None)
    if taken:
        raise DjshipError(f"djship.toml: processes.{taken}: {taken!r} is the name of an app server or a host (`djship "
                          f"logs {taken}` would mean both); rename the process, e.g. worker")
    if one_machine:
        database = _database(config, Paths(db_host.root), config.database.address, (LOOPBACK_NETWORK,),
                             (LOOPBACK_NETWORK,), database_tls, project_dir)
        balancer = (config.balancer.bind, config.balancer.https_port, config.balancer.http_port)
        sources: tuple[str, ...] = (LOOPBACK_NETWORK,)
    else:
        database = _database(
            config, Paths(db_host.root), db_host.address,
            tuple(_address_rule(host.address) for host in code_hosts), (_address_rule(db_host.address),), database_tls,
            project_dir,
        )
        explicit = config.balancer.model_fields_set
        balancer = (
            "0.0.0.0",
            config.balancer.https_port if "https_port" in explicit else 443,
            config.balancer.http_port if "http_port" in explicit else 80,
        )
        sources = external.trusted if external else tuple(_address_rule(lb.address) for lb in lb_hosts)
        database = replace(database, replicated=config.servers is not None and isinstance(config.servers.db, list))
        if standby_host is not None:
            database = replace(database, standby=Standby(standby_host.name, standby_host.address, db_host.name),
                               synchronous=config.database.synchronous)
    media = _media_store(config, hosts, code_hosts)
    redis = _redis(config, hosts, db_host, one_machine,
                   [*code_hosts, *([db_host] if config.redis and config.redis.backup else [])])
    threads = count * config.app.workers * config.app.threads
    pooler = Pooler(config.database.pool_size, len(app_hosts), max(100, 2 * threads)) \
        if config.database.pooler == "pgbouncer" else None
    plans = {}
    for host in hosts:
        plan = _assemble(
            config, project_dir, host.tools, Paths(host.root), servers, _database_of(database, host), balancer=balancer,
            balancer_sources=sources, users=Users(**config.users.model_dump(exclude={"media", "backup"})) if host.login_root else None,
        )
        tls = replace(plan.tls, renewer=lb_hosts[0].name, renewer_address=lb_hosts[0].address) if lb_hosts else plan.tls
        backup = plan.backup if one_machine else _remote_backup(config, plan.backup, hosts, db_host, host)
        plans[host.name] = _checked(replace(plan, host=host.name, roles=frozenset(host.roles), media=media, tls=tls,
                                            backup=backup, redis=redis, pooler=pooler, external=external))
    return plans


def _archive(config: Config, project_dir: Path, paths: Paths, database: Database) -> Archive | None:
    if not config.backup.archive:
        return None
    backup_dir = (project_dir / (config.backup.dir or Path(config.state_dir) / "backups")).resolve()
    return Archive(repo=backup_dir / "archive", work=paths.state / "pgbackrest", timeout=config.backup.archive_timeout,
                   scratch_port=database.port + 1)


def _database_of(database: Database, host: HostSpec) -> Database:
    """The database as a host's plan has it: on the standby host its PostgreSQL listens on, and is administered
    from, its own address, in its own data directory."""
    if "standby" not in host.roles:
        return database
    return replace(database, listen=host.address, data_dir=Paths(host.root).postgres / "data",
                   admin_clients=(_address_rule(host.address),))


def _external_balancer(config: Config) -> ExternalBalancer | None:
    balancer = config.balancer
    if not balancer.external:
        return None
    return ExternalBalancer(tuple(balancer.trusted), config.deploy.drain_seconds or 0, balancer.healthy_threshold,
                            balancer.health_interval)


def _remote_backup(config: Config, backup: BackupPlan, hosts: list[HostSpec], db_host: HostSpec,
                   host: HostSpec) -> BackupPlan:
    """On real hosts: the daily backups kept on the db host, sent to the backup host; the archive's repository there,
    mounted on each db host, the standby's in its own root (remote_config_problems refuses an archive without a
    backup host)."""
    target = _backup_target(config, hosts, db_host)
    archive = backup.archive
    if archive is not None and target is not None:
        holder = next(spec for spec in hosts if spec.name == target.host)
        mounter = host if "standby" in host.roles else db_host
        archive = replace(archive, repo=Paths(mounter.root).archive_mount, store=Paths(holder.root).archive_store)
    return replace(backup, daily_dir=Paths(db_host.root).daily_backups, target=target, archive=archive)


def _backup_target(config: Config, hosts: list[HostSpec], db_host: HostSpec) -> BackupTarget | None:
    holder = next((host for host in hosts if "backup" in host.roles), None)
    if holder is None:
        return None
    if not holder.login_root:
        raise DjshipError(f"servers.backup: djship logs in to {holder.name} as another user than root; the backup "
                          f"host needs root (djship makes its user {config.users.backup} and the directory it owns)")
    ssh_port = config.hosts[holder.name].ssh_port or config.ssh.port
    senders = (db_host.address, *(host.address for host in hosts if "standby" in host.roles))
    return BackupTarget(holder.name, holder.address, ssh_port, Paths(holder.root).daily_backups, senders,
                        config.users.backup)


def _redis(config: Config, hosts: list[HostSpec], db_host: HostSpec, one_machine: bool,
           clients: list[HostSpec]) -> Redis | None:
    """[redis] on the host with the redis role, else the db host: on one machine on a loopback address of its own,
    on hosts on the host's address (the app hosts connect to it there)."""
    if config.redis is None:
        return None
    holder = next((host for host in hosts if "redis" in host.roles), db_host)
    address = config.redis.address if one_machine else holder.address
    # A link that crosses from one host to another is encrypted, as the app's to PostgreSQL is.
    tls = not one_machine and any(client.name != holder.name for client in clients)
    return Redis(holder.name, address, config.redis.port, Paths(holder.root).redis, config.redis.maxmemory,
                 config.redis.backup, tls)


def _media_store(config: Config, hosts: list[HostSpec], code_hosts: list[HostSpec]) -> MediaStore | None:
    holder = next((host for host in hosts if "media" in host.roles), None)
    if holder is None:
        return None
    if not holder.login_root:
        raise DjshipError(f"servers.media: djship logs in to {holder.name} as another user than root; the media host "
                          f"needs root (djship makes its user {config.users.media} and the directory it owns)")
    ssh_port = config.hosts[holder.name].ssh_port or config.ssh.port
    # sshd matches from= against the connecting address (host names only with UseDNS, off by default).
    addresses = tuple(host.address for host in code_hosts)
    clients = addresses if all(re.fullmatch(r"[0-9.]+", address) for address in addresses) else ()
    return MediaStore(holder.name, holder.address, ssh_port, Paths(holder.root).uploads, clients, config.users.media)


def _assemble(
    config: Config, project_dir: Path, tools: Tools, paths: Paths, servers: tuple[AppServer, ...], database: Database,
    balancer: tuple[str, int, int], balancer_sources: tuple[str, ...], users: Users | None,
) -> Plan:
    app = config.app
    local_domain = any(is_local_domain(domain) for domain in config.site.domains)
    hsts = config.site.hsts_seconds or (LOCAL_HSTS_SECONDS if local_domain else HSTS_SECONDS)
    bind, https_port, http_port = balancer
    return Plan(
        project_dir=project_dir,
        settings_module=config.project.settings_module,
        wsgi_application=config.project.wsgi_application,
        interface=app.interface,
        asgi_application=config.project.asgi_application,
        requirements=project_dir / config.project.requirements,
        python=config.project.python,
        exclude=tuple(config.project.exclude),
        domains=tuple(config.site.domains),
        hsts_seconds=hsts,
        hsts_subdomains=not local_domain,
        hsts_preload=config.site.hsts_preload,
        tls=Tls(
            mode=config.tls.mode,
            acme_directory=config.tls.acme_directory,
            acme_email=config.tls.acme_email,
            acme_ca_bundle=_in_project(project_dir, config.tls.acme_ca_bundle),
            cert_file=_in_project(project_dir, config.tls.cert_file),
            key_file=_in_project(project_dir, config.tls.key_file),
        ),
        balancer_bind=bind,
        balancer_sources=balancer_sources,
        https_port=https_port,
        http_port=http_port,
        app_servers=servers,
        workers=app.workers,
        threads=app.threads,
        gunicorn_timeout=app.timeout,
        nginx_timeout=app.timeout + 5,
        balancer_timeout=app.timeout + 10,
        max_body_size=app.max_body_size,
        health_path=app.health_path,
        health_timeout=config.deploy.health_timeout,
        batch_size=batch_size(config.deploy.batch_size, len(servers)),
        keep_releases=config.deploy.keep_releases,
        backup=BackupPlan(
            # On the control machine, whatever the host: backups are kept off the db host (.djship/backups).
            dir=(project_dir / (config.backup.dir or Path(config.state_dir) / "backups")).resolve(),
            keep=config.backup.keep,
            schedule=config.backup.schedule,
            archive=_archive(config, project_dir, paths, database),
        ),
        database=database,
        paths=paths,
        users=users,
        tools=tools,
        env=tuple((name, str(value)) for name, value in config.env.items()),
        processes=tuple(Process(name, process.command, process.count, process.stop_timeout)
                        for name, process in config.processes.items()),
        process_role="worker" if config.servers and config.servers.worker else "app",
        jobs=tuple(_job(name, job.command, job.at, job.every) for name, job in config.jobs.items()),
    )


def _job(name: str, command: str, at: str | None, every: str | None) -> Job:
    if every is not None:
        return Job(name, command, interval_seconds(every))
    hours, minutes = map(int, (at or "").split(":"))
    return Job(name, command, 86400, hours * 3600 + minutes * 60)


def _checked(plan: Plan) -> Plan:
    _check_privileged_ports(plan)
    _check_budget(plan)
    _check_socket_paths(plan)
    _check_acme_domains(plan)
    _check_redis_installed(plan)
    _check_pooler_installed(plan)
    return plan


def _check_pooler_installed(plan: Plan) -> None:
    if plan.pools and not plan.tools.pgbouncer:
        raise DjshipError('database.pooler: pgbouncer is not installed; install it with: sudo apt-get install -y '
                          'pgbouncer, or remove database.pooler')


def _check_redis_installed(plan: Plan) -> None:
    if plan.runs_redis and not plan.tools.redis_server:
        raise DjshipError("[redis]: redis-server is not installed; install it with: sudo apt-get install -y "
                          "redis-server, or remove [redis]")


def _check_acme_domains(plan: Plan) -> None:
    local = [domain for domain in plan.domains if is_local_domain(domain)]
    if plan.tls.mode == "acme" and local:
        raise DjshipError(
            f"site.domains: an ACME CA issues no certificate for {', '.join(local)}; list the domain names that "
            'resolve to this machine, or use tls.mode = "local"'
        )


def _check_privileged_ports(plan: Plan) -> None:
    low = [port for port in (plan.https_port, plan.http_port) if port < 1024]
    if low and plan.holds("lb") and plan.users is None:
        raise DjshipError(
            f"balancer: port {low[0]} is below 1024, which only root may bind; run djship as root on this machine, "
            "log in to the lb hosts as root (ssh.user), or set balancer.https_port and balancer.http_port to 1024 "
            "or more"
        )


def _check_budget(plan: Plan) -> None:
    if plan.pooler:
        available = plan.database.max_connections - SUPERUSER_RESERVED
        if plan.connections_needed > available:
            raise DjshipError(
                f"connection budget: {plan.pooler.app_hosts} app hosts x database.pool_size {plan.pooler.pool_size} "
                f"+ {CONNECTION_HEADROOM} headroom = {plan.connections_needed} connections, but "
                f"database.max_connections = {plan.database.max_connections} leaves {available}; raise "
                f"database.max_connections to at least {plan.connections_needed + SUPERUSER_RESERVED} or lower "
                "database.pool_size"
            )
        return
    if not plan.database.external:  # an external server's max_connections is queried before anything starts
        check_budget(plan, plan.database.max_connections, SUPERUSER_RESERVED)


def check_budget(plan: Plan, max_connections: int, reserved: int) -> None:
    """Refuse a size whose connections do not fit the server's: max_connections less the superuser's reserve."""
    available = max_connections - reserved
    if plan.connections_needed > available:
        if plan.database.external:
            raise DjshipError(
                f"connection budget: {len(plan.app_servers)} servers x {plan.workers} workers x {plan.threads} "
                f"threads + {CONNECTION_HEADROOM} headroom = {plan.connections_needed} connections, but the server "
                f"{plan.database.endpoint} has max_connections = {max_connections} ({reserved} reserved for "
                f"superusers) and leaves {available}; raise max_connections on the server (RDS: its parameter "
                "group) or lower app.servers/workers/threads")
        raise DjshipError(
            f"connection budget: {len(plan.app_servers)} servers x {plan.workers} workers x {plan.threads} threads "
            f"+ {CONNECTION_HEADROOM} headroom = {plan.connections_needed} connections, but database.max_connections "
            f"= {max_connections} leaves {available}; raise database.max_connections to at least "
            f"{plan.connections_needed + reserved} or lower app.servers/workers/threads"
        )


def _check_socket_paths(plan: Plan) -> None:
    longest = max((server.socket for server in plan.app_servers), key=lambda path: len(str(path)))
    pooler = (plan.paths.pooler_socket_dir / f".s.PGSQL.{POOLER_PORT}",) if plan.pools else ()
    for socket in (longest, plan.paths.supervisor_socket, plan.paths.haproxy_socket, *pooler):
        if len(str(socket)) > MAX_SOCKET_PATH:
            raise DjshipError(
                f"state_dir is too deep: the unix socket {socket} is longer than {MAX_SOCKET_PATH} bytes; "
                "set state_dir in djship.toml to a shorter absolute path"
            )


# -- the plan as a file: what djship's programs on a host (djship.agent) run by -----------------------------------


def plan_to_json(plan: Plan) -> str:
    return json.dumps(_encode(plan), indent=2, sort_keys=True) + "\n"


def plan_from_json(text: str | bytes) -> Plan:
    return _decode(Plan, json.loads(text))


def _encode(value):
    if dataclasses.is_dataclass(value):
        return {field.name: _encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_encode(item) for item in (sorted(value) if isinstance(value, (frozenset, set)) else value)]
    return str(value) if isinstance(value, Path) else value


def _decode(kind, data):
    """data (from _encode) as a value of the type kind: a plan dataclass, Path, tuple[...], frozenset, X | None."""
    if data is None:
        return None
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(argument for argument in arguments if argument is not type(None)), data)
    if origin in (tuple, frozenset):
        return origin(_decode(arguments[0], item) for item in data)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{name: _decode(hints[name], value) for name, value in data.items()})
    return Path(data) if kind is Path else data
