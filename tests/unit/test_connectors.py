"""The pure parts of the connectors: the remote command line, and the fan-out over hosts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from djship.connectors import on_each
from djship.connectors.ssh import SSHTarget, remote_command
from djship.errors import DjshipError


def test_remote_command_quotes_every_word():
    assert remote_command(["echo", "a b", "$HOME", "it's"], login_user="root") == "echo 'a b' '$HOME' 'it'\"'\"'s'"


def test_remote_command_with_cwd_env_and_another_user_as_root():
    command = remote_command(
        ["python", "manage.py", "check"], login_user="root", user="djship",
        env={"DJANGO_SETTINGS_MODULE": "djship_production.settings", "A": "x y"}, cwd=Path("/srv/my app"),
    )
    assert command == (
        "cd '/srv/my app' && runuser -u djship -- env DJANGO_SETTINGS_MODULE=djship_production.settings "
        "'A=x y' python manage.py check"
    )


def test_remote_command_uses_sudo_when_not_logged_in_as_root():
    assert remote_command(["id"], login_user="deploy", user="djship") == "sudo -n -u djship -- id"


def test_remote_command_as_the_login_user_switches_nobody():
    assert remote_command(["id"], login_user="deploy", user="deploy") == "id"


def test_ssh_target_endpoint_is_known_hosts_notation():
    assert SSHTarget("10.0.0.5").endpoint == "10.0.0.5"
    assert SSHTarget("10.0.0.5", port=2222).endpoint == "[10.0.0.5]:2222"


def test_on_each_runs_every_host_at_once():
    barrier = threading.Barrier(3, timeout=5)  # would time out if the hosts ran one after another

    def action(value: int) -> int:
        barrier.wait()
        return value * 2

    assert on_each({"a": 1, "b": 2, "c": 3}, action) == {"a": 2, "b": 4, "c": 6}


def test_on_each_names_every_failed_host():
    def action(value: int) -> int:
        if value % 2:
            raise DjshipError(f"odd {value}")
        return value

    with pytest.raises(DjshipError) as raised:
        on_each({"app1": 1, "app2": 2, "app3": 3}, action)
    assert str(raised.value) == "app1: odd 1; app3: odd 3"
