"""The pure and local parts of deploy, rollback and scale: config rewriting, the lock, batches, pruning."""

from __future__ import annotations

import json

import pytest

from tests.unit.conftest import FAKE_TOOLS

from djship.components.balancer import ServerState
from djship.config import parse_config, with_values
from djship.deploy.lock import exclusive
from djship.deploy.rolling import _batches
from djship.errors import DjshipError
from djship.project import DjangoProject, render_config
from djship.system import take_out_for_good


def test_scaling_sets_the_number_of_servers_and_keeps_every_other_line():
    original = render_config(DjangoProject(None, "board.settings", "board.wsgi.application", "requirements.txt"))
    rewritten = with_values(original, {"app.servers": 4})
    assert parse_config(rewritten).app.servers == 4
    assert set(original.splitlines()) <= set(rewritten.splitlines())
    assert parse_config(with_values(rewritten, {"app.servers": 3})).app.servers == 3


def test_scaling_adds_the_app_section_when_it_is_missing():
    text = '[project]\nsettings_module = "a.settings"\nwsgi_application = "a.wsgi.application"\n'
    assert parse_config(with_values(text, {"app.servers": 3})).app.servers == 3


def test_a_second_holder_of_the_lock_is_refused_and_told_who_holds_it(tmp_path):
    lock = tmp_path / "deploy.lock"
    with exclusive(lock, "deploy"):
        with pytest.raises(DjshipError, match=r"another deploy, rollback, scale or up is running \(deploy by pid \d+"):
            with exclusive(lock, "scale"):
                pass
    with exclusive(lock, "scale"):
        assert "scale by pid" in lock.read_text()


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [(4, 1, [1, 1, 1, 1]), (5, 2, [2, 2, 1]), (2, 5, [2]),
     # A share is rounded up, and never takes every server out of rotation at once.
     (8, "25%", [2, 2, 2, 2]), (5, "25%", [2, 2, 1]), (3, "10%", [1, 1, 1]), (4, "100%", [3, 1]), (1, "50%", [1])],
)
def test_servers_are_switched_in_batches(make_plan, count, size, expected):
    plan = make_plan(app={"servers": count}, deploy={"batch_size": size})
    batches = _batches(plan.app_servers, plan.batch_size)
    assert [len(batch) for batch in batches] == expected
    assert [server for batch in batches for server in batch] == list(plan.app_servers)


def one_machine(config, project_dir):
    """The System of a one-machine topology at project_dir (nothing is started)."""
    from djship.connectors.local import LocalConnector
    from djship.plan import build_plans
    from djship.system import System
    from djship.topology import Host, Topology, control_paths, local_spec

    spec = local_spec(config, project_dir, FAKE_TOOLS, False)
    plan = build_plans(config, project_dir, [spec])[spec.name]
    host = Host(spec.name, spec.address, LocalConnector(), plan, "python3", "project")
    return System(Topology({host.name: host}, control_paths(config, project_dir)), reporter=None)


def test_pruning_keeps_the_newest_and_every_release_in_use(make_config, tmp_path):
    system = one_machine(make_config(deploy={"keep_releases": 2}), tmp_path)
    plan = system.plan
    for release_id in ("20260101-000001", "20260101-000002", "20260101-000003", "20260101-000004"):
        directory = plan.paths.releases / release_id
        directory.mkdir(parents=True)
        (directory / "release.json").write_text(json.dumps({"id": release_id}))
    (plan.paths.releases / "20260101-000005-incomplete").mkdir()
    app1 = plan.app_servers[0]
    app1.dir.mkdir(parents=True)
    app1.release_link.symlink_to(plan.paths.releases / "20260101-000001")
    plan.paths.current.symlink_to(plan.paths.releases / "20260101-000004")

    removed = system.prune_releases()

    assert removed == ["20260101-000002"]
    assert [release.id for release in system.releases()] == ["20260101-000001", "20260101-000003", "20260101-000004"]


class _FakeSupervisorctl:
    """A connector whose supervisorctl answers `start NAME` with that name's line and exit code."""

    def __init__(self, answers: dict[str, tuple[str, int]]):
        self.answers, self.started = answers, []

    def run(self, argv, **kwargs):
        from djship.connectors import Result

        assert argv[-2] == "start", argv  # one program per supervisorctl
        self.started.append(argv[-1])
        line, code = self.answers[argv[-1]]
        return Result(tuple(argv), code, line + "\n", "")


