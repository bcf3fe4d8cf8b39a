"""The app's environment, written once and run on both topologies: one machine (https://localhost:26443) and netns hosts
(1 lb + 3 app hosts + 1 db, each its own sshd and state root; see tests/e2e/hosts.py).

[env] of djship.toml and the secrets of `djship env` reach every gunicorn; nothing of the shell that ran `djship up`
does; a secret lies in no file but its 0600 one (here and on each app host); a change rolls through the app servers
under load with no failed request. The example's /api/environment/ shows BOARD_GREETING and BOARD_API_KEY masked (its
SHA-256), so no test reads a secret back from a page.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from djship.components.probe import Response
from djship.config import with_values
from tests.e2e.conftest import DJSHIP, EXAMPLE, Ports, Site, make_project, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import ON_HOSTS, ONE_MACHINE, Target
from tests.e2e.test_remote_system import FleetLoop, deploy_under_load, write_config

pytestmark = pytest.mark.e2e

ENV_PORTS = Ports.of(https=26443, http=26080, database=23432, app_prefix="127.0.91", database_address="127.0.92.1")
APP_HOSTS = ["app1", "app2", "app3"]
HOSTS = ["lb1", *APP_HOSTS, "db1"]
GREETING = "hello from [env]: it's $HOME, `quoted`"
# Exported in the shell that runs `djship up`: it must reach no process of the app.
LEAK = "DJSHIP_TEST_SHELL_ONLY"
# What an app process's environment may hold besides [env] and the secrets: djship's and its supervisor's own.
DJSHIP_SETS = {"PATH", "LANG"}
# And what djship sets for a process of [processes] (gunicorn sets these inside itself, from its config).
PROCESS_SETS = {"DJANGO_SETTINGS_MODULE", "PYTHONPATH"}


def _up_from_a_shell_with_a_variable(project: Path) -> None:
    result = subprocess.run([*DJSHIP, "up"], cwd=project, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "COLUMNS": "200", LEAK: "exported by the deployer's shell"})
    assert result.returncode == 0, f"djship up exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def _configured(project: Path) -> None:
    """[env] and a process type: the example's worker, two per app host."""
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {
        "env.BOARD_GREETING": GREETING,
        "processes.worker": {"command": "python manage.py worker", "count": 2, "stop_timeout": 20},
    }))


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    if request.param == ONE_MACHINE:
        with searchable_directory() as directory:
            site = Site(make_project(directory, ENV_PORTS), ENV_PORTS)
            _configured(site.project)
            try:
                _up_from_a_shell_with_a_variable(site.project)
                made = Target(site.project, {"local": site.project / ".djship"}, site)
                made.status()
                yield made
            finally:
                site.stop_everything()
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, APP_HOSTS)
        _configured(project)
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        try:
            _up_from_a_shell_with_a_variable(project)
            made.status()
            yield made
        finally:
            subprocess.run([*DJSHIP, "down"], cwd=project, capture_output=True, timeout=300)


def _servers(target: Target) -> set[str]:
    return {c["server"] for c in target.status()["components"] if c["role"] == "app"}


def _app_roots(target: Target) -> list[Path]:
    """The state root of each app host."""
    return sorted({target.roots[c["host"]] for c in target.status()["components"] if c["role"] == "app"})


def _environment_by_server(target: Target) -> dict[str, dict]:
    """/api/environment/ through the balancer until every app server has answered: what each one's app sees."""
    seen: dict[str, dict] = {}
    servers = _servers(target)
    assert len(servers) == (2 if target.site else 3), servers
    deadline = time.monotonic() + 60
    while set(seen) != servers:
        assert time.monotonic() < deadline, f"only {sorted(seen)} answered"
        answer = target.get("/api/environment/")
        assert isinstance(answer, Response) and answer.status == 200, answer
        seen[answer.header("X-Djship-Server")] = json.loads(answer.body)
    return seen


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _processes(target: Target) -> list[dict]:
    return [c for c in target.status()["components"] if c["role"] == "process"]


def _app_processes(target: Target) -> dict[int, dict[str, str]]:
    """Every process of the app (each gunicorn with its workers, each process of [processes] with its children),
    with its environment from /proc."""
    components = target.status()["components"]
    tops = [c["pid"] for c in components if c["name"].endswith("-gunicorn") or c["role"] == "process"]
    assert len(tops) == len(_servers(target)) + 2 * len(_app_roots(target)) and all(tops), components
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
    pids = set(tops)
    while grown := {pid for pid, parent in parents.items() if parent in pids} - pids:
        pids |= grown
    assert len(pids) > len(tops), "no gunicorn worker found"
    return {pid: dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if item)
            for pid in pids}


