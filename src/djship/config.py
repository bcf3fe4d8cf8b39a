"""djship.toml: schema, loading, and errors that carry the key path."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from typing import Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from djship import appenv
from djship.errors import DjshipError

CONFIG_FILE = "djship.toml"

_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SIZE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$")
_LOGIN_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}$")
# Names PostgreSQL gives a meaning of its own: pg_hba.conf keywords, roles it reserves, its own databases.
POSTGRES_RESERVED = frozenset({
    "all", "public", "postgres", "replication", "samerole", "samegroup", "sameuser", "none", "current_role",
    "current_user", "session_user", "template0", "template1",
})
# Directories a state or backup directory must never be: destroy deletes the state directory, backup chmods its
# directory to 0700.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/run/user", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin",
    "/usr/lib", "/usr/local", "/usr/local/bin", "/usr/sbin", "/usr/share", "/var", "/var/backups", "/var/cache",
    "/var/lib", "/var/lock", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
    "/var/www",
})
# Linux's default ephemeral range: an outgoing client socket may take a listening port from it.
EPHEMERAL_PORTS = range(32768, 61000)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _port(value: int) -> int:
    if not 1024 <= value <= 65535:
        raise ValueError("must be a port between 1024 and 65535 (ports below 1024 need root)")
    return value


def _login_name(value: str | None) -> str | None:
    if value is not None and not _LOGIN_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a user name")
    return value


def _no_control_characters(value: str | None) -> str | None:
    bad = next((char for char in value or "" if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}; remove it")
    return value


def _local_file(value: str | None) -> str | None:
    """A path djship itself opens on this machine: ~ and ~user expand."""
    if value is None:
        return value
    _no_control_characters(value)
    try:
        Path(value).expanduser()
    except RuntimeError:
        user = value[1:].split("/", 1)[0]
        raise ValueError(f"{value!r} starts with ~{user}, but there is no user {user!r}; write the path out") from None
    return value


def line_problem(path: str) -> str | None:
    """Why path cannot be a value on a line of supervisord.conf (or anywhere a line break ends it), or None."""
    bad = next((char for char in path if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        return f"contains the control character {bad!r}; remove it"
    if re.search(r"\s[;#]", path):
        return "contains a space followed by ; or #, which supervisord reads as a comment; choose another path"
    if path != path.strip():
        return "starts or ends with a space; remove it"
    return None


def path_problem(path: str) -> str | None:
    """Why path cannot be written into every file djship renders (nginx, HAProxy, supervisord, gunicorn, Python),
    or None. Everything else is quoted for each syntax."""
    for char, reason in (
        ("$", "nginx reads as a variable"),
        ("\\", "HAProxy cannot quote in a map file name"),
        ("'", "HAProxy cannot quote in a map file name"),
        (",", "HAProxy and gunicorn read as a list separator"),
    ):
        if char in path:
            return line_problem(path) or f"contains {char!r}, which {reason}; choose a path without it"
    return line_problem(path)


def _rendered_path(value: str | None) -> str | None:
    if value is not None:
        problem = path_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def _not_system_dir(path: str, homes: frozenset[str] = frozenset()) -> None:
    """path is absolute and normalized; homes: the home directories of this machine's users."""
    if path in SYSTEM_DIRS or path in homes:
        raise ValueError(f"{path} is a system directory; choose a directory of its own, e.g. /srv/djship/mysite")


def _home_dirs() -> frozenset[str]:
    return frozenset({entry.pw_dir for entry in pwd.getpwall()} | {os.path.expanduser("~")})


def _loopback(value: str) -> str:
    if not _IPV4.fullmatch(value) or not value.startswith("127."):
        raise ValueError("must be an IPv4 loopback address (127.x.y.z) on the local target")
    return value


class ProjectConfig(_Section):
    manage_py: str = "manage.py"
    settings_module: str
    wsgi_application: str
    asgi_application: str | None = None
    """The ASGI callable served with app.interface = "asgi"."""
    requirements: str = "requirements.txt"
    python: str | None = None
    exclude: list[str] = Field(
        default_factory=lambda: [
            ".git", ".djship", ".venv", "venv", "env", "node_modules", "__pycache__", "*.pyc",
            "db.sqlite3", "media", ".pytest_cache", ".mypy_cache",
        ]
    )

    _check_paths = field_validator("manage_py", "requirements", "python")(_no_control_characters)

    @field_validator("settings_module")
    @classmethod
    def _dotted_module(cls, value: str) -> str:
        if not _DOTTED.fullmatch(value):
            raise ValueError("not a dotted Python module path (e.g. mysite.settings)")
        return value

    @field_validator("wsgi_application")
    @classmethod
    def _dotted_object(cls, value: str) -> str:
        if not _DOTTED.fullmatch(value) or "." not in value:
            raise ValueError("not a dotted path to a WSGI callable (e.g. mysite.wsgi.application)")
        return value

    @field_validator("asgi_application")
    @classmethod
    def _dotted_asgi(cls, value: str | None) -> str | None:
        if value is not None and (not _DOTTED.fullmatch(value) or "." not in value):
            raise ValueError("not a dotted path to an ASGI callable (e.g. mysite.asgi.application)")
        return value


def is_local_domain(domain: str) -> bool:
    """localhost and its subdomains: names no CA vouches for and no browser should pin HSTS for beyond the site."""
    return domain == "localhost" or domain.endswith(".localhost")