def test_starting_a_server_whose_nginx_already_runs_starts_only_its_gunicorn(make_plan):
    from djship.components.supervisor import Supervisor

    plan = make_plan()
    answers = {"app2-gunicorn": ("app2-gunicorn: started", 0), "app2-nginx": ("app2-nginx: ERROR (already started)", 7)}
    fake = _FakeSupervisorctl(answers)
    Supervisor(plan, fake).start("app2-gunicorn", "app2-nginx")
    assert sorted(fake.started) == ["app2-gunicorn", "app2-nginx"]
    answers["app2-gunicorn"] = ("app2-gunicorn: ERROR (spawn error)", 7)
    with pytest.raises(DjshipError, match=r"app2-gunicorn did not start \(ERROR \(spawn error\)\)"):
        Supervisor(plan, _FakeSupervisorctl(answers)).start("app2-gunicorn", "app2-nginx")


def test_programs_start_at_once_rather_than_a_startsecs_after_another(make_plan):
    import threading

    from djship.components.supervisor import Supervisor
    from djship.connectors import Result

    arrived = threading.Barrier(3, timeout=10)  # every supervisorctl waits for the others: only at once passes

    class Waiting:
        def run(self, argv, **kwargs):
            arrived.wait()
            return Result(tuple(argv), 0, f"{argv[-1]}: started\n", "")

    Supervisor(make_plan(), Waiting()).start("app1-gunicorn", "app1-nginx", "app2-gunicorn")


def test_reading_secrets_never_makes_new_ones(make_config, tmp_path):
    system = one_machine(make_config(), tmp_path)
    with pytest.raises(DjshipError, match=r"no secrets in .* nor on the hosts; run `djship up` first"):
        system.secrets()
    assert not system.plan.paths.secrets.exists()
    made = system._ensure_secrets()
    assert system.secrets() == made


@pytest.mark.parametrize("size", ["0", '"0%"', '"101%"', '"25"', '"a quarter"', "true", "2.5"])
def test_a_batch_size_that_is_neither_a_count_nor_a_share_is_refused_by_its_key(size):
    text = ('[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.application"\n'
            f"[deploy]\nbatch_size = {size}\n")
    with pytest.raises(DjshipError, match=r"^djship.toml: deploy\.batch_size: "):
        parse_config(text, "djship.toml")


class _ListingBalancer:
    """A balancer whose running configuration lists some app servers."""

    def __init__(self, listed: list[str]):
        self.listed, self.commands = listed, []

    def states(self):
        return {name: ServerState(name, "UP", "L7OK", 0) for name in self.listed}

    def set_state(self, server: str, state: str) -> None:
        if server not in self.listed:
            raise DjshipError(f"the load balancer refused `set server app_servers/{server} state {state}`: No such server.")
        self.commands.append(f"{state} {server}")

    def wait_drained(self, server: str, timeout: float) -> None:
        self.commands.append(f"drained {server}")


def test_taking_out_servers_the_balancer_never_listed_drains_only_those_it_lists():
    """A scale whose new servers failed to start goes back: those servers were never in the balancer."""
    balancer = _ListingBalancer(["app1", "app2", "app3"])
    take_out_for_good(balancer, ["app3", "app4"], 1)
    assert balancer.commands == ["drain app3", "drained app3", "maint app3"]


class _Changes:
    def __init__(self, release):
        self.release = release


def test_the_release_is_installed_while_the_data_gets_ready_then_migrated_once(make_config, tmp_path, monkeypatch):
    import threading
    from contextlib import nullcontext

    from djship.deploy.release import Release

    system = one_machine(make_config(), tmp_path)
    monkeypatch.setattr(system, "reporter", type("R", (), {"step": lambda self, title: nullcontext()})())
    data_started, done = threading.Event(), []
    release = Release("20260101-000001", tmp_path / "r1")

    def install(changes, data_ready):  # waits for data(): this passes only when both run at once
        assert data_started.wait(10), "the release was installed only after the data was ready"
        done.append("installed")
        data_ready()  # where its migration waits
        done.append("migrated")
        return release

    def data():
        data_started.set()
        done.append("data")

    monkeypatch.setattr(system, "_install_release", install)
    monkeypatch.setattr(system, "set_current", lambda current: done.append(f"current {current.id}"))
    assert system._release_beside_data(_Changes(None), data) is release
    assert sorted(done[:2]) == ["data", "installed"]
    assert done[2:] == ["migrated", "current 20260101-000001"]


