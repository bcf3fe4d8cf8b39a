"""Pure renderers: the validated plan in, the text of every config file out. Nothing here touches the machine."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2

from djship.logfile import SUPERVISOR_UMASK
from djship.plan import REPLICATION_USER, DATABASE_HOLD, DIRECT_DATABASE, HEALTH_HOLD, IN_FLIGHT_PATH, JOBS_PROGRAM, JOBS_STOP_TIMEOUT, \
    ARCHIVE_MOUNT_PROGRAM, MEDIA_PROGRAM, MEDIA_URL, POOLER_APPLICATION, POOLER_LOGIN_RETRY, POOLER_PORT, POOLER_PROGRAM, PROGRAM_ENVIRONMENT, \
    REDIS_PROGRAM, REDIS_URL, RENEWAL_PROGRAM, STATIC_URL, SUPERUSER_RESERVED, AppServer, MediaStore, Plan, Process, \
    plan_to_json, release_environment

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("djship.render", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


# Every value a template writes is quoted for the syntax it lands in. What no syntax can quote (control characters,
# $, \, ', a comma, a space before ; or #) never reaches a template: the config refuses it (config.path_problem).
def nginx_string(value: object) -> str:
    """An nginx double-quoted string: backslash and double quote escaped."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def haproxy_string(value: object) -> str:
    """An HAProxy strongly quoted word: nothing inside single quotes is interpreted; a single quote ends it, so it
    is closed, escaped and reopened, which HAProxy concatenates."""
    return "'" + str(value).replace("'", "'\\''") + "'"


def haproxy_weak(value: object) -> str:
    """An HAProxy double-quoted word, for text that itself holds single-quoted sample arguments."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def haproxy_argument(value: object) -> str:
    """A single-quoted argument of a sample converter, e.g. map('<file>')."""
    return "'" + str(value) + "'"


def supervisor_value(value: object) -> str:
    """A supervisord value: % starts an expansion such as %(here)s, so it is doubled."""
    return str(value).replace("%", "%%")


def redis_string(value: object) -> str:
    """A Redis config argument in double quotes: backslash and double quote escaped (sdssplitargs reads them)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def python_string(value: object) -> str:
    """A Python string literal in double quotes, whatever the text holds."""
    return '"' + "".join(
        "\\" + char if char in '"\\' else char if char.isprintable() else repr(char)[1:-1] for char in str(value)
    ) + '"'


_environment.filters.update(
    nginx=nginx_string, haproxy=haproxy_string, haproxy_weak=haproxy_weak, haproxy_argument=haproxy_argument,
    supervisor=supervisor_value, python=python_string, redis=redis_string,
)


def _render(template: str, **values: object) -> str:
    return _environment.get_template(template).render(**values)


@dataclass(frozen=True)
class Program:
    """One long-running process under the supervisor, always in the foreground."""

    name: str
    command: str
    stopsignal: str
    stopwaitsecs: int
    directory: str | None = None
    environment: str | None = None
    user: str | None = None
    """Who it runs as; None: the user supervisord runs as."""
    signals_group: bool = True
    """Whether the stop signal goes to its whole process group (stopasgroup), or to the program alone, which then
    stops its children itself; either way, whatever is left at stopwaitsecs is killed as a group."""


BACKUP_SCHEDULER = "backup-scheduler"
# What nginx compresses on the fly (text/html always); static files are pre-compressed by deploy/static.py.
COMPRESSED_TYPES = ("text/css text/plain text/xml text/javascript application/javascript application/json "
                    "application/xml application/rss+xml application/atom+xml application/manifest+json image/svg+xml")

# The postgres program: `postgres -D DATA` (exec'd, so normally nothing stands between the supervisor and the
# postmaster). When the postmaster of DATA survived a supervisor that died, a new postgres could not start (the data
# directory is locked) and stopping the survivor would fail requests, so the program waits on the survivor instead and
# hands it the stop signal; once it is gone, the program's next start runs postgres itself. $1 postgres, $2 DATA.
_POSTGRES_RUN = (
    'data=$2; pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null); '
    'adopted() { [ -n "$pid" ] && grep -qzxF -- "$data" "/proc/$pid/cmdline" 2>/dev/null; }; '
    'if adopted; then '
    'trap "stopping=1; kill -INT $pid" INT TERM; '
    'while adopted; do sleep 1 & wait $!; done; '
    '[ -z "$stopping" ] || exit 0; '
    'fi; '
    'exec "$1" -D "$data"'
)


