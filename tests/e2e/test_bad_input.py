"""Bad input gets one line naming the problem and the fix, a non-zero exit, and nothing half-started or lost."""

from __future__ import annotations

import socket

import pytest

from djship.config import with_values
from tests.e2e.conftest import SPARE_PORTS, kill_process_group, make_project, run_djship, supervisor_pid_of

pytestmark = pytest.mark.e2e


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_malformed_config_names_the_key(workdir):
    project = make_project(workdir, SPARE_PORTS)
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"app.servers": 0}))
    _assert_one_line_error(run_djship(project, "up", check=False), "app.servers", "greater than or equal to 1")
    config.write_text(config.read_text() + "\n[app\n")
    _assert_one_line_error(run_djship(project, "up", check=False), "not valid TOML", "line")
    assert not (project / ".djship").exists()


@pytest.mark.parametrize(("values", "fragments"), [
    ({"state_dir": ".."}, ("state_dir: ", "holds the project itself")),
    ({"backup.dir": "/tmp"}, ("backup.dir: /tmp is a system directory",)),
    ({"state_dir": "x\u0000y"}, ("state_dir: contains the control character '\\x00'",)),
    ({"state_dir": "x\n[program:pwn]\ncommand=/bin/id"}, ("state_dir: contains the control character '\\n'",)),
    ({"tls.mode": "files", "tls.cert_file": "~nosuchuser/site.crt", "tls.key_file": "site.key"},
     ("tls.cert_file: ", "no user 'nosuchuser'")),
    ({"database.user": "all"}, ("database.user: 'all' is reserved by PostgreSQL",)),
    ({"users.db": "root"}, ("users.db: 'root' is root",)),
    ({"users.app": "site", "users.web": "site"}, ("users: app and web are both 'site'",)),
])
def test_a_value_that_would_become_code_is_one_line_and_nothing_starts(workdir, values, fragments):
    project = make_project(workdir, SPARE_PORTS)
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), values))
    for command in (["up"], ["status"], ["destroy", "--yes"]):
        _assert_one_line_error(run_djship(project, *command, check=False), *fragments)
    assert not (project / ".djship").exists() and (project / "manage.py").exists()


def test_init_outside_a_django_project(workdir):
    _assert_one_line_error(run_djship(workdir, "init", check=False), "not a Django project")


def test_port_in_use_refuses_to_start_anything(workdir):
    project = make_project(workdir, SPARE_PORTS)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", SPARE_PORTS.https))
        squatter.listen()
        _assert_one_line_error(
            run_djship(project, "up", check=False), f"port {SPARE_PORTS.https}", "balancer.https_port"
        )
    assert supervisor_pid_of(project) is None


def test_project_that_does_not_import_starts_nothing(workdir):
    project = make_project(workdir, SPARE_PORTS)
    (project / "posts" / "views.py").write_text("import this_module_does_not_exist\n")
    result = run_djship(project, "up", check=False)
    _assert_one_line_error(result, "manage.py check --deploy failed", "this_module_does_not_exist")
    assert supervisor_pid_of(project) is None
    assert (project / "posts" / "models.py").exists()
    assert (project / ".djship" / "postgres" / "data" / "PG_VERSION").exists()


@pytest.mark.parametrize("command", [["deploy"], ["rollback"], ["scale", "3"], ["manage", "--", "check"]])
def test_commands_that_need_a_running_system_say_so(workdir, command):
    project = make_project(workdir, SPARE_PORTS)
    _assert_one_line_error(run_djship(project, *command, check=False), "not running", "djship up")
    assert not (project / ".djship").exists()


def test_destroy_refuses_without_yes(workdir):
    project = make_project(workdir, SPARE_PORTS)
    (project / ".djship").mkdir()
    _assert_one_line_error(run_djship(project, "destroy", check=False), "--yes")
    assert (project / ".djship").exists()


def test_destroy_yes_stops_everything_and_deletes_only_the_state_directory(workdir):
    project = make_project(workdir, SPARE_PORTS)
    run_djship(project, "up")
    supervisor = supervisor_pid_of(project)
    assert supervisor is not None
    try:
        result = run_djship(project, "destroy", "--yes")
        assert "Deleted" in result.stdout
        assert not (project / ".djship").exists()
        assert supervisor_pid_of(project) is None
        assert (project / "manage.py").exists() and (project / "djship.toml").exists()
    finally:
        kill_process_group(supervisor)


def test_dash_c_runs_a_command_as_if_started_in_the_project(workdir):
    project = make_project(workdir, SPARE_PORTS)
    result = run_djship(workdir, "-C", str(project), "status", "--json")
    assert f'"url": "https://localhost:{SPARE_PORTS.https}/"' in result.stdout
    _assert_one_line_error(run_djship(workdir, "status", check=False), "no djship.toml")
