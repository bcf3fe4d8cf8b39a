"""PostgreSQL: its own cluster in the state directory, a role and database for the app, password auth only; or an
external server (database.url) djship reaches from an app host over TLS, verified against database.ca_bundle."""

from __future__ import annotations

import json
from pathlib import Path

from djship.connectors import CommandFailed, Connector
from djship.deploy.live import read_live
from djship.errors import DjshipError
from djship.plan import POOLER_APPLICATION, Database, Plan
from djship.waiting import wait_until


# The values reach SQL only as psql variables, which format() quotes (%I, %L). They may come from files a
# less-privileged user can write (the live database name, the app's secrets file), so each is one quoted \set
# argument (psql_argument) that nothing in it can end.
ENSURE_APP_DATABASE = """\\set role_name {role}
\\set role_password {password}
\\set database {database}
SELECT format(CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role_name')
              THEN 'ALTER ROLE %I LOGIN PASSWORD %L' ELSE 'CREATE ROLE %I LOGIN PASSWORD %L' END,
              :'role_name', :'role_password') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role_name')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'database') \\gexec
-- pg_hba.conf lets the app's role reach every database; only those it owns should accept it.
REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC;
"""
# On an external server djship's admin role creates the app's role and database, and changes nothing else of a
# cluster others may share.
ENSURE_EXTERNAL_APP_DATABASE = ENSURE_APP_DATABASE.split("-- pg_hba.conf")[0]
# What the server allows, asked before anything starts (database.url).
SERVER_LIMITS = "SELECT current_setting('max_connections') || ' ' || current_setting('superuser_reserved_connections')\n"


def psql_argument(value: str) -> str:
    """value as one single-quoted argument of a psql meta-command: ' doubled, backslash and every control character
    written as an escape, so it stays inside its quotes and on its line."""
    escaped = "".join(
        "''" if char == "'" else "\\\\" if char == "\\" else f"\\{ord(char):03o}" if ord(char) < 0x20 or char == "\x7f"
        else char
        for char in value
    )
    return f"'{escaped}'"
# One statement per table of the app (system schemas are not its data), each printing {"schema.table": rows}.
COUNT_ROWS = (
    "SELECT format('SELECT json_build_object(%L, count(*)) FROM %I.%I', schemaname || '.' || tablename, schemaname, "
    "tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
    "ORDER BY schemaname, tablename \\gexec\n"
)

# The row counts and pg_dump in one REPEATABLE READ transaction, which stays open until pg_dump exits: pg_dump
# imports its exported snapshot, so the counts describe exactly the dump. \copy TO PROGRAM (unlike \!) fails the
# script when pg_dump fails; pg_dump finds the database and password in the environment psql runs in.
DUMP_SESSION = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
    + COUNT_ROWS
    + "\\copy (SELECT pg_export_snapshot()) TO PROGRAM 'read -r snapshot && exec \"$DJSHIP_PG_DUMP\" --no-password "
    "--format=custom --snapshot=\"$snapshot\" --file=\"$DJSHIP_DUMP\"'\n"
    "ROLLBACK;\n"
)

APP_DATABASES = (
    "SELECT coalesce(json_object_agg(datname, pg_database_size(datname) ORDER BY datname), '{}') FROM pg_database "
    "WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = :'role')\n"
)
CREATE_DATABASE = (
    "SELECT format('CREATE DATABASE %I OWNER %I TEMPLATE template0 ENCODING %L', :'database', :'role', 'UTF8') "
    "\\gexec\n"
)
DROP_DATABASE = "SELECT format('DROP DATABASE %I WITH (FORCE)', :'database') \\gexec\n"
OBSERVE = (
    "SELECT json_build_object('max_connections', current_setting('max_connections')::int, 'connections', "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'))\n"
)


# djship's own administration never waits for a synchronous standby (database.synchronous): the first up creates
# the app's role before the standby exists, and a standby that is down must not stop djship from acting.
ADMIN_OPTIONS = "-c synchronous_commit=local"


POOLED_CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name = :'name'\n"
)