@pytest.mark.parametrize("live", [None, "20251231-000009"])
def test_a_new_release_built_beside_failed_data_is_discarded_and_the_data_error_kept(make_config, tmp_path,
                                                                                        monkeypatch, live):
    from djship.deploy.release import Release

    system = one_machine(make_config(), tmp_path)
    discarded = []
    monkeypatch.setattr(system, "_install_release", lambda changes, data_ready: Release(live or "20260101-000001",
                                                                                         tmp_path))
    monkeypatch.setattr(system.pipeline, "discard", discarded.append)

    def data():
        raise DjshipError("PostgreSQL did not start")

    with pytest.raises(DjshipError, match="PostgreSQL did not start"):
        system._release_beside_data(_Changes(live), data)
    assert discarded == ([] if live else ["20260101-000001"])  # the live release is never discarded


def test_a_new_release_is_never_migrated_when_the_data_failed(make_config, tmp_path, monkeypatch):
    system = one_machine(make_config(), tmp_path)
    migrated = []

    def install(changes, data_ready):
        data_ready()
        migrated.append(True)

    monkeypatch.setattr(system, "_install_release", install)

    def data():
        raise DjshipError("PostgreSQL did not start")

    with pytest.raises(DjshipError, match="PostgreSQL did not start"):
        system._release_beside_data(_Changes(None), data)
    assert migrated == []


class _Builds:
    """A host as a release build sees it: every command answers as `fails` says (by its words), files are kept."""

    def __init__(self, fails: str = ""):
        self.fails, self.commands = fails, []

    def run(self, argv, **kwargs):
        from djship.connectors import Result

        self.commands.append(" ".join(map(str, argv)))
        failing = bool(self.fails) and self.fails in self.commands[-1]
        return Result(tuple(map(str, argv)), 1 if failing else 0, "", "failed on purpose" if failing else "")

    def put(self, path, content, **kwargs):
        pass

    def makedirs(self, path, **kwargs):
        pass


@pytest.mark.parametrize("fails, migrated", [("", True), ("check --deploy", False)])
def test_a_release_is_migrated_only_once_its_check_passed_while_its_static_files_are_collected(
        make_plan, tmp_path, fails, migrated):
    from contextlib import nullcontext

    from djship.deploy.release import Release, ReleaseBuilder

    plan = make_plan()
    host = _Builds(fails)
    ran = []
    reporter = type("R", (), {"step": lambda self, title: nullcontext()})()
    builder = ReleaseBuilder(plan, host, reporter, log_dir=tmp_path)  # type: ignore[arg-type]
    release = Release("r1", tmp_path / "r1")
    if fails:
        with pytest.raises(DjshipError, match="manage.py check --deploy failed: failed on purpose"):
            builder.finish(release, checked=lambda: ran.append("migrate"))
    else:
        builder.finish(release, checked=lambda: ran.append(any("check --deploy" in line for line in host.commands)))
    assert ran == ([True] if migrated else [])  # after the check had run
    assert any("collectstatic" in line for line in host.commands)


def _info(state: str, pid: int = 0, description: str = "Exited too quickly") -> str:
    """The info script's answer: supervisord's getProcessInfo, as JSON."""
    return json.dumps({"statename": state, "pid": pid, "description": description})


class _Supervisorctl:
    """supervisord as a connector sees it: the launch script's exit, and the info script answering the given state."""

    def __init__(self, state: str, launch=(0, "")):
        self.state, self.launch, self.commands = state, launch, []

    def run(self, argv, **kwargs):
        from djship.connectors import Result

        self.commands.append(list(argv))
        if "getProcessInfo" in argv[2]:
            return Result(tuple(argv), 0, _info(self.state), "")
        return Result(tuple(argv), self.launch[0], "", self.launch[1])


def test_a_launch_returns_at_once_and_names_a_program_the_supervisor_refused(make_plan):
    from djship.components.supervisor import Supervisor

    plan = make_plan()
    fake = _Supervisorctl("STARTING")
    Supervisor(plan, fake).launch("app1-gunicorn", "app1-nginx")
    assert fake.commands[0][-3:] == ["once", "app1-gunicorn", "app1-nginx"] and len(fake.commands) == 1
    again = _Supervisorctl("STARTING")
    Supervisor(plan, again).launch("app1-gunicorn", again=True)  # the stop and the start in one process
    assert again.commands[0][-2:] == ["again", "app1-gunicorn"] and len(again.commands) == 1
    refused = _Supervisorctl("STOPPED", launch=(1, "app1-nginx: BAD_NAME: app1-nginx\n"))
    with pytest.raises(DjshipError, match=r"^app1-nginx did not start \(BAD_NAME: app1-nginx\); see .*app1-nginx.log"):
        Supervisor(plan, refused).launch("app1-gunicorn", "app1-nginx")


