"""The command line prints text from files and users as it is: never as rich markup, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from djship.cli import main


def in_awkward_dir(django_project: Path, directory: Path) -> Path:
    """The startproject tree moved under a directory whose name looks like rich markup."""
    project = directory / "old [/x] [bold]" / "mysite"
    project.parent.mkdir(parents=True)
    shutil.move(django_project, project)
    return project


def test_init_prints_paths_and_values_that_look_like_markup(django_project, short_tmp, monkeypatch):
    project = in_awkward_dir(django_project, short_tmp)
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace("mysite.wsgi.application", "mysite.wsgi.app[/x]"))
    monkeypatch.chdir(short_tmp)

    result = CliRunner().invoke(main, ["init", str(project)])

    assert result.exit_code == 0, result.output
    assert f"Wrote {project}/djship.toml" in result.output
    assert "WSGI app      mysite.wsgi.app[/x]" in result.output


def test_status_prints_paths_that_look_like_markup(django_project, short_tmp, monkeypatch):
    project = in_awkward_dir(django_project, short_tmp)
    monkeypatch.chdir(short_tmp)
    assert CliRunner().invoke(main, ["init", str(project)]).exit_code == 0

    result = CliRunner().invoke(main, ["-C", str(project), "status"])

    assert result.exit_code == 0, result.output
    assert f"CA {project}/.djship/tls/ca.crt" in result.output
    assert f"unix:{project}/.djship/servers/app1/socket/gunicorn.sock" in result.output


def test_restore_of_a_path_under_an_unknown_users_home_is_one_line(django_project, short_tmp, monkeypatch):
    project = in_awkward_dir(django_project, short_tmp)
    monkeypatch.chdir(short_tmp)
    assert CliRunner().invoke(main, ["init", str(project)]).exit_code == 0

    result = CliRunner().invoke(main, ["-C", str(project), "restore", "~nosuchuser/backup", "--yes"])

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.output.strip().splitlines()[-1] == (
        "error: no backup '~nosuchuser/backup': there is no user 'nosuchuser'; write the backup directory's path out"
    )


@pytest.mark.parametrize("args, error", [
    (["restore", "--yes"], "error: restore takes either a BACKUP (from `djship backups`) or --to TIME"),
    (["restore", "20261201T000000Z", "--to", "2026-12-01 10:42:00", "--yes"],
     "error: restore takes either a BACKUP (from `djship backups`) or --to TIME"),
    (["restore", "--to", "2026-12-01 10:42:00", "--redis", "--yes"], "error: --redis goes with a BACKUP only"),
])
def test_restore_takes_a_backup_or_a_time(django_project, short_tmp, monkeypatch, args, error):
    project = in_awkward_dir(django_project, short_tmp)
    monkeypatch.chdir(short_tmp)
    assert CliRunner().invoke(main, ["init", str(project)]).exit_code == 0

    result = CliRunner().invoke(main, ["-C", str(project), *args])

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.output.strip().splitlines()[-1].startswith(error), result.output


def test_djship_db_holds_the_standby_and_the_external_database_commands():
    """One `db` group: a second group of that name would hide the first one's commands."""
    assert set(main.commands["db"].commands) == {"failover", "switchover", "password"}


def test_the_cli_loads_neither_the_ssh_nor_the_acme_client_until_a_topology_or_tls_mode_needs_it():
    """Every command pays for what it imports: paramiko (~0.1 s) and the ACME client (~0.08 s) load only where used."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, djship.cli, djship.system; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "djship.system" in loaded
    assert not [name for name in loaded if name.split(".")[0] in ("paramiko", "acme", "josepy")]
