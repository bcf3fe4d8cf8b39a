"""PostgreSQL: its own cluster in the state directory, a role and database for the app, password auth only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.plan import Plan
from djship.waiting import wait_until

# Every table of the app, as schema-qualified identifiers; system schemas are not the app's data.
TABLES_QUERY = (
    "SELECT schemaname, tablename FROM pg_tables "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY schemaname, tablename"
)


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


def psql_argument(value: str) -> str:
    """value as one single-quoted argument of a psql meta-command: ' doubled, backslash and every control character
    written as an escape, so it stays inside its quotes and on its line."""
    escaped = "".join(
        "''" if char == "'" else "\\\\" if char == "\\" else f"\\{ord(char):03o}" if ord(char) < 0x20 or char == "\x7f"
        else char
        for char in value
    )
    return f"'{escaped}'"


class DatabaseServer:
    def __init__(self, plan: Plan, connector: Connector):
        self.plan = plan
        self.db = plan.database
        self.connector = connector

    def initialized(self) -> bool:
        return self.connector.get(self.db.data_dir / "PG_VERSION") is not None

    def init_cluster(self, superuser_password: str) -> None:
        owner = self.plan.service_user
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

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(
            f"PostgreSQL on {self.db.endpoint}", lambda: (self.is_ready(), "not accepting connections"), timeout,
            f"see {self.plan.paths.logs / 'postgres.log'}",
        )

    def is_ready(self) -> bool:
        result = self.connector.run(
            [self.plan.tools.pg("pg_isready"), "-h", self.db.address, "-p", str(self.db.port), "-t", "1"]
        )
        return result.ok

    def admin_connection(
        self, superuser_password: str, database: str = "postgres", autocommit: bool = True
    ) -> psycopg.Connection:
        return psycopg.connect(
            host=self.db.address, port=self.db.port, user=self.db.superuser, password=superuser_password,
            dbname=database, autocommit=autocommit, connect_timeout=10,
        )

    @contextmanager
    def administering(self) -> Iterator[None]:
        """Turn PostgreSQL's refusals into one line naming where the superuser password is."""
        try:
            yield
        except psycopg.Error as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DjshipError(
                f"PostgreSQL on {self.db.endpoint} refused djship's administration ({reason}); "
                f"the superuser password is in {self.plan.paths.admin_secrets}"
            ) from None

    def ensure_app_database(self, superuser_password: str, app_password: str, database: str) -> None:
        """Create the app's role and its live database, or bring the role's password in line with the secrets
        file. database is the live one: database.name until a restore switched to another.

        psql runs where the database runs (through the connector), so this works the same on a remote db host,
        which accepts the superuser from itself only; the password reaches psql in a 0600 file, never in argv."""
        passfile = self.plan.paths.pgpass
        self.connector.put(passfile, f"{self.db.address}:{self.db.port}:*:{self.db.superuser}:{superuser_password}\n",
                           mode=0o600)
        script = ENSURE_APP_DATABASE.format(
            role=psql_argument(self.db.user), password=psql_argument(app_password), database=psql_argument(database)
        )
        result = self.connector.run(
            [self.plan.tools.pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.db.address, "-p",
             str(self.db.port), "-U", self.db.superuser, "-d", "postgres", "-f", "-"],
            env={"PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "10"}, input=script, timeout=60,
        )
        if not result.ok:
            reason = (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
            raise DjshipError(
                f"PostgreSQL on {self.db.endpoint} refused djship's administration ({reason}); "
                f"the superuser password is in {self.plan.paths.admin_secrets}"
            )

    def app_databases(self, superuser_password: str) -> dict[str, int]:
        """The databases the app's role owns, with their size in bytes."""
        with self.administering(), self.admin_connection(superuser_password) as connection:
            rows = connection.execute(
                "SELECT datname, pg_database_size(datname) FROM pg_database "
                "WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY datname",
                (self.db.user,),
            ).fetchall()
        return {name: size for name, size in rows}

    def create_database(self, superuser_password: str, name: str) -> None:
        """A new, empty database owned by the app's role."""
        with self.administering(), self.admin_connection(superuser_password) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name), sql.Identifier(self.db.user)
                )
            )

    def drop_database(self, superuser_password: str, name: str) -> None:
        with self.administering(), self.admin_connection(superuser_password) as connection:
            connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def row_counts(self, connection: psycopg.Connection) -> dict[str, int]:
        """Rows per table ("schema.table") as this connection's transaction sees them."""
        counts = {}
        for schema, table in connection.execute(TABLES_QUERY).fetchall():
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            counts[f"{schema}.{table}"] = connection.execute(query).fetchone()[0]
        return counts

    def observe(self, superuser_password: str) -> dict:
        """What PostgreSQL reports about itself: max_connections, the connections open now (pg_stat_activity's
        client backends), its clock (now(), UNIX time) and this machine's clock at the same moment (local_time)."""
        with self.administering(), self.admin_connection(superuser_password) as connection:
            started = time.time()
            now = connection.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
            local_time = (started + time.time()) / 2
            maximum = int(connection.execute("SHOW max_connections").fetchone()[0])
            open_now = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()[0]
        return {"max_connections": maximum, "connections": open_now, "now": now, "local_time": local_time}
