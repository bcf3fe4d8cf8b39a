"""An external PostgreSQL (database.url): the config, the plan without a db host, the settings, and psql's answers
turned into one line."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from djship import render
from djship.components.database import admin_psql_command, connection_problem, pgpass_line, tls_env
from djship.config import parse_config
from djship.errors import DjshipError
from djship.plan import HostSpec, build_plans, check_budget
from tests.unit.conftest import FAKE_TOOLS
from tests.unit.test_config import MINIMAL, config_error
from tests.unit.test_render import RELEASE_ID

URL = 'url = "postgresql://shop@db.example.com:5432/shop"'
EXTERNAL = MINIMAL + f'\n[database]\n{URL}\nca_bundle = "rds-ca.pem"\n'
HOSTS = """
[servers]
lb = ["lb1"]
app = ["app1", "app2"]
media = "lb1"
[hosts.lb1]
address = "10.0.0.10"
[hosts.app1]
address = "10.0.0.11"
[hosts.app2]
address = "10.0.0.12"
"""
UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"


def test_the_url_gives_the_server_the_database_and_the_role():
    external = parse_config(EXTERNAL).database.external
    assert (external.host, external.port, external.name, external.user) == ("db.example.com", 5432, "shop", "shop")
    assert parse_config(EXTERNAL.replace(":5432", "")).database.external.port == 5432
    assert parse_config(MINIMAL).database.external is None


@pytest.mark.parametrize("url, says", [
    ("postgresql://shop:hunter2@db.example.com/shop", "holds a password; remove it from djship.toml"),
    ("mysql://shop@db.example.com/shop", "must be a URL such as"),
    ("postgresql://shop@db.example.com/shop?sslmode=disable", "has options after ?"),
    ("postgresql://db.example.com/shop", "needs a user (before @)"),
    ("postgresql://shop@db.example.com/", "needs a database name (after /)"),
    ("postgresql://shop@/shop", "needs the server's host name"),
    ("postgresql://shop@db.example.com:99999/shop", "port"),
    ("postgresql://postgres@db.example.com/shop", "reserved by PostgreSQL"),
])
def test_a_url_djship_cannot_use_is_refused_with_the_fix(url: str, says: str):
    message = config_error(EXTERNAL.replace(URL, f'url = "{url}"'))
    assert message.startswith("djship.toml: database.url: ") and says in message, message


@pytest.mark.parametrize("extra, says", [
    ("port = 6432", "database.port: database.url says it; remove database.port"),
    ('name = "other"', "database.name: database.url says it"),
    ("max_connections = 500", "database.max_connections: with database.url djship asks the server"),
])
def test_what_the_url_says_is_not_said_twice(extra: str, says: str):
    assert says in config_error(EXTERNAL + extra + "\n")


def test_the_ca_bundle_is_required_and_the_external_keys_need_a_url():
    assert "database.ca_bundle: required with database.url" in config_error(
        EXTERNAL.replace('ca_bundle = "rds-ca.pem"\n', ""))
    assert "database.admin_user: is for an external PostgreSQL" in config_error(
        MINIMAL + '\n[database]\nadmin_user = "postgres"\n')
    assert "database.ca_bundle: is for an external PostgreSQL" in config_error(
        MINIMAL + '\n[database]\nca_bundle = "x.pem"\n')


def test_hosts_have_no_db_host_with_a_url_and_must_name_what_defaulted_to_it():
    config = parse_config(EXTERNAL + HOSTS)
    assert config.servers.db is None
    assert "servers.db: with database.url djship runs no PostgreSQL" in config_error(
        EXTERNAL + HOSTS.replace('media = "lb1"', 'media = "lb1"\ndb = "lb1"'))
    assert "servers.media: with database.url there is no db host" in config_error(
        EXTERNAL + HOSTS.replace('media = "lb1"\n', ""))
    assert "servers.db: required key is missing" in config_error(MINIMAL + HOSTS)
    assert "backup.schedule: not built yet with database.url" in config_error(
        EXTERNAL + '\n[backup]\nschedule = "03:30"\n')


def test_one_machine_with_a_url_holds_no_db_role_and_renders_no_postgresql(make_plan, short_tmp):
    plan = make_plan(database={"url": "postgresql://shop@db.example.com/shop", "ca_bundle": "rds-ca.pem"})
    assert not plan.holds("db") and plan.holds("app") and plan.holds("lb")
    db = plan.database
    assert db.external and not db.creates and db.superuser == "shop" and db.admin_database == "shop"
    assert db.ca_bundle == plan.project_dir / "rds-ca.pem"
    paths = {file.path for file in render.system_files(plan)}
    assert not any("postgres" in str(path) for path in paths)
    assert "[program:postgres]" not in render.supervisord_conf(plan)


def test_with_an_admin_user_djship_creates_the_role_and_administers_from_postgres(make_plan):
    plan = make_plan(database={"url": "postgresql://shop@db.example.com/shop", "ca_bundle": "rds-ca.pem",
                               "admin_user": "rdsadmin_user"})
    assert plan.database.creates and plan.database.superuser == "rdsadmin_user"
    assert plan.database.admin_database == "postgres"


def test_hosts_plan_without_a_db_host(short_tmp):
    config = parse_config(EXTERNAL + HOSTS)
    specs = [HostSpec(name, config.hosts[name].address, roles, short_tmp / name, FAKE_TOOLS, True)
             for name, roles in (("lb1", ("lb", "media")), ("app1", ("app",)), ("app2", ("app",)))]
    plans = build_plans(config, short_tmp, specs)
    assert not any(plan.holds("db") for plan in plans.values())
    assert {plan.database.endpoint for plan in plans.values()} == {"db.example.com:5432"}
    assert plans["app1"].paths.database_ca == short_tmp / "app1" / "tls" / "database-ca.pem"


def test_the_budget_is_checked_against_the_servers_own_max_connections(make_plan):
    plan = make_plan(app={"servers": 2, "workers": 30},
                     database={"url": "postgresql://shop@db.example.com/shop", "ca_bundle": "rds-ca.pem"})
    check_budget(plan, 200, 3)
    with pytest.raises(DjshipError) as caught:
        check_budget(plan, 50, 3)
    message = str(caught.value)
    assert "70 connections" in message and "max_connections = 50 (3 reserved" in message
    assert "raise max_connections on the server (RDS: its parameter group)" in message


def test_settings_connect_with_verify_full_against_the_bundle(make_plan, golden_dir, short_tmp, monkeypatch):
    plan = make_plan(running_as_root=True, app={"servers": 2},
                     database={"url": "postgresql://shop@db.example.com:6432/shop", "ca_bundle": "rds-ca.pem"})
    text = render.production_settings(plan, RELEASE_ID, plan.paths.releases / RELEASE_ID)
    golden = golden_dir / "settings-external.py"
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")

    moved = make_plan(project_dir=short_tmp / "p", project={"settings_module": "unitsite.settings"},
                      database={"url": "postgresql://shop@db.example.com:6432/shop", "ca_bundle": "rds-ca.pem"})
    moved.paths.secrets.mkdir(parents=True)
    moved.paths.app_secrets.write_text('{"secret_key": "k", "database_password": "pw"}')
    monkeypatch.setitem(sys.modules, "unitsite", types.ModuleType("unitsite"))
    project_settings = types.ModuleType("unitsite.settings")
    project_settings.MIDDLEWARE = []
    monkeypatch.setitem(sys.modules, "unitsite.settings", project_settings)
    settings: dict[str, object] = {}
    exec(compile(render.production_settings(moved, RELEASE_ID, moved.paths.releases / RELEASE_ID), "s.py", "exec"),
         settings)
    database = settings["DATABASES"]["default"]
    assert (database["HOST"], database["PORT"], database["NAME"], database["USER"]) == \
        ("db.example.com", "6432", "shop", "shop")
    assert database["OPTIONS"]["sslmode"] == "verify-full"
    assert database["OPTIONS"]["sslrootcert"] == str(moved.paths.database_ca)


def test_psql_reaches_an_external_server_with_verify_full_and_the_password_in_a_file(make_plan):
    plan = make_plan(database={"url": "postgresql://shop@db.example.com/shop", "ca_bundle": "rds-ca.pem"})
    ca = plan.paths.database_ca
    argv, env = admin_psql_command("/bin/psql", plan.database, "shop", Path("/s/pgpass"), {}, ca)
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == str(ca)
    assert env["PGHOST"] == "db.example.com" and env["PGUSER"] == "shop" and env["PGPASSFILE"] == "/s/pgpass"
    assert not any("shop@" in arg or "password" in arg.lower() for arg in argv)
    own = make_plan()
    assert tls_env(own.database, ca) == {}
    assert pgpass_line(plan.database, "a:b\\c") == "db.example.com:5432:*:shop:a\\:b\\\\c\n"


@pytest.mark.parametrize("stderr, says", [
    ('psql: error: connection to server at "10.0.0.5", port 5433 failed: server does not support SSL, but SSL was '
     'required', "refuses TLS (it offers plaintext connections only)"),
    ('psql: error: connection to server at "10.0.0.5", port 5432 failed: SSL error: certificate verify failed',
     "has a certificate database.ca_bundle does not verify for db.example.com (SSL error: certificate verify failed)"),
    ('psql: error: connection to server at "10.0.0.5", port 5432 failed: server certificate for "other" does not '
     'match host name "db.example.com"', "has a certificate database.ca_bundle does not verify"),
    ('psql: error: connection to server at "10.0.0.5", port 5439 failed: Connection refused\n'
     '\tIs the server running on that host and accepting TCP/IP connections?',
     "cannot reach PostgreSQL at db.example.com:5432 (database.url) (Connection refused)"),
    ('psql: error: connection to server at "10.0.0.5", port 5432 failed: FATAL:  password authentication failed for '
     'user "shop"', "refused the password of 'shop'"),
])
def test_what_psql_says_becomes_one_line_with_the_cause_and_the_fix(make_plan, stderr: str, says: str):
    plan = make_plan(database={"url": "postgresql://shop@db.example.com/shop", "ca_bundle": "rds-ca.pem"})
    message = connection_problem(plan.database, stderr)
    assert says in message and "\n" not in message, message


def test_app_hosts_need_postgresql_client_and_no_host_needs_postgresql(tmp_path):
    from djship.hosts import remote_hosts, requirements_for

    config = parse_config(EXTERNAL + HOSTS)
    hosts = {host.name: host for host in remote_hosts(config, tmp_path)}
    assert not any("db" in host.roles for host in hosts.values())
    needs = {name: {r.package for r in requirements_for(host.roles, host.features)} for name, host in hosts.items()}
    assert "postgresql-client" in needs["app1"] and "postgresql-client" not in needs["lb1"]
    assert not any("postgresql" in packages for packages in needs.values())
