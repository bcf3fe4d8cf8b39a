"""PostgreSQL: its own cluster in the state directory, a role and database for the app, password auth only."""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.plan import Plan
from djship.waiting import wait_until


class DatabaseServer:
    def __init__(self, plan: Plan, connector: Connector):
        self.plan = plan
        self.db = plan.database
        self.connector = connector

    def initialized(self) -> bool:
        return (self.db.data_dir / "PG_VERSION").exists()

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
            password_file.unlink(missing_ok=True)
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

    def _admin_connection(self, superuser_password: str) -> psycopg.Connection:
        return psycopg.connect(
            host=self.db.address, port=self.db.port, user=self.db.superuser, password=superuser_password,
            dbname="postgres", autocommit=True, connect_timeout=10,
        )

    def ensure_app_database(self, superuser_password: str, app_password: str) -> None:
        """Create the app's role and database, or bring the role's password in line with the secrets file."""
        try:
            self._ensure_app_database(superuser_password, app_password)
        except psycopg.Error as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DjshipError(
                f"PostgreSQL on {self.db.endpoint} refused djship's administration ({reason}); "
                f"the superuser password is in {self.plan.paths.admin_secrets}"
            ) from None

    def _ensure_app_database(self, superuser_password: str, app_password: str) -> None:
        with self._admin_connection(superuser_password) as connection:
            role = sql.Identifier(self.db.user)
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.db.user,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            connection.execute(
                sql.SQL("{} {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(app_password))
            )
            if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db.name,)).fetchone():
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(self.db.name), role)
                )

    def observe(self, superuser_password: str) -> dict:
        """What PostgreSQL reports about itself: max_connections, the connections open now (pg_stat_activity's
        client backends), its clock (now(), UNIX time) and this machine's clock at the same moment (local_time)."""
        try:
            with self._admin_connection(superuser_password) as connection:
                started = time.time()
                now = connection.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
                local_time = (started + time.time()) / 2
                maximum = int(connection.execute("SHOW max_connections").fetchone()[0])
                open_now = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ).fetchone()[0]
        except psycopg.Error as error:
            raise DjshipError(f"PostgreSQL on {self.db.endpoint}: {str(error).strip().splitlines()[0]}") from None
        return {"max_connections": maximum, "connections": open_now, "now": now, "local_time": local_time}