def pgpass_line(db: Database, password: str) -> str:
    """The superuser's (an external server: djship's admin role's) line of a PGPASSFILE; \\ and : escaped, as a
    password the user chose may hold them."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"{db.own_address}:{db.port}:*:{db.superuser}:{escaped}\n"


def tls_env(db: Database, ca_file: Path) -> dict[str, str]:
    """libpq's TLS settings for an external server: its certificate verified for its host name against ca_file, no
    client certificate (PGSSLCERT names a file that does not exist, else libpq looks in $HOME/.postgresql)."""
    if not db.external:
        return {}
    return {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca_file),
            "PGSSLCERT": str(ca_file.parent / "no-client-certificate")}


def admin_psql_command(psql: str, db: Database, database: str, passfile: Path, variables: dict[str, str],
                       ca_file: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """psql as the superuser (an external server: djship's admin role), reading its script from stdin, variables
    set (-v); the connection is in libpq's environment, so a program psql starts (pg_dump) reaches the same
    database, and the password in PGPASSFILE."""
    settings = [f"--set={name}={value}" for name, value in variables.items()]
    argv = [psql, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", *settings, "-f", "-"]
    env = {"PGHOST": db.own_address, "PGPORT": str(db.port), "PGUSER": db.superuser, "PGDATABASE": database,
           "PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "10", "PGOPTIONS": ADMIN_OPTIONS}
    return argv, {**env, **(tls_env(db, ca_file) if ca_file else {})}


def connection_problem(db: Database, stderr: str) -> str:
    """psql's complaint about an external server as one line naming the cause and the fix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = lines[0].removeprefix("psql: error: ") if lines else "no answer"
    # libpq: 'connection to server at "10.0.0.5", port 5432 failed: <why>', and at times a hint on the next line.
    reason = first.split(" failed: ", 1)[-1]
    where = f"PostgreSQL at {db.endpoint} (database.url)"
    lower = stderr.lower()
    if "does not support ssl" in lower or "ssl was required" in lower:
        return (f"{where} refuses TLS (it offers plaintext connections only); turn on ssl on the server (RDS: "
                "rds.force_ssl) — djship connects with sslmode=verify-full only")
    if "certificate" in lower or "ssl error" in lower or "does not match host name" in lower:
        return (f"{where} has a certificate database.ca_bundle does not verify for {db.address} ({reason}); point "
                "database.ca_bundle at the bundle of the CA that signed the server's certificate (RDS: "
                "global-bundle.pem), and use the host name the certificate names")
    if "password authentication failed" in lower or "no password supplied" in lower:
        return (f"{where} refused the password of {db.superuser!r} ({reason}); set it with `djship db password"
                f"{' --admin' if db.superuser != db.user else ''}`")
    if "does not exist" in lower:
        return f"{where}: {reason}; create it on the server, or set database.admin_user so djship creates it"
    return (f"cannot reach {where} ({reason}); check the host and port in database.url and that the server accepts "
            "connections from the app hosts (firewall, security group)")


def parse_row_counts(output: str) -> dict[str, int]:
    """COUNT_ROWS's output ({"schema.table" : rows} per line) as {"schema.table": rows}."""
    counts = {}
    for line in output.splitlines():
        if line.startswith("{"):
            counts.update({str(table): int(rows) for table, rows in json.loads(line).items()})
    return counts


class DatabaseServer:
    def __init__(self, plan: Plan, connector: Connector):
        self.plan = plan
        self.db = plan.database
        self.connector = connector

    def initialized(self) -> bool:
        return self.connector.get(self.db.data_dir / "PG_VERSION") is not None

    def init_cluster(self, superuser_password: str) -> None:
        owner = self.plan.user_of("db")
        self.connector.makedirs(self.db.data_dir.parent, mode=0o700, owner=owner)
        password_file = self.db.data_dir.parent / "initdb-password"
        self.connector.put(password_file, superuser_password + "\n", mode=0o600, owner=owner)
        try:
            result = self.connector.run(
                [
                    self.plan.tools.pg("initdb"), "-D", str(self.db.data_dir), "-U", self.db.superuser,
                    "--pwfile", str(password_file), "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                ],
                user=owner,
            )
        finally:
            self.connector.run(["rm", "-f", str(password_file)])
        if not result.ok:
            raise CommandFailed(f"initdb {self.db.data_dir}", result)

    def check_owner(self) -> None:
        """PostgreSQL refuses a data directory that is not its user's: one an earlier djship made for the one user
        of every component must be given to the db user by hand (while stopped; a running one would lose its
        files)."""
        owner = self.plan.user_of("db")
        if owner is None:
            return
        found = self.connector.run(["stat", "-c", "%U", "--", str(self.db.data_dir)]).stdout.strip()
        if found != owner:
            raise DjshipError(
                f"PostgreSQL's data directory {self.db.data_dir} belongs to {found}, not to its user {owner} (users.db); "
                f"run `djship down`, then `chown -R {owner}: {self.db.data_dir.parent}` and `djship up`"
            )

    def wait_ready(self, timeout: float = 30, running=lambda ready: ready) -> None:
        """Until it accepts connections; running: Supervisor.answering for a PostgreSQL just launched."""
        wait_until(
            f"PostgreSQL on {self.db.endpoint}", running(lambda: (self.is_ready(), "not accepting connections")),
            timeout, f"see {self.plan.paths.logs / 'postgres.log'}",
        )

    def is_ready(self) -> bool:
        result = self.connector.run(
            [self.plan.tools.pg("pg_isready"), "-h", self.db.own_address, "-p", str(self.db.port), "-t", "1"]
        )
        return result.ok

    def admin_database(self) -> str:
        """The database djship's administration connects to: "postgres", or where the app's role administers an
        external server itself, the live one (database.url's until a restore switched; one it may have dropped)."""
        if self.db.external and not self.db.creates:
            return read_live(self.plan, self.connector).database
        return self.db.admin_database

    @property
    def ca_file(self) -> Path:
        return self.plan.paths.database_ca

    def client_env(self, superuser_password: str) -> dict[str, str]:
        """What pg_restore and the like connect with: the password file, and an external server's TLS settings."""
        return {"PGPASSFILE": str(self.passfile(superuser_password)), **tls_env(self.db, self.ca_file)}

    def check_external(self, password: str, ca_bundle: bytes) -> tuple[int, int]:
        """Connect to the external server as djship's admin role, TLS verified, before anything starts: its
        max_connections and superuser_reserved_connections, or a one-line DjshipError. The CA bundle and the
        password reach psql in a fresh 0700 directory (the state root may not exist yet), removed afterwards."""
        made = self.connector.run(["mktemp", "-d", "-t", "djship-database.XXXXXXXX"])
        if not made.ok:
            raise CommandFailed("mktemp -d", made)
        directory = Path(made.stdout.strip())
        try:
            ca_file, passfile = directory / "ca.pem", directory / "pgpass"
            self.connector.put(ca_file, ca_bundle, mode=0o644)
            self.connector.put(passfile, pgpass_line(self.db, password),
                               mode=0o600)
            argv, env = admin_psql_command(self.plan.tools.pg("psql"), self.db, self.admin_database(), passfile, {},
                                           ca_file)
            result = self.connector.run(argv, env=env, input=SERVER_LIMITS, timeout=30)
        finally:
            self.connector.run(["rm", "-rf", "--", str(directory)])
        if not result.ok:
            raise DjshipError(connection_problem(self.db, result.stderr) + "; nothing was started")
        limit, reserved = result.stdout.split()
        return int(limit), int(reserved)

    def ensure_app_database(self, superuser_password: str, app_password: str, database: str) -> None:
        """Create the app's role and its live database, or bring the role's password in line with the secrets
        file. database is the live one: database.name until a restore switched to another.

        psql runs where the database runs (through the connector), so this works the same on a remote db host,
        which accepts the superuser from itself only; the password reaches psql in a 0600 file, never in argv.
        An external server: created by its admin role when there is one (database.admin_user), else the app's role
        and database are the DBA's, and the preflight connected to them already."""
        if self.db.external:
            if self.db.creates:
                self.admin_psql(superuser_password, f"creating role {self.db.user} and database {database}",
                                ENSURE_EXTERNAL_APP_DATABASE.format(role=psql_argument(self.db.user),
                                                                    password=psql_argument(app_password),
                                                                    database=psql_argument(database)))
            return
        passfile = self.plan.paths.pgpass
        self.connector.put(passfile, pgpass_line(self.db, superuser_password),
                           mode=0o600)
        script = ENSURE_APP_DATABASE.format(
            role=psql_argument(self.db.user), password=psql_argument(app_password), database=psql_argument(database)
        )
        result = self.connector.run(
            [self.plan.tools.pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.db.own_address, "-p",
             str(self.db.port), "-U", self.db.superuser, "-d", "postgres", "-f", "-"],
            env={"PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "10", "PGOPTIONS": ADMIN_OPTIONS}, input=script,
            timeout=60,
        )
        if not result.ok:
            reason = (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
            raise DjshipError(
                f"PostgreSQL on {self.db.endpoint} refused djship's administration ({reason}); "
                f"the superuser password is in {self.plan.paths.admin_secrets}"
            )

    def observe(self, superuser_password: str) -> dict:
        """What PostgreSQL reports about itself: max_connections and the connections open now (pg_stat_activity's
        client backends)."""
        return json.loads(self.admin_psql(superuser_password, "asking for max_connections", OBSERVE))

    def pooled_connections(self, superuser_password: str) -> int:
        """The connections PgBouncer keeps open to PostgreSQL, from every app host (by their application_name)."""
        return int(self.admin_psql(superuser_password, "counting PgBouncer's connections", POOLED_CONNECTIONS,
                                   variables={"name": POOLER_APPLICATION}).strip())

    # -- administration from the db host itself (the only place the superuser may connect from) ----------------

    def passfile(self, superuser_password: str) -> Path:
        """Where psql, pg_dump and pg_restore on the db host read the superuser's password (PGPASSFILE), 0600."""
        passfile = self.plan.paths.pgpass
        self.connector.put(passfile, pgpass_line(self.db, superuser_password),
                           mode=0o600)
        return passfile

    def admin_psql(self, superuser_password: str, what: str, script: str, database: str | None = None,
                   variables: dict[str, str] | None = None, env: dict[str, str] | None = None,
                   timeout: float | None = 60) -> str:
        """Run a psql script as the superuser on the db host; its output."""
        argv, psql_env = admin_psql_command(self.plan.tools.pg("psql"), self.db, database or self.admin_database(),
                                            self.passfile(superuser_password), variables or {}, self.ca_file)
        result = self.connector.run(argv, env={**psql_env, **(env or {})}, input=script, timeout=timeout)
        if not result.ok:
            raise CommandFailed(f"{what} on PostgreSQL {self.db.endpoint}", result)
        return result.stdout

    def app_databases(self, superuser_password: str) -> dict[str, int]:
        """The databases the app's role owns, with their size in bytes."""
        output = self.admin_psql(superuser_password, "listing the app's databases", APP_DATABASES,
                                 variables={"role": self.db.user})
        return {str(name): int(size) for name, size in json.loads(output).items()}

    def create_database(self, superuser_password: str, name: str) -> None:
        """A new, empty database owned by the app's role."""
        self.admin_psql(superuser_password, f"creating database {name}", CREATE_DATABASE,
                        variables={"database": name, "role": self.db.user})

    def drop_database(self, superuser_password: str, name: str) -> None:
        self.admin_psql(superuser_password, f"dropping database {name}", DROP_DATABASE, variables={"database": name})

    def row_counts(self, superuser_password: str, database: str) -> dict[str, int]:
        """Rows per table ("schema.table") of database."""
        return parse_row_counts(self.admin_psql(superuser_password, f"counting the rows of {database}", COUNT_ROWS,
                                                database))

    def dump(self, superuser_password: str, database: str, output: Path) -> dict[str, int]:
        """pg_dump of database into output (custom format) on the db host, and the row count of every table in
        the dump's own snapshot."""
        try:
            return parse_row_counts(self.admin_psql(
                superuser_password, f"pg_dump of {database}", DUMP_SESSION, database,
                env={"DJSHIP_PG_DUMP": self.plan.tools.pg("pg_dump"), "DJSHIP_DUMP": str(output)}, timeout=None,
            ))
        except CommandFailed as failed:  # psql's last line only says that pg_dump exited 1; pg_dump's says why
            why = [line for line in failed.result.stderr.splitlines() if line.startswith("pg_dump: error:")]
            if not why:
                raise
            raise DjshipError(f"pg_dump of {database} failed: {why[-1].removeprefix('pg_dump: error: ')}") from None
