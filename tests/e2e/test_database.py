"""The database component against a real PostgreSQL: values from files a less-privileged user can write (the app's
password, the live database name) reach psql only as quoted variables, never as script of their own."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from djship import render
from djship.components.database import DatabaseServer
from djship.config import Config
from djship.connectors.local import LocalConnector
from djship.plan import build_plans
from djship.system import ensure_users
from djship.tools import find_tools
from djship.topology import local_spec
from tests.e2e.conftest import Ports

pytestmark = pytest.mark.e2e

PORTS = Ports.of(https=24443, http=24080, database=31432, app_prefix="127.0.71", database_address="127.0.72.1")


def test_a_hostile_password_and_database_name_stay_values(workdir: Path):
    marker = workdir / "pwned"
    password = f"x'y\\' \\\\ \n\\! touch {marker}\n:'role_name' `touch {marker}`"
    database = 'shop"; \\! touch ' + str(marker)
    running_as_root = os.geteuid() == 0
    config = Config.model_validate({
        "project": {"settings_module": "shop.settings", "wsgi_application": "shop.wsgi.application"},
        "database": {"address": PORTS.database_address, "port": PORTS.database},
    })
    spec = local_spec(config, workdir, find_tools(), running_as_root)
    plan = build_plans(config, workdir, [spec])[spec.name]
    connector = LocalConnector()
    server = DatabaseServer(plan, connector)
    ensure_users(plan, connector)
    server.init_cluster("superuser secret")
    for name, text in (("postgresql.conf", render.postgresql_conf(plan)), ("pg_hba.conf", render.pg_hba_conf(plan))):
        connector.put(plan.database.data_dir / name, text, mode=0o600, owner=plan.user_of("db"))
    user = ["runuser", "-u", plan.user_of("db"), "--"] if plan.users else []
    postgres = subprocess.Popen([*user, plan.tools.pg("postgres"), "-D", str(plan.database.data_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        server.wait_ready()
        server.ensure_app_database("superuser secret", password, database)
        server.ensure_app_database("superuser secret", password, database)  # the second run alters, creates nothing

        with psycopg.connect(host=plan.database.address, port=plan.database.port, user=plan.database.user,
                             password=password, dbname=database, connect_timeout=10) as connection:
            assert connection.execute("SELECT current_database(), current_user").fetchone() == (database, "shop")
        assert not marker.exists()
    finally:
        os.killpg(postgres.pid, signal.SIGINT)
        postgres.wait(timeout=30)