# How every program of the app starts: the plain values ($0) and the secrets ($1) of its environment sourced and
# exported, then the program exec'd in their place (the supervisor's own environment is clean, see
# plan.PROGRAM_ENVIRONMENT; the shell's own PWD is not passed on).
_WITH_APP_ENVIRONMENT = 'unset PWD; set -a; . "$0"; . "$1"; set +a; shift; exec "$@"'


def with_app_environment(plan: Plan, argv: list[str]) -> list[str]:
    """argv run with the app's environment: [env] and the secrets of `djship env` (the files on the plan's host)."""
    return ["/bin/sh", "-c", _WITH_APP_ENVIRONMENT, str(plan.paths.env_file), str(plan.paths.env_secrets), *argv]


def env_file(values: Iterable[tuple[str, str]], origin: str) -> str:
    """The app's environment as a POSIX shell file, each value quoted (anything but NUL, newlines included);
    appenv.parse_env_file reads it back."""
    lines = [f"# {line}" for line in origin.splitlines()]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values]
    return "\n".join(lines) + "\n"


ENV_FILE_ORIGIN = ("The app's plain environment: [env] of djship.toml, sourced by each of its programs.\n"
                   "Rendered by djship from djship.toml; edits are overwritten by the next `djship up`.")
ENV_SECRETS_ORIGIN = ("The secrets of the app's environment, sourced by each of its programs; 0600.\n"
                      "Kept by djship: change them with `djship env set`, `unset` or `import`, never here.")


def nginx_conf(plan: Plan, server: AppServer) -> str:
    return _render("nginx.conf.j2", plan=plan, server=server, static_url=STATIC_URL, media_url=MEDIA_URL,
                   compressed_types=COMPRESSED_TYPES, in_flight_path=IN_FLIGHT_PATH)


# With app.interface = "asgi" gunicorn serves djship's wrapper of the project's ASGI application (runtime/asgi.py).
ASGI_ENTRY_POINT = "djship_production.asgi:application"


def gunicorn_conf(plan: Plan, server: AppServer) -> str:
    module, _, attribute = plan.wsgi_application.rpartition(".")
    served = ASGI_ENTRY_POINT if plan.asgi else f"{module}:{attribute}"
    return _render("gunicorn.conf.py.j2", plan=plan, server=server, wsgi_app=served)


def haproxy_cfg(plan: Plan) -> str:
    return _render("haproxy.cfg.j2", plan=plan)


def postgresql_conf(plan: Plan) -> str:
    archive = plan.backup.archive
    return _render("postgresql.conf.j2", plan=plan, db=plan.database, superuser_reserved=SUPERUSER_RESERVED,
                   archive=archive, archive_command=archive_command(plan) if archive else None)


def _conf_string(value: str) -> str:
    """value as a single-quoted postgresql.conf string."""
    if "\n" in value:
        raise ValueError(f"{value!r}: a line break cannot go into postgresql.conf")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def archive_command(plan: Plan) -> str:
    """PostgreSQL's archive_command (a shell command, run as the db user): pgBackRest pushes the segment %p."""
    archive = plan.backup.archive
    command = f"{shlex.quote(plan.tools.pgbackrest)} --config={shlex.quote(str(archive.conf))} " \
              f"--stanza={archive.stanza} archive-push %p"
    return _conf_string(command)


def pgbackrest_conf(plan: Plan) -> str:
    """pgBackRest's configuration on the db host: the repository (off the db host), this cluster as stanza "main"."""
    return _render("pgbackrest.conf.j2", archive=plan.backup.archive, db=plan.database)


def pg_hba_conf(plan: Plan) -> str:
    return _render("pg_hba.conf.j2", db=plan.database, replication_user=REPLICATION_USER)


def primary_conninfo(plan: Plan) -> str:
    """libpq's connection to the primary as the replication role, from the standby host."""
    db = plan.database
    values = {"host": db.address, "port": db.port, "user": REPLICATION_USER, "passfile": db.replication_passfile,
              "sslmode": "verify-full", "sslrootcert": plan.paths.ca_cert,
              "sslcert": plan.paths.tls / "no-client-certificate", "application_name": db.standby.slot,
              "connect_timeout": 5}
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in values.items())


