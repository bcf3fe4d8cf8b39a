"""Scheduled jobs ([jobs]), written once and run on both topologies: one machine (one app host, so one scheduler) and
netns hosts (1 lb + 3 app + 1 db: a scheduler on each of the three app hosts, racing for every slot).

examples/shop's `manage.py tick` writes one row per run naming the host and the slot (/ticks/json/ lists them), so
"exactly once per minute" is counted in rows the job itself wrote. Three jobs run every minute: `tick`; `slow`, which
takes 100 s (longer than its interval: never two at once, a slot meanwhile is skipped); `fail`, which exits 1 (status
and the doctor name it). The 3-minute window is the module's whole life: the deploy and the status and doctor checks
run inside it, and the count comes last; on hosts, one app host dies before it and the others run every slot after.
"""

from __future__ import annotations

import calendar
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from djship.components.probe import Response
from djship.config import with_values
from tests.e2e.conftest import REPO, Ports, Site, run_djship, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import ON_HOSTS, ONE_MACHINE, Target
from tests.e2e.test_remote_system import FleetLoop, write_config

pytestmark = pytest.mark.e2e

SHOP = REPO / "examples" / "shop"
JOBS_PORTS = Ports.of(https=29443, http=29080, database=14432, app_prefix="127.0.111", database_address="127.0.112.1")
HOSTS = ["lb1", "app1", "app2", "app3", "db1"]
APP_HOSTS = ["app1", "app2", "app3"]
# The app host killed in the last test (`djship manage` runs on the first one).
DYING = "app3"
JOBS = {
    "jobs.tick": {"command": "manage.py tick", "every": "1m"},
    "jobs.slow": {"command": "manage.py tick --sleep 100", "every": "1m"},
    "jobs.fail": {"command": "manage.py tick --fail", "every": "1m"},
}
MINUTES = 3
# What djship_job_runs holds, as JSON, read in the live release with the production settings.
JOB_RUNS = (
    "import json; from django.db import connection; c = connection.cursor(); "
    "c.execute(\"SELECT job, extract(epoch FROM slot)::float8, host, extract(epoch FROM started)::float8, "
    "extract(epoch FROM finished)::float8, exit_code, skipped FROM djship_job_runs ORDER BY slot\"); "
    "print(json.dumps([dict(zip(['job', 'slot', 'host', 'started', 'finished', 'exit_code', 'skipped'], row)) "
    "for row in c.fetchall()]))"
)


def make_shop(directory: Path, ports: Ports) -> Path:
    """A fresh copy of examples/shop with djship.toml written by `djship init`, the tests' ports and the jobs."""
    project = directory / "shop"
    shutil.copytree(SHOP, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
    run_djship(project, "init")
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {**ports.settings(), **JOBS}))
    return project


def _shop_on_hosts(directory: Path, hosts) -> Path:
    project = directory / "shop"
    shutil.copytree(SHOP, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
    write_config(project, hosts, APP_HOSTS)
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text().replace('"board.', '"shop.'), JOBS))
    return project


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    if request.param == ONE_MACHINE:
        with searchable_directory() as directory:
            site = Site(make_shop(directory, JOBS_PORTS), JOBS_PORTS)
            try:
                site.up()
                made = Target(site.project, {"local": site.project / ".djship"}, site)
                made.status()
                yield made
            finally:
                site.stop_everything()
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = _shop_on_hosts(directory, hosts)
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        made.netns = hosts  # type: ignore[attr-defined]
        try:
            made.djship("up")
            made.status()
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


class ShopLoop(FleetLoop):
    """The request loop through the balancer, on a page of the shop (the board's /api/posts/ is not there)."""

    def _get(self, session) -> tuple[str | None, str | None]:
        answer = self.fleet.get("/config/")
        if isinstance(answer, str):
            return answer, None
        if answer.status != 200:
            return f"HTTP {answer.status}", None
        return None, answer.header("X-Djship-Release") or "?"


def _schedulers(target: Target) -> dict[str, dict]:
    return {c["host"]: c for c in target.status()["components"] if c["role"] == "jobs"}


def _jobs(target: Target) -> dict[str, dict]:
    return {job["name"]: job for job in json.loads(target.djship("status", "--json").stdout)["jobs"]}


def _ticks(target: Target) -> list[dict]:
    answer = target.get("/ticks/json/")
    assert isinstance(answer, Response) and answer.status == 200, answer
    return json.loads(answer.body)["ticks"]


def _job_runs(target: Target) -> list[dict]:
    return json.loads(target.djship("manage", "--", "shell", "-c", JOB_RUNS).stdout.strip().splitlines()[-1])


def _between_runs(target: Target) -> bool:
    """Whether this minute's tick and fail have written their rows and the next minute is not about to start: a host
    killed then holds no claim of theirs (a slot whose claimant dies while running it is lost with it)."""
    now = time.time()
    if now % 60 > 50:
        return False
    slot = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(now))
    return {"tick", "fail"} <= {tick["job"] for tick in _ticks(target) if tick["slot"] == slot}


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(3)
    return found


