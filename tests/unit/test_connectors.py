"""The connectors: the remote command line, the fan-out over hosts, and the local connector's writes, which never
follow a link that a less-privileged user planted."""

from __future__ import annotations

import os
import pwd
import stat
import threading
from pathlib import Path

import pytest

from djship.connectors import on_each
from djship.connectors.local import LocalConnector
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


# ---- the local connector never writes through a link a less-privileged user planted -------------------------

# As root a planted link could also hand the outside file to another owner; as a user only its content and mode show.
OWNER = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A private file outside the directory djship writes into, the target of every planted link."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_text("root's secret\n")
    path.chmod(0o600)
    return path


def unchanged(path: Path, before: os.stat_result, content: bytes) -> bool:
    after = path.lstat()
    return (path.read_bytes(), after.st_mode, after.st_uid, after.st_gid) == (
        content, before.st_mode, before.st_uid, before.st_gid
    )


def test_put_never_writes_through_a_link_planted_as_its_temporary_file(tmp_path, outside):
    before, content = outside.stat(), outside.read_bytes()
    target = tmp_path / "servers" / "app1" / "gunicorn.conf.py"
    target.parent.mkdir(parents=True)
    (target.parent / ".gunicorn.conf.py.djship-tmp").symlink_to(outside)

    assert LocalConnector().put(target, "workers = 3\n", mode=0o644, owner=OWNER) is True

    assert unchanged(outside, before, content)
    assert target.read_text() == "workers = 3\n" and not target.is_symlink()
    assert (stat.S_IMODE(target.stat().st_mode), pwd.getpwuid(target.stat().st_uid).pw_name) == (0o644, OWNER)
    assert sorted(path.name for path in target.parent.iterdir()) == ["gunicorn.conf.py"]
    target.unlink()
    target.symlink_to(outside)  # a link as the file itself is replaced, its target left alone
    assert LocalConnector().put(target, "workers = 3\n", mode=0o644) is True
    assert unchanged(outside, before, content) and not target.is_symlink()


def test_put_refuses_a_link_planted_as_its_directory(tmp_path, outside):
    before, content = outside.stat(), outside.read_bytes()
    server = tmp_path / "servers" / "app1"
    server.parent.mkdir()
    server.symlink_to(outside.parent)

    with pytest.raises(DjshipError) as caught:
        LocalConnector().put(server / "shadow", "pwned\n", mode=0o644)

    assert str(caught.value) == (
        f"{server} is a symlink, where djship keeps a directory; remove it and run djship again"
    )
    assert unchanged(outside, before, content)
    assert sorted(path.name for path in outside.parent.iterdir()) == ["shadow"]


def test_makedirs_never_chmods_or_chowns_through_a_link(tmp_path, outside):
    directory = outside.parent
    directory.chmod(0o700)
    before = directory.stat()
    planted = tmp_path / "nginx-temp"
    planted.symlink_to(directory)

    with pytest.raises(DjshipError, match=r"nginx-temp is a symlink, where djship keeps a directory; remove it"):
        LocalConnector().makedirs(planted, mode=0o755, owner=OWNER)

    after = directory.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    planted.unlink()
    LocalConnector().makedirs(planted, mode=0o750, owner=OWNER)
    assert (stat.S_IMODE(planted.stat().st_mode), pwd.getpwuid(planted.stat().st_uid).pw_name) == (0o750, OWNER)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a directory to another user and group")
def test_makedirs_gives_the_directory_to_its_owner_and_group(tmp_path):
    directory = tmp_path / "socket"
    LocalConnector().makedirs(directory, mode=0o750, owner="daemon")
    assert (directory.owner(), directory.group()) == ("daemon", "daemon")  # the owner's own group
    LocalConnector().makedirs(directory, mode=0o750, owner="daemon", group="www-data")
    assert (stat.S_IMODE(directory.stat().st_mode), directory.owner(), directory.group()) == (0o750, "daemon", "www-data")


def test_symlink_never_creates_its_link_through_a_linked_directory(tmp_path, outside):
    server = tmp_path / "servers" / "app1"
    server.parent.mkdir()
    server.symlink_to(outside.parent)

    with pytest.raises(DjshipError, match=r"app1 is a symlink, where djship keeps a directory"):
        LocalConnector().symlink(server / "release", tmp_path / "releases" / "r1")

    assert sorted(path.name for path in outside.parent.iterdir()) == ["shadow"]
