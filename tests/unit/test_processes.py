"""[processes]: validated with their key, planned on the app hosts only, rendered as supervised programs (golden file,
supervisor's own parser), run by the real /bin/sh with the release's settings and the app's environment, and
started or restarted by `up` like the app servers' programs."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from djship import render
from djship.changes import Observed, diff
from djship.config import parse_config
from djship.errors import DjshipError
from djship.plan import HostSpec, build_plans
from tests.unit.test_host_plans import ADDRESSES
from tests.unit.test_media import parsed_by_supervisor

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
PROJECT = '[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.application"\n'
WORKER = {"command": "celery -A board worker -l info --concurrency 50%", "count": 2, "stop_timeout": 30}
ROLES = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "db1": ("db",)}


def test_a_process_type_takes_a_command_a_count_and_a_stop_timeout():
    config = parse_config(PROJECT + '[processes]\nworker = { command = "celery -A board worker", count = 2 }\n'
                          'beat = { command = "celery -A board beat", stop_timeout = 5 }\n')

    assert (config.processes["worker"].count, config.processes["worker"].stop_timeout) == (2, 10)
    assert (config.processes["beat"].count, config.processes["beat"].stop_timeout) == (1, 5)


@pytest.mark.parametrize("table, message", [
    ('worker = { count = 2 }', "processes.worker.command: required key is missing"),
    ('worker = { command = " " }', "processes.worker.command: is empty; write the command to run"),
    ('worker = { command = "a ; b" }', "processes.worker.command: holds a space followed by ; or #"),
    ('worker = { command = "a\\nb" }', "processes.worker.command: contains the control character '\\n'"),
    ('worker = { command = "a && b" }', "processes.worker.command: uses '&&', but a process runs without a shell"),
    ('worker = { command = "a --n $N" }', "processes.worker.command: uses '$N', but a process runs without a shell"),
    ('worker = { command = "a \'b" }', "processes.worker.command: cannot be split into words (No closing quotation)"),
    ('worker = { command = "a", count = 0 }', "processes.worker.count: Input should be greater than or equal to 1"),
    ('worker = { command = "a", stop_timeout = 0 }', "processes.worker.stop_timeout: Input should be greater than"),
    ('worker = { command = "a", timeout = 3 }', "processes.worker.timeout: unknown key"),
    ('Worker_1 = { command = "a" }', "processes: 'Worker_1' is not a process name"),
    ('postgres = { command = "a" }', "processes: 'postgres' is the name of one of djship's own programs"),
    ('app2 = { command = "a" }', "processes: 'app2' is the name of one of djship's own programs"),
])
def test_a_bad_process_is_one_line_naming_its_key(table, message):
    with pytest.raises(DjshipError) as error:
        parse_config(PROJECT + "[processes]\n" + table + "\n")
    assert str(error.value).startswith(f"djship.toml: {message}"), error.value
    assert "\n" not in str(error.value)


def _plans(make_config, tools, processes=None, users=None):
    config = make_config(hosts={name: {"address": ADDRESSES[name]} for name in ROLES},
                         servers={"lb": ["lb1"], "app": ["app1", "app2"], "db": "db1"},
                         processes=processes or {"worker": WORKER}, users=users or {})
    specs = [HostSpec(name, ADDRESSES[name], ROLES[name], Path("/srv") / name, tools, True) for name in ROLES]
    return build_plans(config, Path("/srv/example/board"), specs)


def test_processes_run_on_every_app_host_and_nowhere_else(make_config, fake_tools):
    plans = _plans(make_config, fake_tools)

    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs == {"lb1": ["haproxy"], "app1": ["app1-gunicorn", "app1-nginx", "worker-1", "worker-2"],
                        "app2": ["app2-gunicorn", "app2-nginx", "worker-1", "worker-2"], "db1": ["postgres"]}
    assert render.app_programs(plans["app1"]) == ("app1-gunicorn", "worker-1", "worker-2")


def test_with_worker_hosts_the_processes_run_there_only_beside_the_apps_code_without_a_web(make_config, fake_tools):
    roles = {**ROLES, "db1": ("db", "media"), "wk1": ("worker",)}
    addresses = {**ADDRESSES, "wk1": "10.0.0.31"}
    config = make_config(hosts={name: {"address": addresses[name]} for name in roles},
                         servers={"lb": ["lb1"], "app": ["app1", "app2"], "db": "db1", "worker": ["wk1"]},
                         processes={"worker": WORKER})
    specs = [HostSpec(name, addresses[name], roles[name], Path("/srv") / name, fake_tools, True) for name in roles]
    plans = build_plans(config, Path("/srv/example/board"), specs)

    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs == {"lb1": ["haproxy"], "app1": ["media-mount", "app1-gunicorn", "app1-nginx"],
                        "app2": ["media-mount", "app2-gunicorn", "app2-nginx"], "db1": ["postgres"],
                        "wk1": ["media-mount", "worker-1", "worker-2"]}
    worker = plans["wk1"]
    assert worker.runs_code and not worker.servers_here and worker.users_here == ("djship-app",)
    assert render.app_programs(worker) == ("worker-1", "worker-2")
    assert worker.paths.env_file in {file.path for file in render.system_files(worker)}
    # It reaches PostgreSQL (over TLS: another host) and mounts the uploads like an app host.
    assert "10.0.0.31/32" in render.pg_hba_conf(plans["db1"]) and plans["db1"].database.tls
    assert plans["db1"].media.clients == ("10.0.0.11", "10.0.0.12", "10.0.0.31")


def test_a_process_named_like_a_host_is_refused(make_config, fake_tools):
    with pytest.raises(DjshipError, match=r"^djship.toml: processes.db1: 'db1' is the name of an app server or a host"):
        _plans(make_config, fake_tools, {"db1": {"command": "x"}})


def test_the_supervisor_parses_the_processes_with_their_graceful_stop(make_config, fake_tools, golden_dir, tmp_path,
                                                                     capsys, system_users):
    text = render.supervisord_conf(_plans(make_config, fake_tools)["app1"])
    golden = golden_dir / "supervisord-processes.conf"
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), "regenerate with DJSHIP_UPDATE_GOLDEN=1 and review the diff"
    parsed = render.supervisord_conf(_plans(make_config, fake_tools, users=system_users)["app1"])
    worker = parsed_by_supervisor(parsed.replace("/srv/app1/", f"{tmp_path}/"), tmp_path, capsys)["worker-2"]
    # SIGTERM to the command alone (a prefork pool finishes its tasks), SIGKILL to the group at stop_timeout.
    assert (worker.stopsignal, worker.stopwaitsecs, worker.stopasgroup, worker.killasgroup) == (15, 30, False, True)
    assert worker.directory == f"{tmp_path}/current/app"
    assert shlex.split(worker.command)[-8:] == shlex.split(WORKER["command"])


def test_a_process_runs_in_the_release_with_its_settings_and_the_app_environment(make_plan, tmp_path):
    plan = make_plan(state_dir=str(tmp_path / "state"), processes={"report": {"command": "env"}})
    release = tmp_path / "state/releases/r1"
    (release / "app").mkdir(parents=True)
    (release / "venv/bin").mkdir(parents=True)
    plan.paths.current.symlink_to(release)
    plan.paths.secrets.mkdir(parents=True)
    plan.paths.env_file.write_text(render.env_file((("GREETING", "it's here"),), render.ENV_FILE_ORIGIN))
    plan.paths.env_secrets.write_text(render.env_file((("API_KEY", "s3cret $x"),), render.ENV_SECRETS_ORIGIN))
    program = next(program for program in render.programs(plan) if program.name == "report-1")

    output = subprocess.run(shlex.split(program.command), cwd=program.directory, env={"SUPERVISOR_ENABLED": "1"},
                            capture_output=True, text=True, check=True).stdout

    environment = dict(line.split("=", 1) for line in output.splitlines())
    current = plan.paths.current
    assert environment == {
        "SUPERVISOR_ENABLED": "1", "GREETING": "it's here", "API_KEY": "s3cret $x",
        "DJANGO_SETTINGS_MODULE": "djship_production.settings", "PYTHONPATH": f"{current}/app:{current}",
        "PATH": f"{current}/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


class FakeHost:
    def __init__(self, plan):
        self.plan = plan

    def holds(self, role: str) -> bool:
        return self.plan.holds(role)


def test_up_starts_a_stopped_process_and_restarts_one_whose_environment_changed(make_config, fake_tools):
    plans = _plans(make_config, fake_tools)
    hosts = {name: FakeHost(plan) for name, plan in plans.items()}
    desired = {name: render.system_files(plan) for name, plan in plans.items()}
    running = {name: {program.name: "RUNNING" for program in render.programs(plan)} for name, plan in plans.items()}
    running["app2"]["worker-2"] = "FATAL"
    contents = {name: {file.path: file.data for file in desired[name]} for name in plans}
    contents["app1"][plans["app1"].paths.env_file] = b"# an older [env]\n"
    observed = {name: Observed(supervisor=True, statuses=running[name], contents=contents[name],
                               releases=("r1",) if plans[name].holds("app") else (),
                               current=Path("/srv/releases/r1") if plans[name].holds("app") else None)
                for name in plans}

    changes = diff(hosts, desired, observed)

    assert changes.start["app2"] == ("worker-2",)
    assert changes.restart["app1"] == ("app1-gunicorn", "worker-1", "worker-2")
    assert "app2: start worker-2" in changes.lines()
    assert "app1: restart worker-1 (configuration changed)" in changes.lines()
    assert "app1: restart app1-gunicorn out of rotation (configuration changed)" in changes.lines()
