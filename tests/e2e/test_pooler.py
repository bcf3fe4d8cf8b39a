"""database.pooler = "pgbouncer": PostgreSQL restarts that no request notices, written once and run on both
topologies: one machine (https://localhost:28443) and netns hosts (1 lb + 2 app + 1 db, PgBouncer on each app host,
its link to PostgreSQL over TLS).

Under 4 threads of GETs that each query the database: `kill -9` of the postmaster (the supervisor starts it again,
GETs wait instead of failing), then a `max_connections` change applied by `djship up` (PAUSE, restart, RESUME). Each
prints what it measured: requests, failures, the slowest request.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.config import with_values
from tests.e2e.conftest import EXAMPLE, Ports, RequestLoop, alive, run_djship, running_site, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_doctor import doctor
from tests.e2e.test_backup import Target
from tests.e2e.test_remote_system import FleetLoop, write_config

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "app1", "app2", "db1"]
ONE_MACHINE, ON_HOSTS = "one machine", "netns hosts"
POOLED = {"database.pooler": "pgbouncer", "database.pool_size": 8}
# What the app's own connection says about itself, through `djship manage` (which connects like the app servers).
WHO_AM_I = (
    "import json; from django.db import connection; cursor = connection.cursor(); "
    "cursor.execute(\"SELECT application_name, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) "
    "FROM pg_stat_activity WHERE pid = pg_backend_pid()\"); name, ssl = cursor.fetchone(); "
    "print(json.dumps({'application_name': name, 'ssl': ssl, 'host': connection.settings_dict['HOST']}))"
)


@dataclass(frozen=True)
class PooledPorts(Ports):
    def settings(self) -> dict[str, object]:
        return {**super().settings(), **POOLED}


POOLER_PORTS = PooledPorts.of(https=28443, http=28080, database=13432, app_prefix="127.0.121",
                              database_address="127.0.122.1")


class TimedLoop:
    """A request loop (one machine's or the fleet's) that also records the slowest request."""

    def __init__(self, target: Target):
        self.slowest = 0.0
        base = RequestLoop if target.site else FleetLoop
        outer = self

        class Loop(base):  # type: ignore[valid-type, misc]
            def _get(self, session):
                started = time.monotonic()
                outcome = super()._get(session)
                outer.slowest = max(outer.slowest, time.monotonic() - started)
                return outcome

        self.loop = Loop(target.site or _FleetView(target))

    def __enter__(self) -> RequestLoop:
        return self.loop.__enter__()

    def __exit__(self, *exc) -> None:
        self.loop.__exit__(*exc)


@dataclass
class _FleetView:
    """What FleetLoop needs of a fleet: a GET through the balancer host."""

    target: Target

    def session(self) -> None:
        return None

    @property
    def url(self) -> str:
        return self.target.url

    def get(self):
        return self.target.get()


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    if request.param == ONE_MACHINE:
        with running_site(POOLER_PORTS) as site:
            made = Target(site.project, {"local": site.project / ".djship"}, site)
            made.status()
            yield made
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1", "app2"])
        config = project / "djship.toml"
        config.write_text(with_values(config.read_text(), POOLED))
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        try:
            made.djship("up")
            made.status()
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _db_root(target: Target) -> Path:
    return target.roots["local" if target.site else "db1"]


def _postmaster(target: Target) -> int:
    return int((_db_root(target) / "postgres" / "data" / "postmaster.pid").read_text().split()[0])


def _report(what: str, loop: RequestLoop, slowest: float) -> str:
    line = (f"{what}: {loop.served + len(loop.failures):,} requests, {len(loop.failures)} failed, "
            f"slowest {slowest:.2f} s")
    print(f"\n{line}")
    return line


def test_the_app_reaches_postgresql_through_pgbouncer_on_its_own_host(target: Target):
    pgbouncers = [c for c in target.status()["components"] if c["name"] == "pgbouncer"]
    assert [(c["host"], c["state"], c["health"]) for c in pgbouncers] == (
        [("local", "RUNNING", "accepting")] if target.site else
        [("app1", "RUNNING", "accepting"), ("app2", "RUNNING", "accepting")])
    seen = json.loads(target.djship("manage", "--", "shell", "-c", WHO_AM_I).stdout.strip().splitlines()[-1])
    app_root = target.roots["local" if target.site else "app1"]
    assert seen["host"] == str(app_root / "pgbouncer" / "socket")
    # The server connection is PgBouncer's; across hosts it is TLS (PgBouncer verifies PostgreSQL's certificate).
    assert seen["application_name"] == "djship-pgbouncer"
    assert seen["ssl"] is (not target.site)
    for root in ([app_root] if target.site else [target.roots["app1"], target.roots["app2"]]):
        auth = root / "pgbouncer" / "userlist.txt"
        stat = auth.stat()
        assert (oct(stat.st_mode & 0o777), _user(stat.st_uid)) == ("0o600", "djship-pgbouncer")
    assert "pgbouncer" in target.djship("logs", "pgbouncer", "-n", "5").stdout
    _, checks = doctor(target)
    assert checks["components"]["status"] == "pass", checks["components"]
    hosts = 1 if target.site else 2
    assert checks["connections"]["status"] == "pass", checks["connections"]
    assert f"PgBouncer on {hosts} app hosts x pool_size 8 + 10 headroom = {hosts * 8 + 10}" in \
        checks["connections"]["cause"]


def _user(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def test_kill_9_of_postgresql_under_load_fails_no_request(target: Target):
    timed = TimedLoop(target)
    with timed as load:
        load.wait_for(load.served + 200)
        before = _postmaster(target)
        os.kill(before, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not _restarted(target, before):
            assert time.monotonic() < deadline, "the supervisor did not start PostgreSQL again"
            time.sleep(0.1)
        load.wait_for(load.served + 300)
    _report(f"kill -9 of PostgreSQL ({target.site and 'one machine' or 'netns hosts'})", load, timed.slowest)
    assert load.failures == []


def _restarted(target: Target, before: int) -> bool:
    try:
        now = _postmaster(target)
    except (OSError, ValueError, IndexError):
        return False
    return now != before and alive(now)


def test_a_max_connections_change_applied_by_up_restarts_postgresql_with_no_failed_request(target: Target):
    config = target.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"database.max_connections": 120}))
    planned = target.djship("up", "--dry-run").stdout
    assert "restart PostgreSQL (PgBouncer paused meanwhile: no failed request)" in planned, planned
    before = _postmaster(target)
    timed = TimedLoop(target)
    with timed as load:
        load.wait_for(load.served + 200)
        said = target.djship("up").stdout
        load.wait_for(load.served + 200)
    _report(f"max_connections changed, `djship up` ({target.site and 'one machine' or 'netns hosts'})", load,
            timed.slowest)
    assert "PAUSE, restart, RESUME" in said, said
    assert _postmaster(target) != before
    assert load.failures == []
