"""[jobs]: validated with their key, planned as slots, run by one scheduler program per app host (parsed by
supervisor itself), restarted like the processes, and their recorded runs judged by status and the doctor."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from djship import render
from djship.changes import Observed, diff
from djship.components.jobs import reports
from djship.config import parse_config
from djship.doctor.checks import FAIL, PASS, jobs as jobs_check
from djship.doctor.facts import Facts
from djship.errors import DjshipError
from djship.plan import JOBS_PROGRAM, HostSpec, Job, build_plans
from tests.unit.test_host_plans import ADDRESSES
from tests.unit.test_media import parsed_by_supervisor
from tests.unit.test_processes import FakeHost

PROJECT = '[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.application"\n'
ROLES = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "db1": ("db",)}
JOBS = {"clearsessions": {"command": "manage.py clearsessions", "at": "03:00"},
        "tick": {"command": "manage.py tick", "every": "1m"}}


def test_a_job_runs_daily_at_a_utc_time_or_every_interval():
    config = parse_config(PROJECT + '[jobs]\nclearsessions = { command = "manage.py clearsessions", at = "03:00" }\n'
                          'tick = { command = "manage.py tick", every = "90s" }\n')

    assert (config.jobs["clearsessions"].at, config.jobs["tick"].every) == ("03:00", "90s")


@pytest.mark.parametrize("table, message", [
    ('tick = { every = "1m" }', "jobs.tick.command: required key is missing"),
    ('tick = { command = " ", every = "1m" }', "jobs.tick.command: is empty; write the command to run"),
    ('tick = { command = "a && b", every = "1m" }', "jobs.tick.command: uses '&&', but a job runs without a shell"),
    ('tick = { command = "a" }', "jobs.tick: needs exactly one of at (a daily UTC time"),
    ('tick = { command = "a", at = "03:00", every = "1m" }', "jobs.tick: needs exactly one of at"),
    ('tick = { command = "a", at = "3:00" }', "jobs.tick.at: '3:00' is not a UTC time of day; write \"HH:MM\""),
    ('tick = { command = "a", at = "24:00" }', "jobs.tick.at: '24:00' is not a UTC time of day"),
    ('tick = { command = "a", every = "5" }', "jobs.tick.every: '5' is not an interval; write a number and s, m or h"),
    ('tick = { command = "a", every = "1d" }', "jobs.tick.every: '1d' is not an interval"),
    ('tick = { command = "a", every = "30s" }', "jobs.tick.every: '30s' is outside 1m to 24h"),
    ('tick = { command = "a", every = "25h" }', "jobs.tick.every: '25h' is outside 1m to 24h"),
    ('tick = { command = "a", every = "1m", timeout = 3 }', "jobs.tick.timeout: unknown key"),
    ('Tick-1 = { command = "a", every = "1m" }', "jobs: 'Tick-1' is not a job name"),
])
def test_a_bad_job_is_one_line_naming_its_key(table, message):
    with pytest.raises(DjshipError) as error:
        parse_config(PROJECT + "[jobs]\n" + table + "\n")
    assert str(error.value).startswith(f"djship.toml: {message}"), error.value
    assert "\n" not in str(error.value)


def test_jobs_is_the_name_of_djships_scheduler_not_of_a_process():
    with pytest.raises(DjshipError, match="processes: 'jobs' is the name of one of djship's own programs"):
        parse_config(PROJECT + '[processes]\njobs = { command = "a" }\n')


def test_a_slot_is_the_same_moment_whatever_second_a_host_sees_it():
    every_minute, daily = Job("tick", "manage.py tick", 60), Job("nightly", "manage.py clearsessions", 86400, 3 * 3600)
    midnight = 1_764_547_200  # 2025-12-01T00:00:00Z

    assert {every_minute.slot(midnight + second) for second in range(60)} == {midnight}
    assert every_minute.slot(midnight + 60) == midnight + 60
    assert daily.slot(midnight + 2 * 3600) == midnight - 21 * 3600  # yesterday's 03:00
    assert daily.slot(midnight + 3 * 3600 + 5) == midnight + 3 * 3600
    assert (every_minute.window, daily.window) == (60, 3600)
    assert (every_minute.schedule, daily.schedule) == ("every 1m", "daily at 03:00 UTC")
    assert Job("half", "x", 5400).schedule == "every 90m"


def _plans(make_config, tools, jobs=None, users=None):
    config = make_config(hosts={name: {"address": ADDRESSES[name]} for name in ROLES},
                         servers={"lb": ["lb1"], "app": ["app1", "app2"], "db": "db1"}, jobs=jobs or JOBS,
                         processes={"worker": {"command": "celery -A board worker"}}, users=users or {})
    specs = [HostSpec(name, ADDRESSES[name], ROLES[name], Path("/srv") / name, tools, True) for name in ROLES]
    return build_plans(config, Path("/srv/example/board"), specs)


def test_a_scheduler_runs_on_every_app_host_and_nowhere_else(make_config, fake_tools):
    plans = _plans(make_config, fake_tools)

    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs["app1"] == ["app1-gunicorn", "app1-nginx", "worker-1", JOBS_PROGRAM]
    assert programs["lb1"] == ["haproxy"] and programs["db1"] == ["postgres"]
    assert plans["app2"].programs_beside_web == ("worker-1", JOBS_PROGRAM)
    assert render.app_programs(plans["app2"]) == ("app2-gunicorn", "worker-1", JOBS_PROGRAM)
    assert all(file.path != plans["db1"].paths.jobs_file for file in render.system_files(plans["db1"]))


def test_the_scheduler_reads_its_host_and_jobs_from_a_file_that_restarts_it(make_config, fake_tools):
    plan = _plans(make_config, fake_tools)["app2"]
    jobs_file = next(file for file in render.system_files(plan) if file.path == plan.paths.jobs_file)

    assert jobs_file.programs == (JOBS_PROGRAM,)
    assert json.loads(jobs_file.text) == {"host": "app2", "jobs": [
        {"name": "clearsessions", "argv": ["manage.py", "clearsessions"], "every": 86400, "offset": 10800,
         "window": 3600},
        {"name": "tick", "argv": ["manage.py", "tick"], "every": 60, "offset": 0, "window": 60},
    ]}


def test_the_supervisor_parses_the_scheduler_as_a_program_of_the_release(make_config, fake_tools, tmp_path, capsys,
                                                                           system_users):
    text = render.supervisord_conf(_plans(make_config, fake_tools, users=system_users)["app1"])
    scheduler = parsed_by_supervisor(text.replace("/srv/app1/", f"{tmp_path}/"), tmp_path, capsys)[JOBS_PROGRAM]

    assert (scheduler.stopsignal, scheduler.stopwaitsecs, scheduler.stopasgroup) == (15, 30, True)
    assert scheduler.directory == f"{tmp_path}/current/app"
    assert shlex.split(scheduler.command)[-4:] == ["python", "-m", "djship_production.jobs", f"{tmp_path}/jobs.json"]


def test_up_starts_a_stopped_scheduler_and_restarts_one_whose_jobs_changed(make_config, fake_tools):
    plans = _plans(make_config, fake_tools)
    hosts = {name: FakeHost(plan) for name, plan in plans.items()}
    desired = {name: render.system_files(plan) for name, plan in plans.items()}
    running = {name: {program.name: "RUNNING" for program in render.programs(plan)} for name, plan in plans.items()}
    running["app2"][JOBS_PROGRAM] = "FATAL"
    contents = {name: {file.path: file.data for file in desired[name]} for name in plans}
    contents["app1"][plans["app1"].paths.jobs_file] = b'{"host": "app1", "jobs": []}\n'
    observed = {name: Observed(supervisor=True, statuses=running[name], contents=contents[name],
                               releases=("r1",) if plans[name].holds("app") else (),
                               current=Path("/srv/releases/r1") if plans[name].holds("app") else None)
                for name in plans}

    changes = diff(hosts, desired, observed)

    assert changes.start["app2"] == (JOBS_PROGRAM,)
    assert changes.restart["app1"] == (JOBS_PROGRAM,)


NOW = 1_764_590_430.5  # 2025-12-01T12:00:30.5Z
TICK = Job("tick", "manage.py tick", 60)


def _recorded(runs=(), since=None, claimed=None, finished=None) -> str:
    """RUNS' answer; finished: the latest runs that ended, by default those of runs."""
    ended = [run for run in runs if run["finished"] is not None] if finished is None else finished
    return json.dumps({"now": NOW, "since": since or {"tick": NOW - 3600}, "claimed": claimed or {},
                       "runs": list(runs), "finished": ended})