@pytest.mark.parametrize("state, fails", [("STARTING", False), ("RUNNING", False), ("BACKOFF", True), ("FATAL", True),
                                          ("EXITED", True)])
def test_waiting_on_a_launched_program_ends_as_soon_as_it_exited(make_plan, state, fails):
    from djship.components.supervisor import Supervisor

    check = Supervisor(make_plan(), _Supervisorctl(state)).answering("app1-gunicorn", lambda: (False, "HTTP 502"))
    if fails:
        with pytest.raises(DjshipError, match=rf"app1-gunicorn exited while starting \({state} Exited too quickly\)"):
            check()
    else:
        assert check() == (False, "HTTP 502")
    healthy = Supervisor(make_plan(), _Supervisorctl("BACKOFF")).answering("app1-gunicorn", lambda: (True, "ok"))
    assert healthy() == (True, "ok")  # a ready answer is never second-guessed


@pytest.mark.parametrize("states", [
    [("STARTING", 41), ("RUNNING", 41), ("RUNNING", 41), ("STARTING", 57)],
    # It lives just past startsecs each round: RUNNING for a moment no poll catches, STARTING the rest of the round.
    [("STARTING", 41), ("STARTING", 41), ("STARTING", 41), ("STARTING", 57)],
])
def test_a_launched_program_started_again_by_the_supervisor_has_exited_too(make_plan, states):
    """Slower than startsecs to fail, it counts as started, exits and is restarted at once: a new pid tells."""
    from djship.components.supervisor import Supervisor
    from djship.connectors import Result

    class Restarting:
        answers = iter(states)

        def run(self, argv, **kwargs):
            return Result(tuple(argv), 0, _info(*next(self.answers)), "")

    check = Supervisor(make_plan(), Restarting()).answering("app1-gunicorn", lambda: (False, "HTTP 502"))
    for _ in range(3):
        assert check() == (False, "HTTP 502")
    with pytest.raises(DjshipError, match=r"app1-gunicorn exited while starting \(the supervisor started it again\)"):
        check()


class _StartingBalancer:
    """A just launched HAProxy: its first answer lists app1 taken out by a check that came too early and app2 not
    yet checked; `set server ... health up` makes a server UP."""

    def __init__(self):
        self.status = {"app1": "DOWN", "app2": "UP 1/2"}
        self.told: list[str] = []

    def states(self):
        return {name: ServerState(name, status, "L7OK", 0) for name, status in self.status.items()}

    def set_health(self, server: str, health: str) -> None:
        self.told.append(f"{server} {health}")
        self.status[server] = "UP"


def test_a_first_start_launches_haproxy_with_the_app_servers_and_tells_it_what_djship_found_healthy(
        make_config, tmp_path, monkeypatch):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from djship.deploy.release import Release

    system = one_machine(make_config(), tmp_path)
    host = system.hosts["local"]
    events: list[str] = []
    balancer = _StartingBalancer()
    monkeypatch.setattr(system, "reporter", type("R", (), {"step": lambda self, title: (events.append(title),
                                                                                          nullcontext())[1]})())
    monkeypatch.setattr(system, "balancers", [balancer])
    monkeypatch.setattr(host.supervisor, "launch", lambda *names: events.append(f"launch {' '.join(names)}"))
    monkeypatch.setattr(system, "wait_healthy", lambda server, release, launched: events.append(f"healthy {server.name}"))
    monkeypatch.setattr(system, "_balancer_ready", lambda lb, states: (
        all(state.status == "UP" for state in states.values()), "waiting"))
    for server in system.plan.app_servers:
        server.dir.mkdir(parents=True)
    programs = [name for server in system.plan.app_servers for name in server.programs]
    changes = SimpleNamespace(start={"local": [*programs, "haproxy"]}, haproxy={"local": "start"})

    system._start_app_servers(changes, Release("20260101-000001", tmp_path / "r1"))
    system._ensure_balancers(changes)  # already started: nothing more

    assert events == [f"Starting app servers app1, app2 (nginx + gunicorn) and the load balancer (HAProxy) on "
                      f"{system.plan.url}, all at once", f"launch {' '.join(programs)} haproxy",
                      "healthy app1", "healthy app2"]
    assert balancer.told == ["app1 up", "app2 up"]