def _files_holding(target: Target, value: str) -> list[Path]:
    """Every file of the project (.djship/ included) and of each host's state root, logs and releases included, that
    holds value."""
    places = sorted({str(target.project), *map(str, target.roots.values())})
    found = subprocess.run(["grep", "-rlF", "-D", "skip", "-e", value, *places], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    return sorted({Path(line) for line in found.stdout.splitlines()})


def _secret_files(target: Target) -> list[Path]:
    """Where a secret belongs: .djship/secrets/env here and <root>/secrets/env on each app host (one file on one
    machine, where they are the same)."""
    return sorted({target.project / ".djship/secrets/env", *(root / "secrets/env" for root in _app_roots(target))})


def test_the_app_environment_is_env_and_nothing_of_the_shell_that_ran_up(target):
    for server, seen in _environment_by_server(target).items():
        assert seen == {"greeting": GREETING, "api_key": None}, server

    for pid, environment in _app_processes(target).items():
        assert LEAK not in environment, f"process {pid} inherited {LEAK} from the shell that ran djship up"
        assert environment["BOARD_GREETING"] == GREETING
        others = {name for name in environment if name not in DJSHIP_SETS and not name.startswith("SUPERVISOR_")}
        assert others <= {"BOARD_GREETING", *PROCESS_SETS}, f"process {pid} has more in its environment: {sorted(others)}"


def test_env_set_under_load_fails_no_request_and_every_server_serves_the_secret(target):
    secret = f"sk_live_{secrets.token_hex(16)}"
    with FleetLoop(target) as load:  # type: ignore[arg-type]
        # The value on standard input: on no command line, not even djship's own.
        result = subprocess.run([*DJSHIP, "env", "set", "BOARD_API_KEY"], cwd=target.project, input=secret + "\n",
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        load.wait_for(load.served + 30)
    assert load.failures == [], f"{len(load.failures)} of {load.served} requests failed: {load.failures[:5]}"
    assert secret not in result.stdout + result.stderr

    for server, seen in _environment_by_server(target).items():
        assert seen["api_key"] == {"masked": "********" + secret[-4:], "sha256": _digest(secret)}, server
        assert seen["greeting"] == GREETING
    for pid, environment in _app_processes(target).items():
        assert environment["BOARD_API_KEY"] == secret and LEAK not in environment, pid

    assert _files_holding(target, secret) == _secret_files(target)
    for path in _secret_files(target):
        assert path.stat().st_mode & 0o777 == 0o600, path
    report = json.loads(target.djship("status", "--json").stdout)
    assert secret not in json.dumps(report)
    listed = json.loads(target.djship("env", "list", "--json").stdout)
    assert {"name": "BOARD_API_KEY", "value": None, "secret": True} in listed
    assert {"name": "BOARD_GREETING", "value": GREETING, "secret": False} in listed
    shown = json.loads(target.djship("env", "list", "--json", "--show").stdout)
    assert {"name": "BOARD_API_KEY", "value": secret, "secret": True} in shown


def test_a_dotenv_import_reaches_every_server_character_for_character(target, tmp_path):
    awkward = "it's \"quoted\", $HOME `ls` \\n; # not a comment\nand a second line"
    dotenv = tmp_path / ".env.production"
    escaped = awkward.replace("\\", "\\\\").replace('"', '\\"')
    dotenv.write_text(f'# from the team vault\nexport BOARD_API_KEY="{escaped}"\n')

    target.djship("env", "import", str(dotenv))

    for server, seen in _environment_by_server(target).items():
        assert seen["api_key"]["sha256"] == _digest(awkward), server


def test_no_restart_leaves_the_servers_as_they_run_until_their_next_restart(target):
    before = {server: seen["api_key"] for server, seen in _environment_by_server(target).items()}
    later = f"rotated-{secrets.token_hex(8)}"

    result = target.djship("env", "set", f"BOARD_API_KEY={later}", "--no-restart")

    assert "next restart" in result.stdout
    assert {server: seen["api_key"] for server, seen in _environment_by_server(target).items()} == before
    for path in _secret_files(target):
        assert later in path.read_text(), path


def test_the_secrets_are_read_back_from_the_hosts_when_this_machine_lost_them(target):
    kept = target.project / ".djship/secrets/env"
    if target.site is not None:  # one machine is the host: its one copy is the app's, nothing to read back from
        assert _secret_files(target) == [kept] and kept.stat().st_mode & 0o777 == 0o600
        return
    expected = json.loads(target.djship("env", "list", "--json", "--show").stdout)
    kept.unlink()

    assert json.loads(target.djship("env", "list", "--json", "--show").stdout) == expected
    plan = target.djship("up", "--dry-run").stdout
    assert "secrets/env" not in plan, plan


def test_env_unset_removes_the_secret_from_every_server(target):
    target.djship("env", "unset", "BOARD_API_KEY")

    for server, seen in _environment_by_server(target).items():
        assert seen == {"greeting": GREETING, "api_key": None}, server
    for pid, environment in _app_processes(target).items():
        assert "BOARD_API_KEY" not in environment, pid
    result = target.djship("env", "unset", "BOARD_API_KEY", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: there is no secret BOARD_API_KEY; `djship env list` shows them"


def test_a_deploy_restarts_the_processes_on_the_new_release_gracefully(target):
    before = {(c["host"], c["name"]): c["pid"] for c in _processes(target)}
    assert len(before) == 2 * len(_app_roots(target))

    load = deploy_under_load(target, "the processes follow the web")

    assert load.failures == [], f"{len(load.failures)} of {load.served} requests failed: {load.failures[:5]}"
    release = target.status()["release"]
    for process in _processes(target):
        where = (process["host"], process["name"])
        assert process["state"] == "RUNNING" and process["pid"] != before[where], process
        app = target.roots[process["host"]] / "releases" / release / "app"
        assert os.readlink(f"/proc/{process['pid']}/cwd") == str(app), where
    for pid, environment in _app_processes(target).items():
        assert LEAK not in environment and environment["BOARD_GREETING"] == GREETING, pid
    for root in _app_roots(target):
        for name in ("worker-1", "worker-2"):
            log = (root / "logs" / f"{name}.log").read_text()
            assert "SIGTERM, finished the current task, exiting" in log, (root, name)
            assert f"started on release {release}" in log.rsplit("exiting", 1)[1], (root, name)
    logs = target.djship("logs", "worker", "-n", "3").stdout
    assert {line.split(" |")[0].split()[-1] for line in logs.splitlines() if " | " in line} == {"worker-1", "worker-2"}