def test_the_last_run_of_a_job_with_its_exit_code_and_duration():
    slot = TICK.slot(NOW)
    run = {"job": "tick", "slot": slot, "host": "app2", "started": slot + 0.2, "finished": slot + 1.45, "exit_code": 3}

    [report] = reports((TICK,), _recorded([run], claimed={"tick": slot}))

    assert report.last_run.slot == "2025-12-01T12:00:00Z" and report.last_run.host == "app2"
    assert (report.last_run.duration, report.last_run.exit_code, report.failing, report.missed) == (1.2, 3, True, None)
    assert report.to_json()["schedule"] == "every 1m"


def test_a_run_still_going_is_not_failing():
    slot = TICK.slot(NOW)
    run = {"job": "tick", "slot": slot, "host": "app1", "started": slot + 0.2, "finished": None, "exit_code": None}

    [report] = reports((TICK,), _recorded([run], claimed={"tick": slot}))

    assert (report.last_run.duration, report.failing) == (None, False)


def test_a_job_whose_last_finished_run_failed_is_failing_while_its_next_run_goes(make_plan):
    slot = TICK.slot(NOW)
    failed = {"job": "tick", "slot": slot - 60, "host": "app2", "started": slot - 60, "finished": slot - 59, "exit_code": 1}
    running = {"job": "tick", "slot": slot, "host": "app1", "started": slot + 0.2, "finished": None, "exit_code": None}

    [report] = reports((TICK,), _recorded([running], claimed={"tick": slot}, finished=[failed]))
    doctor = jobs_check(make_plan(jobs=JOBS), Facts(database_ready=True, jobs=[report]))

    assert report.last_run.exit_code is None and report.failing
    assert doctor.status == FAIL and "tick exited 1 in its run of 2025-12-01T11:59:00Z on app2" in doctor.cause