def _conninfo_value(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def replication_conf(plan: Plan) -> str:
    conninfo = primary_conninfo(plan).replace("'", "''") if plan.database.is_standby else ""
    return _render("replication.conf.j2", plan=plan, db=plan.database, conninfo=conninfo)


def replication_pgpass(plan: Plan, password: str) -> str:
    """The replication role's line of the standby's passfile: any db host (either may be the primary)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:{plan.database.port}:replication:{REPLICATION_USER}:{escaped}\n"


def database_json(plan: Plan) -> str:
    """Where the app finds the primary (then the standby): read by the settings when a program starts."""
    return json.dumps({"host": plan.database.connection_hosts}, indent=2) + "\n"


def pgbouncer_ini(plan: Plan) -> str:
    return _render("pgbouncer.ini.j2", plan=plan, db=plan.database, pooler=plan.pooler, port=POOLER_PORT,
                   application_name=POOLER_APPLICATION, login_retry=POOLER_LOGIN_RETRY)


def pgbouncer_auth_file(plan: Plan, password: str) -> str:
    """The app role and its password as PgBouncer's auth_file holds them: each in double quotes, a quote doubled.
    PgBouncer needs the password itself, not a verifier: it logs in to PostgreSQL with it."""
    def quoted(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'
    return f"{quoted(plan.database.user)} {quoted(password)}\n"


def redis_conf(plan: Plan, password: str) -> str:
    return _render("redis.conf.j2", plan=plan, redis=plan.redis, password=password)


_REQUIREPASS = re.compile(r'^requirepass "(?P<password>[^"\\]*)"$', re.MULTILINE)


def redis_password_of(conf: str) -> str | None:
    """The password a redis.conf rendered by redis_conf holds (djship's passwords need no escapes)."""
    found = _REQUIREPASS.search(conf)
    return found["password"] if found else None


def app_secrets_env(plan: Plan, secrets: dict[str, str], redis_password: str | None) -> str:
    """The secrets file of the app's environment: `djship env`'s secrets, and REDIS_URL with [redis]."""
    values = list(secrets.items())
    if plan.redis is not None and redis_password:
        values.append((REDIS_URL, plan.redis.url(redis_password, plan.paths.ca_cert)))
    return env_file(values, ENV_SECRETS_ORIGIN)


# How an app host's sshfs reaches the media host: its one key and the media host's verified host key only, never a
# prompt; a connection that stops answering is given up after 15 s and made anew on the next file access.
_SSHFS_OPTIONS = ("reconnect", "ServerAliveInterval=5", "ServerAliveCountMax=3", "ConnectTimeout=3", "BatchMode=yes",
                  "IdentitiesOnly=yes", "StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null")


def sshfs_command(plan: Plan, source: str, mount: Path, ssh_port: int, key: Path, known_hosts: Path,
                  owner: str | None) -> str:
    """sshfs in the foreground, mounting source (user@address:directory) at mount. A mount left behind by a killed
    sshfs is lazily unmounted first (a dead FUSE mount cannot be mounted over)."""
    quote = shlex.quote
    options = ",".join((*_SSHFS_OPTIONS, f"Port={ssh_port}", f"IdentityFile={key}", f"UserKnownHostsFile={known_hosts}"))
    script = f"fusermount3 -u -z {quote(str(mount))} 2>/dev/null; exec sshfs -f -o {quote(options)}"
    if plan.users and owner:
        # Mounted by root for one user: files show as its own and the kernel checks their modes, so no other local
        # user may write there.
        user = quote(owner)
        script += f" -o allow_other,default_permissions,uid=$(id -u {user}),gid=$(id -g {user})"
    script += f" {quote(source)} {quote(str(mount))}"
    return f"/bin/sh -c {quote(script)}"


def media_mount_command(plan: Plan, media: MediaStore) -> str:
    """The media host's uploads at this app host's `uploads` directory, as the app's user."""
    return sshfs_command(plan, media.source, plan.paths.uploads, media.ssh_port, plan.paths.media_key,
                         plan.paths.media_known_hosts, plan.users.app if plan.users else None)


def archive_mount_command(plan: Plan) -> str:
    """The backup host's archive at this db host's repo1-path, as the db user (who alone runs pgBackRest), with the
    key and known host key the db host sends its backups with."""
    target, archive = plan.backup.target, plan.backup.archive
    return sshfs_command(plan, f"{target.user}@{target.address}:{archive.store}", archive.repo, target.ssh_port,
                         plan.paths.backup_key, plan.paths.backup_known_hosts, plan.user_of("db"))


def media_authorized_keys(media: MediaStore, public_key: str) -> str:
    """The media host's SFTP user accepts the app hosts' key for SFTP only (no shell, no forwarding), from them only."""
    source = f',from="{",".join(media.clients)}"' if media.clients else ""
    return f'restrict,command="internal-sftp"{source} {public_key} {media.user}\n'


def media_known_hosts(media: MediaStore, host_key: str) -> str:
    return f"{media.known_hosts_name} {host_key}\n"


def programs(plan: Plan) -> list[Program]:
    """Every supervised process of the plan's host, in the order they are started (the reverse of the order they
    are stopped)."""
    quote = shlex.quote
    result = []
    if plan.media and plan.runs_code:  # as root (or djship's login user): FUSE mounts need it
        result.append(Program(name=MEDIA_PROGRAM, command=media_mount_command(plan, plan.media), stopsignal="TERM",
                              stopwaitsecs=10))
    if plan.mounts_archive:  # before PostgreSQL, whose archive_command pushes into it (it retries while it is down)
        result.append(Program(name=ARCHIVE_MOUNT_PROGRAM, command=archive_mount_command(plan), stopsignal="TERM",
                              stopwaitsecs=10))
    if plan.runs_postgres:
        result.append(Program(
            name="postgres",
            command=(
                f"/bin/sh -c {quote(_POSTGRES_RUN)} postgres {quote(plan.tools.pg('postgres'))} "
                f"{quote(str(plan.database.data_dir))}"
            ),
            stopsignal="INT",
            stopwaitsecs=60,
            user=plan.user_of("db"),
        ))
    if plan.runs_redis:
        result.append(Program(
            name=REDIS_PROGRAM, command=f"{quote(plan.tools.redis_server)} {quote(str(plan.redis.conf))}",
            stopsignal="TERM", stopwaitsecs=60, user=plan.user_of("redis"),
        ))
    if plan.pools:
        result.append(Program(
            # SIGINT: its safe shutdown (PAUSE, then exit), so a stop waits for the running statements.
            name=POOLER_PROGRAM, command=f"{quote(plan.tools.pgbouncer)} {quote(str(plan.paths.pooler_conf))}",
            stopsignal="INT", stopwaitsecs=plan.gunicorn_timeout + 5, user=plan.user_of("pooler"),
        ))
    for server in plan.servers_here:
        gunicorn, nginx = server.programs
        result.append(
            Program(
                name=gunicorn,
                command=shlex.join(with_app_environment(
                    plan, [str(server.release_link / "venv/bin/gunicorn"), "-c", str(server.gunicorn_conf)])),
                directory=str(server.dir),
                stopsignal="TERM",
                stopwaitsecs=plan.gunicorn_timeout + 5,
                user=plan.user_of("app"),
            )
        )
        result.append(
            Program(
                name=nginx,
                command=(
                    f"{quote(plan.tools.nginx)} -c {quote(str(server.nginx_conf))} -p {quote(str(server.dir))} "
                    "-e stderr"
                ),
                stopsignal="QUIT",
                stopwaitsecs=plan.nginx_timeout,
                # As root, as nginx is built to run: the master reads its config and opens its logs and port, its
                # workers run as [users].web (nginx.conf's `user`).
            )
        )
    for process in plan.processes_here:
        result += [process_program(plan, process, name) for name in process.programs]
    if plan.jobs_here:
        result.append(jobs_program(plan))
    if plan.holds("lb"):
        result.append(Program(
            name="haproxy",
            command=f"{quote(plan.tools.haproxy)} -W -db -f {quote(str(plan.paths.haproxy_conf))}",
            stopsignal="USR1",
            stopwaitsecs=plan.balancer_timeout + 5,
            user=None if plan.balancer_starts_as_root else plan.user_of("lb"),
        ))
    if plan.schedules_backups:
        # As djship's own user (root on a host): a backup reads the superuser password and writes the backups.
        backup = shlex.join(agent_argv(plan, "archive-backup") if plan.backup.archive
                            else agent_argv(plan, "backup", "--note", "daily"))
        result.append(Program(name=BACKUP_SCHEDULER, command=f"{quote(plan.tools.python)} -m djship.ops.schedule --at "
                                                             f"{plan.backup.schedule} -- {backup}",
                              stopsignal="TERM", stopwaitsecs=10))
    if plan.renews or plan.follows:
        # As root: it writes the certificate and installs it through HAProxy's runtime API (a follower installs the
        # renewer's).
        result.append(Program(name=RENEWAL_PROGRAM, command=shlex.join(agent_argv(plan, "watch")), stopsignal="TERM",
                              stopwaitsecs=10))
    return result


def agent_plan(plan: Plan) -> Plan:
    """The plan djship.agent runs by: the ACME directory's CA bundle is the copy on the host."""
    if plan.tls.acme_ca_bundle is None:
        return plan
    return replace(plan, tls=replace(plan.tls, acme_ca_bundle=plan.paths.acme_ca_bundle))


def agent_argv(plan: Plan, *args: str) -> list[str]:
    """The command that runs djship.agent on plan's host, with that host's Python (which has djship)."""
    return [plan.tools.python, "-m", "djship.agent", str(plan.paths.plan_file), *args]


def process_program(plan: Plan, process: Process, name: str) -> Program:
    """One of a process type's programs: its command run in the live release. SIGTERM goes to the command alone: a
    worker with a pool of children (Celery's prefork) then lets them finish their tasks (its warm shutdown), where a
    child that got SIGTERM itself would die in the middle of one. On a worker host, which runs no PgBouncer, it
    connects to PostgreSQL itself."""
    direct = {DIRECT_DATABASE: "1"} if plan.pooler and not plan.pools else {}
    return _release_program(plan, name, process.argv, process.stop_timeout, direct, signals_group=False)


def jobs_program(plan: Plan) -> Program:
    """The scheduler of [jobs] (djship_production.jobs, shipped in each release), run in the live release like a
    process: each job it starts inherits its environment."""
    return _release_program(plan, JOBS_PROGRAM, ["python", "-m", "djship_production.jobs", str(plan.paths.jobs_file)],
                            JOBS_STOP_TIMEOUT, {DIRECT_DATABASE: "1"} if plan.pooler else {})


def jobs_file(plan: Plan) -> str:
    """What the scheduler on the plan's host runs: its host's name and the jobs."""
    jobs = [{"name": job.name, "argv": job.argv, "every": job.every, "offset": job.offset,
             "window": job.window}
            for job in plan.jobs_here]
    return json.dumps({"host": plan.host, "jobs": jobs}, indent=2) + "\n"


def _release_program(plan: Plan, name: str, argv: list[str], stop_timeout: int, extra: dict[str, str] | None = None,
                     signals_group: bool = True) -> Program:
    """argv run in the live release (`current`, which a deploy moves before it restarts the program), with the
    release's virtualenv first on PATH, the production settings and the app's environment; stopped with SIGTERM
    (to its process group, or with signals_group False to it alone), then SIGKILL to the group after stop_timeout."""
    release = plan.paths.current
    settings = {**release_environment(release), "PATH": f"{release / 'venv/bin'}:{PROGRAM_ENVIRONMENT['PATH']}",
                **(extra or {})}
    # env finds the command on the PATH it sets, then execs it: the supervisor's SIGTERM reaches the command itself.
    argv = ["/usr/bin/env", *(f"{key}={value}" for key, value in settings.items()), *argv]
    return Program(name=name, command=shlex.join(with_app_environment(plan, argv)), directory=str(release / "app"),
                   stopsignal="TERM", stopwaitsecs=stop_timeout, user=plan.user_of("app"),
                   signals_group=signals_group)


def supervisord_conf(plan: Plan) -> str:
    return _render("supervisord.conf.j2", plan=plan, programs=programs(plan), supervisor_umask=SUPERVISOR_UMASK)


def supervisord_boot_conf(plan: Plan, name: str, command: str) -> str:
    return _render("supervisord-boot.conf.j2", plan=plan, name=name, command=command)


def systemd_unit(plan: Plan, command: str, stop_timeout: int) -> str:
    """command: ExecStart's, quoted for a shell (systemd reads quotes the same way)."""
    # systemd expands %-specifiers in every value, and $VARIABLES in ExecStart.
    state = str(plan.paths.state).replace("%", "%%")
    return _render("djship.service.j2", state=state, command=command.replace("%", "%%").replace("$", "$$"),
                   stop_timeout=stop_timeout, supervisor_umask=SUPERVISOR_UMASK)


def boot_script(plan: Plan, command: str, reason: str) -> str:
    return _render("boot.sh.j2", plan=plan, command=command, reason=reason, supervisor_umask=SUPERVISOR_UMASK)


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    text: str | bytes
    """Its content (bytes for a binary file, e.g. an OCSP response)."""
    programs: tuple[str, ...]
    """The supervised programs that read this file and must restart when it changes."""

    @property
    def data(self) -> bytes:
        return self.text if isinstance(self.text, bytes) else self.text.encode()


def system_files(plan: Plan) -> list[ConfigFile]:
    """Every config file of the plan's host that does not depend on a release."""
    files = [ConfigFile(plan.paths.supervisor_conf, supervisord_conf(plan), ())]
    if plan.holds("lb"):
        files.append(ConfigFile(plan.paths.haproxy_conf, haproxy_cfg(plan), ("haproxy",)))
        if plan.tls.mode == "acme":  # empty: entries live in HAProxy's memory only while an order runs
            files.append(ConfigFile(plan.paths.challenge_map, "", ()))
    if plan.runs_agent:
        readers = (RENEWAL_PROGRAM,) * (plan.renews or plan.follows) + (BACKUP_SCHEDULER,) * plan.schedules_backups
        files.append(ConfigFile(plan.paths.plan_file, plan_to_json(agent_plan(plan)), readers))
    if plan.runs_postgres:
        files.append(ConfigFile(plan.database.data_dir / "postgresql.conf", postgresql_conf(plan), ("postgres",)))
        files.append(ConfigFile(plan.database.data_dir / "pg_hba.conf", pg_hba_conf(plan), ("postgres",)))
        if plan.backup.archive is not None:
            files.append(ConfigFile(plan.backup.archive.conf, pgbackrest_conf(plan), ()))
        if plan.database.replicated:
            files.append(ConfigFile(plan.database.data_dir / "replication.conf", replication_conf(plan),
                                    ("postgres",)))
    if plan.runs_code and plan.database.replicated:
        files.append(ConfigFile(plan.paths.database_json, database_json(plan), app_programs(plan)))
    for server in plan.servers_here:
        gunicorn, nginx = server.programs
        files.append(ConfigFile(server.nginx_conf, nginx_conf(plan, server), (nginx,)))
        files.append(ConfigFile(server.gunicorn_conf, gunicorn_conf(plan, server), (gunicorn,)))
    if plan.pools:
        files.append(ConfigFile(plan.paths.pooler_conf, pgbouncer_ini(plan), (POOLER_PROGRAM,)))
    if plan.runs_code:
        files.append(ConfigFile(plan.paths.env_file, env_file(plan.env, ENV_FILE_ORIGIN), app_programs(plan)))
    if plan.jobs_here:
        files.append(ConfigFile(plan.paths.jobs_file, jobs_file(plan), (JOBS_PROGRAM,)))
    return files


def app_programs(plan: Plan) -> tuple[str, ...]:
    """The programs of the plan's host that run the app's code, with its environment: gunicorns, processes and the
    scheduler of [jobs]."""
    return (*(server.programs[0] for server in plan.servers_here), *plan.programs_beside_web)


def production_settings(plan: Plan, release_id: str, release_dir: Path) -> str:
    # `check --deploy` warns when HSTS has no includeSubDomains (W005) or no preload (W021): djship leaves them out
    # on purpose (localhost; preload only when asked for).
    silenced = [check for check, chosen in (("security.W005", plan.hsts_subdomains), ("security.W021", plan.hsts_preload))
                if not chosen]
    return _render(
        "settings.py.j2",
        plan=plan,
        release_id=release_id,
        release_dir=release_dir,
        static_url=STATIC_URL,
        media_url=MEDIA_URL,
        silenced_hsts_checks=silenced,
        pooler_port=POOLER_PORT,
        database_hold=DATABASE_HOLD,
        health_hold=HEALTH_HOLD,
    )
