"""Finding djship's processes a dead supervisor left running (the parser, and the scan on this machine's /proc), the
postgres program that waits on a surviving postmaster, and the order in which orphans are stopped and adopted."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from djship import render
from djship.components import orphans
from djship.components.balancer import ServerState
from djship.connectors import Result
from djship.connectors.local import LocalConnector

SOCKET = "/srv/example/board/.djship/supervisor/supervisor.sock"
SERVERS = "/srv/example/board/.djship/servers"


def _line(pid: int, pgrp: int, env: dict[str, str], argv: list[str], state: str = "S") -> str:
    return json.dumps({"pid": pid, "state": state, "pgrp": pgrp, "env": env, "argv": argv})


def _env(program: str, socket: str = SOCKET) -> dict[str, str]:
    return {"SUPERVISOR_SERVER_URL": f"unix://{socket}", "SUPERVISOR_PROCESS_NAME": program, "SUPERVISOR_ENABLED": "1"}


def test_the_parser_finds_one_leader_per_program_of_this_state_root():
    output = "\n".join([
        _line(300, 300, _env("haproxy"), ["/usr/sbin/haproxy", "-W", "-db", "-f", "/x/haproxy.cfg"]),
        _line(301, 300, _env("haproxy"), ["/usr/sbin/haproxy", "-W", "-db", "-f", "/x/haproxy.cfg"]),  # its worker
        _line(200, 200, _env("postgres"), ["/usr/lib/postgresql/15/bin/postgres", "-D", "/x/data"]),
        _line(400, 400, _env("app1-gunicorn", socket="/elsewhere/supervisor.sock"), ["gunicorn"]),  # another root
        _line(500, 500, _env("app2-gunicorn"), [], state="Z"),  # exited, not yet reaped
        _line(600, 600, {}, ["nginx: master process /usr/sbin/nginx -c "
                             "/srv/example/board/.djship/servers/app1/nginx.conf -p /srv/example/board/.djship/servers/app1 "
                             "-e stderr"]),
        _line(601, 600, {}, ["nginx: worker process"]),
        _line(610, 610, {}, ["nginx: master process /usr/sbin/nginx -c /srv/example/board/.djship/servers/app3/nginx.conf"]),
        _line(615, 615, {}, ["nginx: master process /usr/sbin/nginx -c /srv/example/board/.djship/servers/web1-2/nginx.conf"]),
        _line(620, 620, {}, ["nginx: master process /usr/sbin/nginx -c /srv/example/board/.djship/servers/app1/nginx.conf.old"]),
        _line(700, 700, {}, ["vim", "/srv/example/board/.djship/servers/app1/nginx.conf"]),  # names it, is not it
        "a line that is not JSON",
    ])

    found = orphans.parse_scan(output, SOCKET, SERVERS)

    assert [(orphan.pid, orphan.program) for orphan in found] == [
        (200, "postgres"), (300, "haproxy"), (600, "app1-nginx"), (610, "app3-nginx"), (615, "web1-2-nginx")]
    assert found[0].argv == ("/usr/lib/postgresql/15/bin/postgres", "-D", "/x/data")


def test_statuses_say_unsupervised_with_the_pid_of_the_postmaster_not_of_a_waiter():
    found = [orphans.Orphan(200, "postgres", ("postgres", "-D", "/x")), orphans.Orphan(300, "postgres", ("/bin/sh", "-c"))]

    status = orphans.as_statuses(found)["postgres"]

    assert (status.state, status.pid) == ("UNSUPERVISED", 200)


@pytest.fixture
def spawned():
    """Processes started in their own process group; killed by PID at the end."""
    started: list[subprocess.Popen] = []

    def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        # With SIGINT's default action, as supervisord (which handles SIGINT itself) leaves it to its programs: a
        # test run started in the background inherits SIGINT ignored, which a shell then cannot trap.
        process = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_the_scan_finds_them_in_proc(make_plan, fake_tools, tmp_path, spawned):
    plan = make_plan(state_dir=str(tmp_path), app={"servers": 1}, tools=dataclasses.replace(fake_tools, python=sys.executable))
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SUPERVISOR_")}
    ours = spawned(SLEEPER, env={**clean, "SUPERVISOR_SERVER_URL": f"unix://{plan.paths.supervisor_socket}",
                                 "SUPERVISOR_PROCESS_NAME": "app1-gunicorn"})
    theirs = spawned(SLEEPER, env={**clean, "SUPERVISOR_SERVER_URL": "unix:///elsewhere.sock",
                                   "SUPERVISOR_PROCESS_NAME": "app1-gunicorn"})
    nginx = spawned([*SLEEPER, "-c", str(plan.app_servers[0].nginx_conf), "-p", "x"], env=clean)
    time.sleep(0.3)

    found = orphans.orphans(LocalConnector(), plan)

    assert [(orphan.pid, orphan.program) for orphan in found] == sorted([(ours.pid, "app1-gunicorn"), (nginx.pid, "app1-nginx")])
    assert theirs.pid not in [orphan.pid for orphan in found]


def test_a_host_without_djship_s_python_yet_has_none(make_plan, fake_tools, tmp_path):
    """A host's first `up`: its supervisor's virtualenv (whose Python runs the scan) does not exist yet."""
    plan = make_plan(state_dir=str(tmp_path), tools=dataclasses.replace(fake_tools, python=str(tmp_path / "venv/bin/python")))
    assert orphans.orphans(LocalConnector(), plan) == []


def _postgres_program(plan) -> list[str]:
    program = next(program for program in render.programs(plan) if program.name == "postgres")
    return shlex.split(program.command)


def _fake_postgres(tmp_path: Path) -> Path:
    binary = tmp_path / "fake-postgres"
    binary.write_text('#!/bin/sh\necho "postgres $*"\n')
    binary.chmod(0o755)
    return binary


def test_the_postgres_program_is_postgres_itself_when_no_postmaster_survived(make_plan, tmp_path):
    plan = make_plan(state_dir=str(tmp_path / "state"))
    argv = _postgres_program(plan)
    argv[argv.index(plan.tools.pg("postgres"))] = str(_fake_postgres(tmp_path))
    data = plan.database.data_dir
    data.mkdir(parents=True)
    (data / "postmaster.pid").write_text("999999999\n")  # stale: no such process

    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)

    assert result.stdout == f"postgres -D {data}\n"


def test_the_postgres_program_waits_on_a_surviving_postmaster_and_hands_it_the_stop_signal(make_plan, tmp_path, spawned):
    plan = make_plan(state_dir=str(tmp_path / "state"))
    data = plan.database.data_dir
    data.mkdir(parents=True)
    survivor = spawned([sys.executable, "-c", "import signal, sys, time\n"
                        "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\ntime.sleep(120)", "-D", str(data)])
    (data / "postmaster.pid").write_text(f"{survivor.pid}\n{data}\n")
    argv = _postgres_program(plan)
    argv[argv.index(plan.tools.pg("postgres"))] = str(_fake_postgres(tmp_path))
    program = spawned(argv)

    time.sleep(1.5)
    assert program.poll() is None and survivor.poll() is None  # it waits; nothing restarted
    os.killpg(program.pid, signal.SIGINT)  # what the supervisor does to stop it

    assert survivor.wait(timeout=10) == 0
    assert program.wait(timeout=10) == 0


class FakeHost:
    """Runs the scan by answering with the orphans still alive; `kill -s SIG -- -PGID` ends one (and is recorded);
    keeps what is put."""

    def __init__(self, found: list[orphans.Orphan], socket: Path):
        self.socket = socket
        self.alive = {orphan.pid: orphan for orphan in found}
        self.events: list[str] = []
        self.files: dict[Path, bytes] = {}

    def run(self, argv, **_) -> Result:
        argv = [str(part) for part in argv]
        if argv[0] == "kill":
            pid = int(argv[-1].lstrip("-"))
            self.events.append(f"{argv[2]} {self.alive[pid].program}")
            del self.alive[pid]
            return Result(tuple(argv), 0, "", "")
        lines = [_line(orphan.pid, orphan.pid, _env(orphan.program, str(self.socket)), list(orphan.argv))
                 for orphan in self.alive.values()]
        return Result(tuple(argv), 0, "\n".join(lines) + "\n", "")

    def put(self, path, content, **_) -> bool:
        self.files[path] = content.encode() if isinstance(content, str) else content
        return True


def _everything(plan) -> list[orphans.Orphan]:
    return [orphans.Orphan(100 + index, program.name, (program.name,)) for index, program in enumerate(render.programs(plan))]


def test_down_without_a_supervisor_stops_the_balancer_first_and_the_database_last(golden_plan):
    host = FakeHost(_everything(golden_plan), golden_plan.paths.supervisor_socket)

    orphans.stop_all(host, golden_plan, _everything(golden_plan))

    assert host.events == ["USR1 haproxy", "QUIT app2-nginx", "TERM app2-gunicorn", "QUIT app1-nginx",
                           "TERM app1-gunicorn", "INT postgres"]


class FakeSupervisor:
    def __init__(self, events: list[str]):
        self.events = events

    def start_daemon(self) -> None:
        self.events.append("supervisord")

    def start(self, *names: str) -> None:
        self.events.append("start " + " ".join(names))


class FakeBalancer:
    def __init__(self, events: list[str], names: list[str]):
        self.events, self.names = events, names

    def states(self) -> dict[str, ServerState]:
        return {name: ServerState(name, "UP", "L7OK", 0) for name in self.names}

    def set_state(self, server: str, state: str) -> None:
        self.events.append(f"{state} {server}")

    def wait_drained(self, server: str, timeout: float) -> None:
        self.events.append(f"drained {server}")

    def wait_status(self, server: str, status: str, timeout: float) -> None:
        self.events.append(f"{status} {server}")


class Quiet:
    def step(self, title: str):
        return nullcontext()

    def note(self, text: str) -> None:
        pass


def test_adopt_keeps_the_database_replaces_app_servers_one_at_a_time_and_the_balancer_last(golden_plan):
    found = _everything(golden_plan)
    host = FakeHost(found, golden_plan.paths.supervisor_socket)
    events = host.events
    supervisor = FakeSupervisor(events)
    balancer = FakeBalancer(events, ["app1", "app2"])

    orphans.adopt(host, golden_plan, supervisor, balancer, found, lambda server: events.append(f"healthy {server.name}"),
                  lambda: events.append("balancer ready"), Quiet())

    assert host.files[golden_plan.paths.supervisor_conf] == render.supervisord_conf(golden_plan).encode()
    assert events == [
        "supervisord",
        "start postgres",  # the postmaster keeps running: never signalled
        "drain app1", "drained app1", "QUIT app1-nginx", "TERM app1-gunicorn", "start app1-gunicorn app1-nginx",
        "healthy app1", "ready app1", "UP app1",
        "drain app2", "drained app2", "QUIT app2-nginx", "TERM app2-gunicorn", "start app2-gunicorn app2-nginx",
        "healthy app2", "ready app2", "UP app2",
        "start haproxy", "balancer ready", "USR1 haproxy",
    ]


def test_adopt_restarts_an_app_server_in_place_when_no_other_serves(make_plan):
    plan = make_plan(app={"servers": 1})
    found = [orphan for orphan in _everything(plan) if orphan.program.startswith("app1-")]
    host = FakeHost(found, plan.paths.supervisor_socket)
    events = host.events
    balancer = FakeBalancer(events, ["app1"])

    orphans.adopt(host, plan, FakeSupervisor(events), balancer, found,
                  lambda server: events.append(f"healthy {server.name}"), lambda: events.append("balancer ready"), Quiet())

    assert events == ["supervisord", "QUIT app1-nginx", "TERM app1-gunicorn", "start app1-gunicorn app1-nginx",
                      "healthy app1"]


def test_adopt_drains_and_stops_an_app_server_djship_toml_no_longer_has(make_plan):
    plan = make_plan(app={"servers": 1})
    found = [*_everything(plan), orphans.Orphan(300, "app2-nginx", ("nginx",)), orphans.Orphan(301, "app2-gunicorn", ("g",))]
    host = FakeHost(found, plan.paths.supervisor_socket)
    events = host.events
    balancer = FakeBalancer(events, ["app1", "app2"])

    orphans.adopt(host, plan, FakeSupervisor(events), balancer, found,
                  lambda server: events.append(f"healthy {server.name}"), lambda: events.append("balancer ready"), Quiet())

    assert events[events.index("UP app1") + 1:] == [
        "drain app2", "drained app2", "QUIT app2-nginx", "TERM app2-gunicorn",
        "start haproxy", "balancer ready", "USR1 haproxy",
    ]


def test_adopt_ends_a_waiter_left_from_an_earlier_adoption_but_never_the_postmaster(golden_plan):
    postmaster = orphans.Orphan(100, "postgres", ("/usr/lib/postgresql/15/bin/postgres", "-D", "/x/data"))
    waiter = orphans.Orphan(200, "postgres", ("/bin/sh", "-c", "data=$2; ...", "postgres"))
    host = FakeHost([postmaster, waiter], golden_plan.paths.supervisor_socket)

    orphans.adopt(host, golden_plan, FakeSupervisor(host.events), FakeBalancer(host.events, []), [postmaster, waiter],
                  lambda server: None, lambda: None, Quiet())

    assert host.events == ["supervisord", "KILL postgres", "start postgres"]
    assert list(host.alive) == [100]