# What the HSTS preload list (hstspreload.org) asks of a site before it accepts it.
HSTS_PRELOAD_MIN_SECONDS = 31536000


class SiteConfig(_Section):
    domains: list[str] = Field(default_factory=lambda: ["localhost"], min_length=1)
    hsts_seconds: int | None = Field(default=None, ge=1)
    hsts_preload: StrictBool = False

    @field_validator("domains")
    @classmethod
    def _host_names(cls, domains: list[str]) -> list[str]:
        for index, domain in enumerate(domains):
            if not _HOST_NAME.fullmatch(domain):
                raise ValueError(f"[{index}] {domain!r} is not a host name (lower-case, e.g. example.com)")
        if len(set(domains)) != len(domains):
            raise ValueError("lists a domain twice")
        return domains

    @model_validator(mode="after")
    def _preload_allowed(self) -> SiteConfig:
        if not self.hsts_preload:
            return self
        local = [domain for domain in self.domains if is_local_domain(domain)]
        if local:
            raise ValueError(f"hsts_preload = true is for public domains only, and {', '.join(local)} is not one; "
                             "remove hsts_preload or list only public domains in site.domains")
        if self.hsts_seconds is not None and self.hsts_seconds < HSTS_PRELOAD_MIN_SECONDS:
            raise ValueError(f"hsts_preload = true needs hsts_seconds of at least {HSTS_PRELOAD_MIN_SECONDS} (one "
                             "year, as the preload list asks); raise hsts_seconds or remove hsts_preload")
        return self