def test_a_scheduler_runs_on_every_app_host(target):
    schedulers = _schedulers(target)
    app_hosts = {c["host"] for c in target.status()["components"] if c["role"] == "app"}
    assert set(schedulers) == app_hosts and len(app_hosts) in (1, 3), schedulers
    assert all(c["state"] == "RUNNING" and c["pid"] for c in schedulers.values()), schedulers


def test_a_deploy_restarts_the_schedulers_on_the_new_release_with_no_failed_request(target):
    before = {host: c["pid"] for host, c in _schedulers(target).items()}
    views = target.project / "ticks" / "views.py"
    original = views.read_text()
    views.write_text(original + "\n# a new release for the schedulers\n")
    try:
        with ShopLoop(target) as load:  # type: ignore[arg-type]
            target.djship("deploy")
            load.wait_for(load.served + 30)
    finally:
        views.write_text(original)
    assert load.failures == [], f"{len(load.failures)} of {load.served} requests failed: {load.failures[:5]}"

    release = target.status()["release"]
    after = _schedulers(target)
    for host, scheduler in after.items():
        assert scheduler["state"] == "RUNNING" and scheduler["pid"] != before[host], (host, scheduler)
        # The scheduler runs in the new release (its working directory is the release's app directory).
        assert Path(f"/proc/{scheduler['pid']}/cwd").resolve().parent.name == release, host


def test_a_failing_job_is_named_by_status_and_the_doctor(target):
    failing = _wait_for(lambda: (job := _jobs(target)["fail"])["last_run"] and job["last_run"]["exit_code"] == 1
                        and job, 150, "a run of the failing job")
    assert failing["failing"] and failing["schedule"] == "every 1m" and failing["command"] == "manage.py tick --fail"
    assert failing["last_run"]["host"] in {"local", *APP_HOSTS} and failing["last_run"]["duration"] is not None

    shown = target.djship("status").stdout
    assert "fail" in shown and "manage.py tick --fail" in shown
    logs = target.djship("logs", "jobs", "-n", "300").stdout
    assert "failing on purpose (--fail)" in logs and "exit 1 after" in logs, logs[-2000:]
    doctor = run_djship(target.project, "doctor", "--json", check=False, timeout=600)
    check = next(check for check in json.loads(doctor.stdout)["checks"] if check["id"] == "jobs")
    assert check["status"] == "fail" and "fail exited 1" in check["cause"], check
    assert doctor.returncode == 1


def test_over_three_minutes_each_slot_ran_exactly_once_and_an_overrun_was_not_started_twice(target):
    ticks = _ticks(target)
    first = min(tick["slot"] for tick in ticks if tick["job"] == "tick")
    start = calendar.timegm(time.strptime(first, "%Y-%m-%dT%H:%MZ"))
    until = start + MINUTES * 60 + 20  # every slot from the first through MINUTES more, each finished

    # While a run of slow goes, its next slot is skipped, on whichever host claims it (read before a host dies:
    # `djship manage` needs every host).
    runs = _wait_for(lambda: (slow := [run for run in _job_runs(target) if run["job"] == "slow"])
                     and any(run["skipped"] for run in slow) and slow, 240, "a skipped slot of slow")
    ran = sorted((run["started"], run["finished"] or time.time()) for run in runs if run["started"] is not None)
    assert ran, runs
    assert all(earlier[1] <= later[0] for earlier, later in zip(ran, ran[1:])), f"two runs of slow overlapped: {ran}"
    assert {run["host"] for run in runs} <= {"local", *APP_HOSTS}, runs

    died = None
    if hasattr(target, "netns"):  # a host that dies (every process of it, its scheduler and any job it runs)
        _wait_for(lambda: _between_runs(target), 180, "a moment when this minute's tick and fail have run")
        target.netns[DYING].kill()
        died = time.time()
        until = max(until, died + 80)  # a whole slot at least without it
    _wait_for(lambda: time.time() > until, until - time.time() + 60, "three minutes of slots")

    ticks = _ticks(target)
    slots = [time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(start + 60 * minute)) for minute in range(MINUTES + 1)]
    for job in ("tick", "fail"):
        rows = Counter(tick["slot"] for tick in ticks if tick["job"] == job)
        assert all(rows[slot] == 1 for slot in slots) and set(rows.values()) == {1}, (job, sorted(rows.items()))
    hosts = {tick["host"] for tick in ticks}
    assert hosts <= {"local", *APP_HOSTS}, hosts
    if died is not None:
        after = [tick for tick in ticks if calendar.timegm(time.strptime(tick["slot"], "%Y-%m-%dT%H:%MZ")) > died]
        slots_after = Counter(tick["slot"] for tick in after if tick["job"] == "tick")
        assert len(slots_after) >= 1 and set(slots_after.values()) == {1}, sorted(slots_after.items())
        assert DYING not in {tick["host"] for tick in after}, after