def test_a_slot_whose_window_closed_with_no_host_claiming_it_is_missed():
    last_minute = TICK.slot(NOW) - 60
    before = TICK.slot(NOW) - 120

    [missed] = reports((TICK,), _recorded(claimed={"tick": before}))
    [claimed] = reports((TICK,), _recorded(claimed={"tick": last_minute}))
    [new] = reports((TICK,), _recorded(since={"tick": NOW - 40}))  # first seen this minute: nothing expected yet

    assert missed.missed == "2025-12-01T11:59:00Z"
    assert claimed.missed is None and new.missed is None and new.last_run is None


def test_the_doctor_names_a_failing_job_and_one_that_did_not_run(make_plan):
    plan = make_plan(jobs=JOBS)
    slot = TICK.slot(NOW)
    failed = {"job": "tick", "slot": slot, "host": "app2", "started": slot, "finished": slot + 1, "exit_code": 1}
    healthy = {**failed, "exit_code": 0}

    def judged(output: str):
        return jobs_check(plan, Facts(database_ready=True, jobs=reports(plan.jobs, output)))

    assert judged(_recorded([failed], claimed={"tick": slot})).status == FAIL
    assert "tick exited 1 in its run of 2025-12-01T12:00:00Z on app2" in judged(
        _recorded([failed], claimed={"tick": slot})).cause
    stalled = judged(_recorded([healthy], claimed={"tick": slot - 120}))
    assert stalled.status == FAIL and "tick did not run at 2025-12-01T11:59:00Z (every 1m) on any host" in stalled.cause
    assert judged(_recorded([healthy], claimed={"tick": slot})).status == PASS
    assert jobs_check(make_plan(), Facts()).status == PASS
    unreadable = jobs_check(plan, Facts(database_ready=True, jobs_error="psql: connection refused"))
    assert unreadable.status == FAIL and "connection refused" in unreadable.cause