class AppConfig(_Section):
    interface: Literal["wsgi", "asgi"] = "wsgi"
    """wsgi: gunicorn's sync (or gthread) workers; asgi: gunicorn with uvicorn workers (WebSockets)."""
    servers: int | None = Field(default=None, ge=1, le=250)
    workers: int = Field(default=3, ge=1, le=64)
    threads: int = Field(default=1, ge=1, le=64)
    port: int = 8000
    address_prefix: str = "127.0.1"
    timeout: int = Field(default=30, ge=1, le=3600)
    max_body_size: str = "10M"
    health_path: str = "/-/djship/health"

    _check_port = field_validator("port")(_port)

    @field_validator("address_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        _loopback(value + ".1")
        if value.count(".") != 2:
            raise ValueError("must be the first three parts of a loopback address, e.g. 127.0.1")
        return value

    @field_validator("max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE.fullmatch(value):
            raise ValueError("must be a size such as 10M, 512k or 1G")
        return value

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not re.fullmatch(r"^/[A-Za-z0-9/_.-]*$", value):
            raise ValueError("must be a URL path starting with / (letters, digits, / _ . - only)")
        return value


def _any_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a port between 1 and 65535 (ports below 1024 need djship to run as root)")
    return value


def _bind(value: str) -> str:
    if not _IPV4.fullmatch(value):
        raise ValueError('must be an IPv4 address: a loopback one (127.x.y.z, this machine only) or "0.0.0.0" '
                         "(every address, for a public server: then 80 and 443 as ports, djship as root)")
    return value


_CIDR = re.compile(r"^(?P<address>[0-9.]+)/(?P<bits>3[0-2]|[12]?[0-9])$")


def _network(value: str) -> str:
    """An IPv4 network as nginx's set_real_ip_from and geo take it, e.g. 10.0.0.0/16."""
    match = _CIDR.fullmatch(value)
    if not match or not _IPV4.fullmatch(match["address"]):
        raise ValueError(f"{value!r} is not an IPv4 network; write it as address/bits, e.g. \"10.0.0.0/16\"")
    return value


class BalancerConfig(_Section):
    bind: str = "127.0.0.1"
    """On one machine: where the site listens; "0.0.0.0" with ports 443/80 makes one rented server public."""
    https_port: int = 8443
    http_port: int = 8080
    external: StrictBool = False
    """A load balancer djship does not run (AWS ALB/ELB, a cloud's or the network team's): no HAProxy, no lb hosts."""
    trusted: list[str] = Field(default_factory=list)
    """With external: the balancer's networks, the only peers the app servers accept and believe X-Forwarded-*."""
    tls: StrictBool = False
    """With external: the balancer reaches the app servers over TLS (djship's CA signs each app host's certificate)."""
    healthy_threshold: int = Field(default=5, ge=1, le=20)
    """With external: the health checks in a row the balancer needs to put a server back (ALB's default: 5)."""
    health_interval: int = Field(default=30, ge=1, le=300)
    """With external: seconds between the balancer's health checks (ALB's default: 30)."""

    _check_ports = field_validator("https_port", "http_port")(_any_port)
    _check_bind = field_validator("bind")(_bind)

    @field_validator("trusted")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for index, value in enumerate(values):
            try:
                _network(value)
            except ValueError as error:
                raise ValueError(f"[{index}] {error}") from None
        return values

    @model_validator(mode="after")
    def _distinct(self) -> BalancerConfig:
        if self.https_port == self.http_port:
            raise ValueError("https_port and http_port must differ")
        if self.external and not self.trusted:
            raise ValueError('external = true needs trusted: the balancer\'s networks, e.g. trusted = ["10.0.0.0/16"] '
                             "(the VPC's subnets where the ALB's nodes are)")
        given = [key for key in ("trusted", "tls", "healthy_threshold", "health_interval")
                 if key in self.model_fields_set]
        if given and not self.external:
            raise ValueError(f"{given[0]} is for a balancer djship does not run; set external = true, or remove "
                             f"{given[0]}")
        return self


@dataclass(frozen=True)
class ExternalDatabase:
    """database.url: a PostgreSQL server djship does not run (RDS, Cloud SQL, a DBA's cluster)."""

    host: str
    port: int
    name: str
    user: str


def parse_database_url(value: str) -> ExternalDatabase:
    """postgresql://user@host[:port]/name, without a password (djship keeps it as a secret) or options (djship
    sets TLS itself)."""
    _no_control_characters(value)
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError('must be a URL such as "postgresql://app@db.example.com:5432/shop"')
    if parts.password is not None:
        raise ValueError("holds a password; remove it from djship.toml and keep it as a secret with "
                         "`djship db password` (0600 in .djship/secrets)")
    if parts.query or parts.fragment:
        raise ValueError("has options after ? or #; remove them (djship connects with sslmode=verify-full and "
                         "database.ca_bundle)")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("has a port that is not a number between 1 and 65535") from None
    host = (parts.hostname or "").lower()
    if not (_HOST_NAME.fullmatch(host) or _IPV4.fullmatch(host)):
        raise ValueError(f"needs the server's host name or IPv4 address after @, e.g. "
                         f"postgresql://app@db.example.com:5432/shop (got {host or 'none'!r})")
    user, name = unquote(parts.username or ""), unquote(parts.path.removeprefix("/"))
    for what, identifier in (("user (before @)", user), ("database name (after /)", name)):
        if not _IDENTIFIER.fullmatch(identifier):
            raise ValueError(f"needs a {what} that is a lower-case SQL identifier (letters, digits, _; at most 63), "
                             f"got {identifier!r}")
        _not_reserved(identifier)
    return ExternalDatabase(host, port, name, user)


class DatabaseConfig(_Section):
    address: str = "127.0.2.1"
    port: int = 15432
    name: str | None = None
    user: str | None = None
    max_connections: int = Field(default=100, ge=10, le=10000)
    url: str | None = None
    """An external PostgreSQL (postgresql://user@host:port/name): djship then runs none."""
    ca_bundle: str | None = None
    """With url: the PEM CA bundle that verifies the server's certificate (sslmode=verify-full)."""
    admin_user: str | None = None
    """With url: a role that may create roles and databases; djship then creates the app's role and database."""

    _check_ca_bundle = field_validator("ca_bundle")(_local_file)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_database_url(value)
        return value

    @field_validator("admin_user")
    @classmethod
    def _admin(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.fullmatch(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, _; at most 63), e.g. postgres")
        return value

    @property
    def external(self) -> ExternalDatabase | None:
        return parse_database_url(self.url) if self.url is not None else None
    synchronous: bool = False
    """With a standby: a commit returns only once the standby has it too (synchronous_standby_names)."""
    pooler: Literal["none", "pgbouncer"] = "none"
    """"pgbouncer": the app servers reach PostgreSQL through PgBouncer on their own host (transaction pooling)."""
    pool_size: int = Field(default=20, ge=1, le=10000)
    """With the pooler: PostgreSQL connections each app host's PgBouncer opens at most."""

    _check_bind = field_validator("address")(_loopback)

    @field_validator("port")
    @classmethod
    def _db_port(cls, value: int) -> int:
        _port(value)
        if value in EPHEMERAL_PORTS:
            raise ValueError(
                f"{value} is in Linux's ephemeral port range 32768-60999, where a client socket can take it "
                "and PostgreSQL then fails to start; choose a port below 32768"
            )
        return value

    @field_validator("name", "user")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None:
            if not _IDENTIFIER.fullmatch(value):
                raise ValueError("must be a lower-case SQL identifier (letters, digits, _; at most 63)")
            _not_reserved(value)
        return value


_REDIS_SIZE = re.compile(r"^[1-9][0-9]*(kb|mb|gb)$")


class RedisConfig(_Section):
    """Redis under the supervisor, for the app and its processes (REDIS_URL): on the db host, or servers.redis."""

    address: str = "127.0.3.1"
    """On one machine: the loopback address it listens on, its own (on hosts: the redis host's address)."""
    port: int = 16379
    maxmemory: str | None = None
    """Redis's maxmemory ("256mb"); when reached, writes fail (noeviction): a broker must never lose a task."""
    backup: bool = False
    """Whether backups hold Redis's data too (a snapshot, redis.rdb), and `djship restore --redis` can put it back.
    Off by default: a broker's queue and a cache are seldom worth a restore that sends old tasks again."""

    _check_bind = field_validator("address")(_loopback)

    @field_validator("port")
    @classmethod
    def _redis_port(cls, value: int) -> int:
        _port(value)
        if value in EPHEMERAL_PORTS:
            raise ValueError(
                f"{value} is in Linux's ephemeral port range 32768-60999, where a client socket can take it "
                "and Redis then fails to start; choose a port below 32768"
            )
        return value

    @field_validator("maxmemory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not _REDIS_SIZE.fullmatch(value.lower()):
            raise ValueError('must be a size in kb, mb or gb, e.g. "256mb"')
        return None if value is None else value.lower()


def _not_reserved(name: str) -> None:
    if name in POSTGRES_RESERVED or name.startswith("pg_"):
        raise ValueError(f"{name!r} is reserved by PostgreSQL; choose another name, e.g. the project's")


def default_database_name(settings_module: str) -> str:
    """The database and role name when database.name is not set: the project package's name."""
    name = re.sub(r"[^a-z0-9_]", "_", settings_module.split(".")[0].lower())
    return (name if name[:1].isalpha() else f"app_{name}")[:63]


LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


class TlsConfig(_Section):
    mode: Literal["local", "acme", "files"] = "local"
    acme_directory: str = LETS_ENCRYPT_DIRECTORY
    acme_email: str | None = None
    acme_ca_bundle: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    _check_files = field_validator("acme_ca_bundle", "cert_file", "key_file")(_local_file)

    @field_validator("acme_directory")
    @classmethod
    def _directory_url(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
            raise ValueError("must be the https:// URL of an ACME directory (e.g. Let's Encrypt's staging directory)")
        return value

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("must be an e-mail address (the ACME CA sends expiry warnings there)")
        return value

    @model_validator(mode="after")
    def _files_given(self) -> TlsConfig:
        if self.mode == "files":
            missing = [key for key in ("cert_file", "key_file") if getattr(self, key) is None]
            if missing:
                raise ValueError(
                    f"mode = \"files\" needs {' and '.join('tls.' + key for key in missing)} (paths to the PEM "
                    "certificate chain and its private key)"
                )
        return self


class DeployConfig(_Section):
    batch_size: int | str = 1
    """App servers switched at a time: a number, or a share of them ("25%", rounded up, never all)."""
    keep_releases: int = Field(default=5, ge=2, le=100)
    health_timeout: int = Field(default=60, ge=5, le=3600)
    drain_seconds: int | None = Field(default=None, ge=1, le=3600)
    """With balancer.external: how long a server leaving rotation answers its health check 503 before it restarts
    (the balancer's health-check interval x unhealthy threshold + its deregistration delay)."""

    @field_validator("batch_size", mode="before")
    @classmethod
    def _count_or_share(cls, value: int | str) -> int | str:
        if not isinstance(value, (int, str)) or isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError('must be a number of app servers (1 or more) or a share of them, e.g. "25%"')
        if isinstance(value, str) and not (re.fullmatch(r"[1-9]\d?%|100%", value)):
            raise ValueError(f'{value!r} is not a share of the app servers; write e.g. "25%" (1% to 100%) or a number')
        return value


# Names a process may not take: djship's own programs and components (`djship logs NAME` must mean one thing).
RESERVED_PROCESS_NAMES = frozenset({"haproxy", "postgres", "supervisord", "renewal", "backup-scheduler", "media-mount",
                                    "boot", "jobs", "redis"})
_SHELL_OPERATORS = frozenset({"&&", "||", "|", "&", ";", ">", ">>", "<", "2>", "2>&1"})
_PROCESS_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def _command_without_shell(value: str, example: str, what: str) -> str:
    """A command run without a shell (so that it gets SIGTERM itself): one line, split into words like a shell does."""
    if not value.strip():
        raise ValueError(f'is empty; write the command to run, e.g. "{example}"')
    bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}; write the command on one line")
    if re.search(r"\s[;#]", value):
        raise ValueError("holds a space followed by ; or #, which supervisord reads as a comment; remove the "
                         "space, or put the commands into a script of your project and run that")
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"cannot be split into words ({error}); close its quotes") from None
    shell = next((word for word in words if word in _SHELL_OPERATORS or "$" in word or "`" in word), None)
    if shell is not None:
        raise ValueError(f"uses {shell!r}, but {what} runs without a shell (so that it gets SIGTERM itself); "
                         "put the shell part into a script of your project and run that")
    return value


class ProcessConfig(_Section):
    """One process type beside the web, Procfile-style: `command` (split into words like a shell does, then run
    without one) in the live release, `count` of them on each app host."""

    command: str
    count: int = Field(default=1, ge=1, le=32)
    stop_timeout: int = Field(default=10, ge=1, le=3600)
    """Seconds between SIGTERM and SIGKILL when it stops (supervisord's stopwaitsecs): a task in progress finishes."""

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return _command_without_shell(value, "celery -A proj worker -l info", "a process")


_INTERVAL = re.compile(r"^([1-9][0-9]*)([smh])$")
_INTERVAL_SECONDS = {"s": 1, "m": 60, "h": 3600}
_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")


def interval_seconds(every: str) -> int:
    """A job's `every` ("90s", "5m", "2h") in seconds."""
    match = _INTERVAL.fullmatch(every)
    assert match is not None, every
    return int(match[1]) * _INTERVAL_SECONDS[match[2]]


class JobConfig(_Section):
    """A scheduled job: `command` (as a process's) run on one app host at each time of its schedule, either daily
    `at` a UTC time of day or `every` interval."""

    command: str
    at: str | None = None
    every: str | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return _command_without_shell(value, "manage.py clearsessions", "a job")

    @field_validator("at")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f'{value!r} is not a UTC time of day; write "HH:MM", e.g. "03:00"')
        return value

    @field_validator("every")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _INTERVAL.fullmatch(value):
            raise ValueError(f'{value!r} is not an interval; write a number and s, m or h, e.g. "5m" or "1h"')
        if not 60 <= interval_seconds(value) <= 86400:
            raise ValueError(f'{value!r} is outside 1m to 24h; write e.g. "1m", or use at = "HH:MM" for a daily job')
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> JobConfig:
        if (self.at is None) == (self.every is None):
            raise ValueError('needs exactly one of at (a daily UTC time, e.g. at = "03:00") and every (an interval, '
                             'e.g. every = "5m")')
        return self


class SshConfig(_Section):
    """How djship logs in to every host, unless the host says otherwise."""

    user: str = "root"
    port: int = Field(default=22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"

    _check_user = field_validator("user")(_login_name)
    _check_files = field_validator("key", "known_hosts")(_local_file)


class HostConfig(_Section):
    address: str
    root: str = "/srv/djship"
    ssh_user: str | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_key: str | None = None
    host_key: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not (_IPV4.fullmatch(value) or _HOST_NAME.fullmatch(value)):
            raise ValueError(f"{value!r} is not an IPv4 address or a host name")
        return value

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        _rendered_path(value)
        if not value.startswith("/"):
            raise ValueError("must be an absolute path on that host, e.g. /srv/djship")
        _not_system_dir("/" + os.path.normpath(value).lstrip("/"))
        return value

    _check_user = field_validator("ssh_user")(_login_name)
    _check_key = field_validator("ssh_key")(_local_file)

    @field_validator("host_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        if value is not None and not _PUBLIC_KEY.fullmatch(value.strip()):
            raise ValueError('must be an SSH public key as in known_hosts, e.g. "ssh-ed25519 AAAAC3Nza..."')
        return value


class ServersConfig(_Section):
    """Which hosts hold which role; a host may hold several."""

    lb: list[str] = Field(default_factory=list)
    """The hosts that run HAProxy; none with balancer.external."""
    app: list[str] = Field(min_length=1)
    db: str | list[str] | None = None
    """The db host, or [primary, standby]: the first runs PostgreSQL's primary, the second a streaming replica of it
    (`djship db failover` and `switchover` swap them in this file); none with database.url (an external server)."""
    media: str | None = None
    """The host that holds the uploads every app host mounts; default: the db host when there are several app
    hosts (see media_host)."""
    backup: str | None = None
    """The host that keeps the backups (`djship backup`'s and the daily ones), off the db host's disk."""
    redis: str | None = None
    """The host that runs Redis ([redis]); default: the db host."""
    worker: list[str] = Field(default_factory=list)
    """The hosts that run [processes] (with the release, its settings and env, but no app server); default: the app
    hosts."""

    @field_validator("db")
    @classmethod
    def _db_hosts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError('must be the db host, or [primary, standby], e.g. ["db1", "db2"]')
        return value

    @property
    def db_hosts(self) -> list[str]:
        """The db hosts, the primary first."""
        return [] if self.db is None else [self.db] if isinstance(self.db, str) else list(self.db)

    @property
    def primary(self) -> str | None:
        """None with database.url: no host runs PostgreSQL."""
        return self.db_hosts[0] if self.db_hosts else None

    @property
    def standby(self) -> str | None:
        return self.db_hosts[1] if len(self.db_hosts) > 1 else None

    @property
    def code(self) -> list[str]:
        """The hosts that run the app's code: the app hosts, then the worker hosts not among them."""
        return [*self.app, *(name for name in self.worker if name not in self.app)]


def media_host(config: Config) -> str | None:
    """The host holding the uploads: servers.media, else the db host once several app hosts must share them or once
    the daily backup (which runs on the db host) must archive them there; one app host keeps them in its own
    directory otherwise."""
    servers = config.servers
    if servers is None:
        return None
    if servers.media is not None or servers.db is None:
        return servers.media
    if len(servers.code) > 1 or ((config.backup.schedule or servers.backup) and servers.code != [servers.primary]):
        return servers.primary
    return None


class BackupConfig(_Section):
    dir: str | None = None
    keep: int = Field(default=7, ge=1, le=3650)
    schedule: str | None = None
    archive: bool = False
    """Continuous archiving with pgBackRest (point-in-time restore); the pg_dump backups stay (`backup --dump`)."""
    archive_timeout: int = Field(default=60, ge=1, le=3600)
    """Seconds after which PostgreSQL switches to a new WAL segment, so the archive is at most this far behind."""

    @field_validator("dir")
    @classmethod
    def _directory(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or ":" in value):
            raise ValueError(
                "must be a directory on this machine (relative to the project or absolute); remote hosts come later"
            )
        return _rendered_path(value)

    @field_validator("schedule")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError('must be a UTC time of day as "HH:MM", e.g. "03:30"')
        return value


def _unprivileged(value: str) -> str:
    _login_name(value)
    try:
        root = pwd.getpwnam(value).pw_uid == 0
    except KeyError:
        root = False
    if value == "root" or root:
        raise ValueError(f"{value!r} is root; services never run as root, use an unprivileged user such as djship-app")
    return value


class UsersConfig(_Section):
    """The system user each component runs as when djship runs as root (created if missing)."""

    app: str = "djship-app"
    web: str = "djship-web"
    db: str = "djship-db"
    lb: str = "djship-lb"
    redis: str = "djship-redis"
    media: str = "djship-media"
    """The media host's SFTP-only user, through which every app host reads and writes the uploads."""
    backup: str = "djship-backup"
    """The backup host's SFTP-only user, through which the db host sends it each backup."""
    pooler: str = "djship-pgbouncer"
    """PgBouncer, where database.pooler runs it: reads its password file alone."""

    _check_unprivileged = field_validator("app", "web", "db", "lb", "redis", "media", "backup", "pooler")(_unprivileged)

    @model_validator(mode="after")
    def _one_each(self) -> UsersConfig:
        roles = ("app", "web", "db", "lb", "redis", "media", "backup", "pooler")
        names = [getattr(self, role) for role in roles]
        shared = next((name for name in names if names.count(name) > 1), None)
        if shared is not None:
            roles = " and ".join(role for role in roles if getattr(self, role) == shared)
            raise ValueError(f"{roles} are both {shared!r}; each component runs as a user of its own, so one that is "
                             "compromised reaches nothing of the others: give each its own name")
        return self


class Config(_Section):
    project: ProjectConfig
    site: SiteConfig = Field(default_factory=SiteConfig)
    app: AppConfig = Field(default_factory=AppConfig)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    state_dir: str = ".djship"
    users: UsersConfig = Field(default_factory=UsersConfig)
    servers: ServersConfig | None = None
    hosts: dict[str, HostConfig] = Field(default_factory=dict)
    ssh: SshConfig = Field(default_factory=SshConfig)
    processes: dict[str, ProcessConfig] = Field(default_factory=dict)
    redis: RedisConfig | None = None
    """Redis for the app when present ([redis], even empty); nothing of it runs without."""
    jobs: dict[str, JobConfig] = Field(default_factory=dict)
    env: dict[str, str | int | float] = Field(default_factory=dict)
    """Plain values of the app's environment (secrets are kept by `djship env set`, never in this file)."""

    _check_state_dir = field_validator("state_dir")(_rendered_path)

    @field_validator("processes")
    @classmethod
    def _process_names(cls, processes: dict[str, ProcessConfig]) -> dict[str, ProcessConfig]:
        for name in processes:
            if not _PROCESS_NAME.fullmatch(name) or len(name) > 30:
                raise ValueError(f"{name!r} is not a process name (lower-case letters, digits and single dashes, "
                                 "starting with a letter, at most 30); rename it, e.g. worker")
            if name in RESERVED_PROCESS_NAMES or re.fullmatch(r"app\d+", name) or name.endswith(("-gunicorn", "-nginx")):
                raise ValueError(f"{name!r} is the name of one of djship's own programs; rename it, e.g. worker")
        return processes

    @field_validator("jobs")
    @classmethod
    def _job_names(cls, jobs: dict[str, JobConfig]) -> dict[str, JobConfig]:
        for name in jobs:
            if not _JOB_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a job name (lower-case letters, digits and _, starting with a "
                                 "letter, at most 30); rename it, e.g. clearsessions")
        return jobs

    @field_validator("env", mode="before")
    @classmethod
    def _environment(cls, values: object) -> object:
        if not isinstance(values, dict):
            return values
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"{name} must be a string or a number; quote it: {name} = \"...\"")
            problem = appenv.name_problem(name) or appenv.value_problem(name, str(value))
            if problem:
                raise ValueError(problem)
        return values

    @property
    def remote(self) -> bool:
        """Whether the system runs on hosts over SSH rather than on this machine."""
        return self.servers is not None


def _key_path(location: tuple[str | int, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else repr(part)
        path += f".{name}" if path else name
    return path or "(top level)"


# Keys an earlier djship read, and what took their place.
_REPLACED = {
    ("service_user",): "replaced by [users], a user per component (app, web, db, lb); remove service_user, or name "
                       "the users there",
}


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden" and tuple(error["loc"]) in _REPLACED:
        return _REPLACED[tuple(error["loc"])]
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see `djship init` for the documented keys)"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def parse_config(text: str, source: str = CONFIG_FILE) -> Config:
    """Parse and validate djship.toml text; raise DjshipError naming the key path of the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DjshipError(f"{source}: not valid TOML: {error}; fix the syntax at that line") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        _refuse(source, [f"{_key_path(item['loc'])}: {_message(item)}" for item in error.errors()])
    _refuse(source, _database_problems(config) + _interface_problems(config) + _balancer_problems(config)
            + _topology_problems(config))
    return config


def _refuse(source: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DjshipError(f"{source}: {problems[0]}{more}") from None


def _database_problems(config: Config) -> list[str]:
    database = config.database
    given = database.model_fields_set
    if database.url is None:
        return [f"database.{key}: is for an external PostgreSQL; set database.url too, or remove database.{key}"
                for key in ("ca_bundle", "admin_user") if key in given] or _default_name_problems(config)
    problems = [
        "database.max_connections: with database.url djship asks the server (SHOW max_connections); remove it"
        if key == "max_connections" else f"database.{key}: database.url says it; remove database.{key}"
        for key in ("address", "port", "name", "user", "max_connections") if key in given
    ]
    if config.redis is not None and config.redis.backup:
        problems.append("redis.backup: not built yet with database.url (the db host takes Redis's snapshot); remove it")
    if database.pooler != "none":
        problems.append("database.pooler: not built yet with database.url; remove it (RDS Proxy is the managed "
                        "equivalent)")
    if config.backup.schedule is not None:
        problems.append("backup.schedule: not built yet with database.url (the daily backup runs on the db host); "
                        "remove it and run `djship backup` from cron on this machine")
    if database.ca_bundle is None:
        problems.append("database.ca_bundle: required with database.url (djship connects with sslmode=verify-full); "
                        "set it to the PEM bundle of the server's CA, e.g. Amazon's global-bundle.pem for RDS")
    return problems


def _default_name_problems(config: Config) -> list[str]:
    if config.database.name is not None:
        return []
    name = default_database_name(config.project.settings_module)
    try:
        _not_reserved(name)
    except ValueError:
        return [f"database.name: the default {name!r} (the name of project.settings_module's package) is reserved by "
                "PostgreSQL; set database.name to another name"]
    return []


def _interface_problems(config: Config) -> list[str]:
    if config.app.interface != "asgi":
        return []
    problems = []
    if config.project.asgi_application is None:
        problems.append('project.asgi_application: required with app.interface = "asgi"; set it to the project\'s '
                        'ASGI callable, e.g. "mysite.asgi.application" (`djship init` finds it)')
    if config.app.threads > 1:
        problems.append('app.threads: an ASGI worker runs one event loop, not threads; remove app.threads (or set it '
                        'to 1) and raise app.workers instead')
    return problems


def _external_database_problems(config: Config) -> list[str]:
    """With database.url no host runs PostgreSQL, so what defaults to the db host must be named, and what runs on
    the db host is not built for it."""
    servers = config.servers
    if config.database.url is None:
        return [] if servers.db is not None else ["servers.db: required key is missing (or set database.url for a "
                                                  "PostgreSQL djship does not run)"]
    problems = []
    if servers.db is not None:
        problems.append("servers.db: with database.url djship runs no PostgreSQL; remove servers.db")
    if servers.media is None and len(servers.code) > 1:
        problems.append("servers.media: with database.url there is no db host to keep the uploads of several app "
                        "and worker hosts; name a host without the app role (e.g. the lb host) as servers.media")
    if config.redis is not None and servers.redis is None:
        problems.append("servers.redis: with database.url there is no db host to run Redis; name the host that runs "
                        "it")
    if servers.backup is not None:
        problems.append("servers.backup: not built yet with database.url (the db host's agent sends the backups); "
                        "remove it: `djship backup` writes them to backup.dir on this machine")
    return problems


def _standby_problems(config: Config, media: str | None) -> list[str]:
    """A failover swaps the db hosts: what lives on "the db host" by default must say where it lives instead."""
    servers, problems = config.servers, []
    if media is not None and config.servers.media is None:
        problems.append("servers.media: with a standby the uploads cannot follow the primary; name the host that "
                        "holds them (e.g. servers.media = \"media1\")")
    if config.redis is not None and servers.redis is None:
        problems.append("servers.redis: with a standby Redis cannot follow the primary; name the host that runs it")
    others = {*servers.lb, *servers.app, *servers.worker, media, servers.backup, servers.redis}
    problems += [f"servers.db: {name!r} holds another role too; with a standby each db host holds the database only "
                 "(a failover goes on without the host that is gone)" for name in servers.db_hosts if name in others]
    return problems


def _balancer_problems(config: Config) -> list[str]:
    """An external balancer takes the lb role's place: it needs hosts, no lb host, and a drain time."""
    external, lb = config.balancer.external, config.servers.lb if config.servers else []
    if external and config.servers is None:
        return ["balancer.external: the balancer reaches app servers on hosts; describe them in [servers] and [hosts] "
                "(one machine's app servers listen on loopback only), or remove balancer.external"]
    if external and lb:
        return [f"servers.lb: balancer.external = true, so djship runs no HAProxy; remove servers.lb ({', '.join(lb)})"]
    if external and config.tls.mode == "acme":
        return ['tls.mode: "acme" answers the CA through djship\'s HAProxy, but balancer.external = true runs none; '
                "the balancer holds the site's certificate (on AWS: ACM); remove tls.mode"]
    if external and config.deploy.drain_seconds is None:
        return ["deploy.drain_seconds: required with balancer.external; set it to the balancer's health-check interval "
                "x unhealthy threshold + its deregistration delay (e.g. 30 x 2 + 30 = 90)"]
    if not external and config.servers is not None and not lb:
        return ['servers.lb: required key is missing; name the hosts that run HAProxy, or set balancer.external = true '
                'for a balancer djship does not run']
    if not external and config.deploy.drain_seconds is not None:
        return ["deploy.drain_seconds: for a balancer djship does not run (HAProxy drains through its runtime API); "
                "remove it, or set balancer.external = true"]
    return []


def _topology_problems(config: Config) -> list[str]:
    """What [servers] and [hosts] say about each other: every role names defined hosts, every host has a role."""
    if config.servers is None:
        return [f"hosts: [servers] is missing; say which hosts are lb, app and db (e.g. servers.app = "
                f"[{', '.join(map(repr, config.hosts))}])"] if config.hosts else []
    problems = [
        f"hosts.{_key_path((name,))}: not a host name (lower-case letters, digits and -, starting with a letter)"
        for name in config.hosts if not _HOST_LABEL.fullmatch(name)
    ]
    problems += _external_database_problems(config)
    roles = {"lb": config.servers.lb, "app": config.servers.app, "db": config.servers.db_hosts,
             "worker": config.servers.worker}
    for role, names in roles.items():
        for index, name in enumerate(names):
            where = f"servers.{role}" + (f"[{index}]" if role != "db" or isinstance(config.servers.db, list) else "")
            if name not in config.hosts:
                problems.append(f"{where}: no host {name!r}; define it as [hosts.{name}] with its address")
            elif name in names[:index]:
                problems.append(f"{where}: lists {name!r} twice")
    media = media_host(config)
    if config.servers.media is not None and media not in config.hosts:
        problems.append(f"servers.media: no host {media!r}; define it as [hosts.{media}] with its address")
    elif media in config.servers.code:
        role = "app" if media in config.servers.app else "worker"
        held = f"{media!r} holds the {role} role" if config.servers.media is not None else \
            f"the app hosts share their uploads through the db host by default, but {media!r} holds the {role} role"
        problems.append(f"servers.media: {held}; name a host without the app or worker role (every host that runs "
                        "the app's code mounts the uploads from it)")
    if config.servers.standby is not None:
        problems += _standby_problems(config, media)
    elif config.database.synchronous:
        problems.append('database.synchronous: needs a standby to wait for; list it in servers.db = ["db1", "db2"], '
                        "or remove database.synchronous")
    if config.servers.worker and not config.processes:
        problems.append("servers.worker: names hosts for [processes], but there are none; add [processes] (e.g. "
                        'worker = { command = "celery -A proj worker" }), or remove servers.worker')
    backup = config.servers.backup
    if backup is not None and backup not in config.hosts:
        problems.append(f"servers.backup: no host {backup!r}; define it as [hosts.{backup}] with its address")
    elif backup is not None and backup in config.servers.db_hosts:
        problems.append(f"servers.backup: {backup!r} is the db host; name another host, so that a backup survives "
                        "the loss of the db host's disk (without servers.backup they are kept on this machine)")
    if config.servers.redis is not None:
        if config.redis is None:
            problems.append("servers.redis: names a Redis host, but there is no [redis]; add [redis] to run Redis, or "
                            "remove servers.redis")
        elif config.servers.redis not in config.hosts:
            problems.append(f"servers.redis: no host {config.servers.redis!r}; define it as "
                            f"[hosts.{config.servers.redis}] with its address")
    used = {name for names in roles.values() for name in names} | {media, backup, config.servers.redis}
    problems += [
        f"hosts.{name}: has no role; add it to servers.lb, servers.app, servers.db, servers.worker, servers.media, "
        "servers.redis or servers.backup, or remove it"
        for name in config.hosts if name not in used
    ]
    seen: dict[str, str] = {}
    for name, host in config.hosts.items():
        if host.address in seen:
            problems.append(f"hosts.{name}.address: {host.address} is also the address of hosts.{seen[host.address]}")
        seen.setdefault(host.address, name)
    return problems


def with_values(text: str, values: dict[str, object]) -> str:
    """djship.toml text with each dotted key (e.g. "app.servers") set, everything else (comments included) kept."""
    document = tomlkit.parse(text)
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        table = document
        for section in sections:
            table = table.setdefault(section, tomlkit.table())
        table[key] = value
    return tomlkit.dumps(document)


def find_project_dir(start: Path) -> Path:
    """The nearest directory at or above start that holds djship.toml."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file():
            return directory
    raise DjshipError(f"no {CONFIG_FILE} in {start} or above; run `djship init` in your Django project first")


def load_config(project_dir: Path) -> Config:
    path = project_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DjshipError(f"cannot read {path}: {error.strerror}") from None
    config = parse_config(text, _shown(path))
    _refuse(_shown(path), placement_problems(config, project_dir))
    return config


def _shown(path: Path) -> str:
    """A path for a one-line message: as it is, or quoted with escapes when it holds a line break or the like."""
    return str(path) if str(path).isprintable() else repr(str(path))


def placement_problems(config: Config, project_dir: Path) -> list[str]:
    """Where the project, its state directory and its backup directory are, as the plan resolves them: never a
    system directory, never one that holds the project (destroy deletes the state directory), and never a path
    the rendered files cannot hold."""
    project_dir = project_dir.resolve()
    problem = line_problem(str(project_dir))  # supervisord's backup and renewal programs run in it
    if problem:
        return [f"project: the project directory {_shown(project_dir)} {problem.split(';')[0]}; move the project "
                "to a directory without it"]
    state = (project_dir / config.state_dir).resolve()
    places = [("state_dir", state)]
    if config.backup.dir is not None:
        places.append(("backup.dir", (project_dir / config.backup.dir).resolve()))
    problems = []
    for key, path in places:
        problem = path_problem(str(path))
        if problem:
            problems.append(f"{key}: {path} {problem}")
            continue
        try:
            _not_system_dir(str(path), _home_dirs())
        except ValueError as error:
            problems.append(f"{key}: {error}")
            continue
        if project_dir.is_relative_to(path):
            problems.append(f"{key}: {path} holds the project itself; choose a directory inside the project (the "
                            "default) or beside it")
        elif key == "backup.dir" and state.is_relative_to(path):
            problems.append(f"backup.dir: {path} holds the state directory {state}; choose a directory of its own")
    return problems
