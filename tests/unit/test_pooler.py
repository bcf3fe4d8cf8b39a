"""database.pooler = "pgbouncer": the keys, where PgBouncer runs and as whom, its pgbouncer.ini (golden, and run by
the real pgbouncer against a real PostgreSQL), the settings, the connection budget, and what `up` decides."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from djship import render
from djship.changes import Observed, diff
from djship.errors import DjshipError
from djship.plan import build_plans
from djship.topology import Host
from tests.unit.conftest import FAKE_TOOLS
from tests.unit.test_host_plans import specs

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
TOOLS = replace(FAKE_TOOLS, pgbouncer="/usr/sbin/pgbouncer")
PASSWORD = "0123456789abcdef" * 4
REAL_PORT = 27432 + int(os.environ.get("DJSHIP_TEST_OFFSET", "0"))
POOLED = {"pooler": "pgbouncer", "pool_size": 8}


@pytest.fixture
def pooled_plan(make_plan):
    return make_plan(running_as_root=True, tools=TOOLS, app={"servers": 2}, database=POOLED)


def _golden(golden_dir: Path, name: str, text: str) -> None:
    golden = golden_dir / name
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"{name} differs; regenerate with DJSHIP_UPDATE_GOLDEN=1"


def test_pgbouncer_ini_matches_the_golden_files(pooled_plan, make_config, golden_dir):
    _golden(golden_dir, "pgbouncer.ini", render.pgbouncer_ini(pooled_plan))
    plans = build_plans(make_config(database=POOLED), Path("/srv/example/board"), specs(TOOLS))
    _golden(golden_dir, "pgbouncer-app1.ini", render.pgbouncer_ini(plans["app1"]))


def test_pgbouncer_runs_as_its_own_user_on_a_socket_only_the_app_reaches(pooled_plan):
    program = next(p for p in render.programs(pooled_plan) if p.name == "pgbouncer")
    assert (program.user, program.stopsignal) == ("djship-pgbouncer", "INT")
    assert program.command == f"/usr/sbin/pgbouncer {pooled_plan.paths.state}/pgbouncer/pgbouncer.ini"
    names = [p.name for p in render.programs(pooled_plan)]
    assert names.index("postgres") < names.index("pgbouncer") < names.index("app1-gunicorn")
    assert "djship-pgbouncer" in pooled_plan.users_here
    access = pooled_plan.file_access(pooled_plan.paths.pooler_auth_file)
    assert (access.mode, access.owner) == (0o600, "djship-pgbouncer")
    socket_dir = next(d for d in pooled_plan.directories if d.path == pooled_plan.paths.pooler_socket_dir)
    assert (socket_dir.mode, socket_dir.owner, socket_dir.group) == (0o750, "djship-pgbouncer", "djship-app")
    ini = render.pgbouncer_ini(pooled_plan).splitlines()
    for line in ("listen_addr =", "pool_mode = transaction", "auth_type = scram-sha-256", "default_pool_size = 8",
                 "max_user_connections = 8", f"unix_socket_dir = {pooled_plan.paths.pooler_socket_dir}"):
        assert line in ini, line
    assert not any(line.startswith("server_tls") for line in ini)  # PostgreSQL on the same host


def test_across_hosts_pgbouncer_runs_on_each_app_host_and_verifies_postgresql(make_config):
    plans = build_plans(make_config(database=POOLED), Path("/srv/example/board"), specs(TOOLS))
    assert [name for name, plan in plans.items() if plan.pools] == ["app1", "app2"]
    assert "pgbouncer" not in {p.name for p in render.programs(plans["db1"])}
    ini = render.pgbouncer_ini(plans["app2"]).splitlines()
    assert "* = host=10.0.0.20 port=15432 application_name=djship-pgbouncer" in ini
    for line in ("server_tls_sslmode = verify-full", "server_tls_ca_file = /srv/app2/tls/ca.crt",
                 "server_tls_protocols = tlsv1.3"):
        assert line in ini, line
    settings = render.production_settings(plans["app1"], "r1", Path("/srv/app1/releases/r1"))
    assert '_DATABASE_HOST = "10.0.0.20"' in settings
    assert '"HOST": _DATABASE_HOST if _DIRECT else "/srv/app1/pgbouncer/socket",' in settings
    assert '"DISABLE_SERVER_SIDE_CURSORS": True,' in settings
    assert "DJSHIP_DATABASE_HOLD = 10" in settings
    # verify-full on the direct connections (migrate, the scheduler of [jobs]); PgBouncer's own link verifies too
    assert "if _DIRECT else {}," in settings


def test_migrate_and_the_jobs_scheduler_connect_directly(make_plan):
    plan = make_plan(tools=TOOLS, database=POOLED, jobs={"tick": {"command": "manage.py tick", "every": "1m"}})
    assert "DJSHIP_DATABASE_DIRECT=1" in render.jobs_program(plan).command
    unpooled = make_plan(jobs={"tick": {"command": "manage.py tick", "every": "1m"}})
    assert "DJSHIP_DATABASE_DIRECT" not in render.jobs_program(unpooled).command
    assert "_DIRECT" not in render.production_settings(unpooled, "r1", Path("/r1"))


def test_the_auth_file_quotes_the_name_and_password(pooled_plan):
    assert render.pgbouncer_auth_file(pooled_plan, 'a"b') == '"djship_golden" "a""b"\n'.replace(
        "djship_golden", pooled_plan.database.user)


def test_the_budget_counts_pool_size_per_app_host_whatever_the_number_of_app_servers(make_plan, make_config):
    # 8 servers x 3 workers = 24 + 10 > 20, but PgBouncer opens 8 + 10 at most.
    plan = make_plan(tools=TOOLS, app={"servers": 8}, database={**POOLED, "max_connections": 21})
    assert plan.connections_needed == 18
    with pytest.raises(DjshipError, match="connection budget: 1 app hosts x database.pool_size 8 \\+ 10 headroom = 18"):
        make_plan(tools=TOOLS, database={**POOLED, "max_connections": 20})
    with pytest.raises(DjshipError, match="lower app.servers/workers/threads"):
        make_plan(tools=TOOLS, app={"servers": 8}, database={"max_connections": 21})
    plans = build_plans(make_config(database={**POOLED, "max_connections": 29}), Path("/srv/example/board"),
                        specs(TOOLS))
    assert plans["app1"].connections_needed == 2 * 8 + 10


def test_a_missing_pgbouncer_is_named_with_its_install_command(make_plan):
    with pytest.raises(DjshipError, match="pgbouncer is not installed; install it with: sudo apt-get install -y "
                                          "pgbouncer, or remove database.pooler"):
        make_plan(database=POOLED)


def _observed(plan, statuses: dict[str, str]) -> Observed:
    files = render.system_files(plan)
    return Observed(True, statuses, {file.path: file.data for file in files})


def _host(plan) -> Host:
    return Host(plan.host, "127.0.0.1", None, plan, "python3", "wheels")


def test_up_pauses_pgbouncer_around_a_restart_and_reloads_it_for_its_own_changes(make_plan):
    running = make_plan(tools=TOOLS, database=POOLED)
    seen = _observed(running, {p.name: "RUNNING" for p in render.programs(running)})
    for changed, postgres, pooler in (
        (make_plan(tools=TOOLS, database={**POOLED, "max_connections": 120}), "restart", {}),
        (make_plan(tools=TOOLS, database={**POOLED, "pool_size": 9}), None, {running.host: "reload"}),
    ):
        changes = diff({changed.host: _host(changed)}, {changed.host: render.system_files(changed)},
                       {changed.host: seen})
        assert (changes.postgres, changes.pooler, changes.restart[changed.host]) == (postgres, pooler, ())
    restart = diff({running.host: _host(running)}, {running.host: render.system_files(
        make_plan(tools=TOOLS, database={**POOLED, "max_connections": 120}))}, {running.host: seen})
    assert "restart PostgreSQL (PgBouncer paused meanwhile: no failed request)" in restart.lines()
    stopped = _observed(running, {p.name: "RUNNING" for p in render.programs(running) if p.name != "pgbouncer"})
    starting = diff({running.host: _host(running)}, {running.host: render.system_files(running)},
                    {running.host: stopped})
    assert starting.pooler == {running.host: "start"} and f"{running.host}: start PgBouncer" in starting.lines()


def test_the_real_pgbouncer_runs_the_rendered_config_against_a_real_postgresql(make_plan, short_tmp, real_tools):
    """No check mode in PgBouncer 1.18: the rendered file is run, and a client logs in with scram and queries."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert Path(binary).exists(), "pgbouncer is not installed; sudo apt-get install -y pgbouncer"
    plan = make_plan(project_dir=short_tmp, tools=replace(real_tools, pgbouncer=binary),
                     database={**POOLED, "address": "127.0.0.1", "port": REAL_PORT})
    data = short_tmp / "data"
    password_file = short_tmp / "pw"
    password_file.write_text(PASSWORD + "\n")
    _give_to_nobody(short_tmp)
    subprocess.run([real_tools.pg("initdb"), "-D", str(data), "-U", plan.database.user, "--pwfile", str(password_file),
                    "--auth=scram-sha-256"], check=True, capture_output=True, **_as_nobody())
    postgres = subprocess.Popen([real_tools.pg("postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                                 "-c", f"port={REAL_PORT}", "-c", "unix_socket_directories="],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **_as_nobody())
    plan.paths.pooler_socket_dir.mkdir(parents=True)
    plan.paths.pooler_conf.write_text(render.pgbouncer_ini(plan))
    plan.paths.pooler_auth_file.write_text(render.pgbouncer_auth_file(plan, PASSWORD))
    _give_to_nobody(short_tmp)
    bouncer = subprocess.Popen([binary, str(plan.paths.pooler_conf)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, **_as_nobody())
    try:
        env = {**os.environ, "PGPASSWORD": PASSWORD, "PGCONNECT_TIMEOUT": "5"}
        query = [real_tools.pg("psql"), "-X", "-tA", "-h", str(plan.paths.pooler_socket_dir), "-p", "6432", "-U",
                 plan.database.user, "-d", "postgres", "-c", "SELECT current_user"]
        deadline = time.monotonic() + 30
        while (answer := subprocess.run(query, capture_output=True, text=True, env=env)).returncode != 0:
            assert time.monotonic() < deadline, answer.stderr
            time.sleep(0.2)
        assert answer.stdout.strip() == plan.database.user
        wrong = subprocess.run(query, capture_output=True, text=True, env={**env, "PGPASSWORD": "wrong"})
        assert "SASL authentication failed" in wrong.stderr  # scram, checked by PgBouncer from its auth_file
    finally:
        bouncer.terminate()
        output = bouncer.communicate(timeout=20)[0].decode()
        postgres.terminate()
        postgres.wait(timeout=30)
    assert PASSWORD not in output


def _as_nobody() -> dict:
    """PostgreSQL refuses to run as root; so does PgBouncer's own user switch need none: both run as nobody."""
    return {"user": "nobody"} if os.geteuid() == 0 else {}


def _give_to_nobody(directory: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "nobody", str(directory)], check=True)


def test_app_hosts_need_the_pgbouncer_package_only_with_the_pooler():
    from djship.hosts import probe_script
    assert "missing pgbouncer" in probe_script(("app",), frozenset({"pooled"}))
    assert "missing pgbouncer" not in probe_script(("app",))
    assert "missing pgbouncer" not in probe_script(("db",), frozenset({"pooled"}))
