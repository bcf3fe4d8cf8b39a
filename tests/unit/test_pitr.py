"""Continuous archiving (backup.archive): pgbackrest.conf and postgresql.conf golden, checked by pgBackRest itself;
the plan; and the pure parts of the point-in-time restore (pgbackrest info, the window, the backup type, --to)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from djship import render
from djship.components.pgbackrest import ArchiveBackup, Window, backup_type, parse_info, window_of
from djship.errors import DjshipError
from djship.ops.pitr import parse_target

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
ARCHIVE = {"archive": True, "archive_timeout": 5}


@pytest.fixture
def archive_plan(make_plan):
    return make_plan(running_as_root=True, app={"servers": 2}, backup=ARCHIVE)


@pytest.mark.parametrize("name, renderer", [("pgbackrest.conf", render.pgbackrest_conf),
                                            ("postgresql-archive.conf", render.postgresql_conf)])
def test_rendering_matches_the_golden_file(archive_plan, golden_dir, name, renderer):
    text = renderer(archive_plan)
    golden = golden_dir / name
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"{name} differs; regenerate with DJSHIP_UPDATE_GOLDEN=1"


def test_the_plan_puts_the_repository_in_backup_dir_and_archive_command_pushes_with_its_config(archive_plan):
    archive = archive_plan.backup.archive
    assert archive.repo == archive_plan.backup.dir / "archive"
    assert archive.conf == archive_plan.paths.state / "pgbackrest.conf"
    assert archive.scratch_port == archive_plan.database.port + 1
    conf = render.postgresql_conf(archive_plan)
    assert "archive_mode = on" in conf and "archive_timeout = 5" in conf
    assert f"--config={archive.conf} --stanza=main archive-push %p'" in conf
    assert any(file.path == archive.conf for file in render.system_files(archive_plan))


def test_without_archive_nothing_of_it_is_rendered(make_plan):
    plan = make_plan(running_as_root=True)
    assert plan.backup.archive is None
    assert "archive" not in render.postgresql_conf(plan)
    assert not any(file.path.name == "pgbackrest.conf" for file in render.system_files(plan))


def test_a_quote_in_a_path_stays_inside_archive_command(archive_plan):
    archive = replace(archive_plan.backup.archive, work=archive_plan.paths.state / "it's" / "pgbackrest")
    plan = replace(archive_plan, backup=replace(archive_plan.backup, archive=archive))
    line = next(line for line in render.postgresql_conf(plan).splitlines() if line.startswith("archive_command"))
    value = line.removeprefix("archive_command = ")
    assert value.startswith("'") and value.endswith("'") and "'" not in value[1:-1].replace("''", "")
    command = value[1:-1].replace("''", "'")  # as PostgreSQL reads it, then as sh splits it
    assert shlex.split(command) == ["/usr/bin/pgbackrest", f"--config={archive.conf}", "--stanza=main",
                                    "archive-push", "%p"]


def test_pgbackrest_accepts_the_rendered_config(archive_plan, short_tmp):
    """pgBackRest parses the file: an unknown or misspelt option fails here."""
    pgbackrest = shutil.which("pgbackrest")
    assert pgbackrest, "install pgbackrest (apt-get install -y pgbackrest)"
    conf = short_tmp / "pgbackrest.conf"
    conf.write_text(render.pgbackrest_conf(archive_plan))
    result = subprocess.run([pgbackrest, f"--config={conf}", "--stanza=main", "help", "backup"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr


INFO = [{"name": "main", "backup": [
    {"label": "20261201-100000F", "type": "full", "timestamp": {"start": 1796119200, "stop": 1796119210},
     "info": {"size": 31000000}},
    {"label": "20261201-100000F_20261202-100000D", "type": "diff",
     "timestamp": {"start": 1796205600, "stop": 1796205605}, "info": {"size": 2000}},
]}]


def test_pgbackrest_info_and_the_window():
    backups = parse_info(json.dumps(INFO), "main")
    assert [backup.type for backup in backups] == ["full", "diff"]
    assert backups[0].stopped == datetime.fromtimestamp(1796119210, timezone.utc)
    assert parse_info(json.dumps(INFO), "other") == [] and parse_info("", "main") == []
    end = backups[1].stopped + timedelta(minutes=5)
    window = window_of(backups, end)
    assert window == Window(backups[0].stopped, end)
    assert window.covers(backups[0].stopped) and not window.covers(end + timedelta(seconds=1))
    assert window_of([], end) is None and window_of(backups, None) is None


def test_a_full_backup_weekly_and_differential_ones_between():
    full = ArchiveBackup("F", "full", datetime(2026, 12, 1, tzinfo=timezone.utc),
                         datetime(2026, 12, 1, 0, 1, tzinfo=timezone.utc), 1)
    assert backup_type([], datetime(2026, 12, 1, tzinfo=timezone.utc)) == "full"
    assert backup_type([full], datetime(2026, 12, 7, tzinfo=timezone.utc)) == "diff"
    assert backup_type([full], datetime(2026, 12, 8, 0, 2, tzinfo=timezone.utc)) == "full"


def test_restore_to_takes_utc_or_an_offset_and_refuses_anything_else():
    assert parse_target("2026-12-01 10:42:00") == datetime(2026, 12, 1, 10, 42, tzinfo=timezone.utc)
    assert parse_target("2026-12-01T11:42:00+01:00") == datetime(2026, 12, 1, 10, 42, tzinfo=timezone.utc)
    with pytest.raises(DjshipError, match="not a time"):
        parse_target("yesterday")


def test_archive_is_refused_on_real_hosts_for_now(make_config):
    from djship.plan import remote_config_problems

    problems = remote_config_problems(make_config(backup=ARCHIVE))
    assert any(problem.startswith("backup.archive:") for problem in problems)


def test_the_daily_backup_with_archive_is_a_pgbackrest_one(make_plan):
    plan = make_plan(running_as_root=True, backup={**ARCHIVE, "schedule": "03:30"})
    scheduler = next(program for program in render.programs(plan) if program.name == "backup-scheduler")
    assert " archive-backup" in scheduler.command and "--note" not in scheduler.command


@pytest.mark.parametrize("verified, status, said", [
    (None, "warn", "never verified"),
    ({"at": "2026-12-01T03:30:00+00:00", "backup": "20261201-033000F", "ok": True, "tables": 12}, "pass",
     "backup 20261201-033000F restored and counted (12 tables)"),
    ({"at": "2026-12-01T03:30:00+00:00", "backup": "20261201-033000F", "ok": False, "tables": None,
      "problem": "pgbackrest verify failed"}, "fail", "20261201-033000F at 2026-12-01T03:30:00+00:00 failed"),
])
def test_the_doctor_reports_the_last_verification(archive_plan, verified, status, said):
    from djship.doctor.checks import CHECKS
    from djship.doctor.facts import Facts

    judge = next(run for run in CHECKS if run.__name__ == "archive_verified")
    result = judge(archive_plan, Facts(archive_verified=verified))
    assert result.status == status and said in result.cause, result


def test_the_doctor_warns_when_the_daily_verification_stopped(make_plan):
    from datetime import datetime, timedelta, timezone

    from djship.doctor.checks import CHECKS
    from djship.doctor.facts import Facts

    plan = make_plan(running_as_root=True, backup={**ARCHIVE, "schedule": "03:30"})
    judge = next(run for run in CHECKS if run.__name__ == "archive_verified")
    at = (datetime.now(timezone.utc) - timedelta(hours=50)).isoformat(timespec="seconds")
    result = judge(plan, Facts(archive_verified={"at": at, "backup": "20261129-033000F", "ok": True, "tables": 12}))
    assert result.status == "warn" and "was 50 hours ago" in result.cause, result
    recent = (datetime.now(timezone.utc) - timedelta(hours=20)).isoformat(timespec="seconds")
    assert judge(plan, Facts(archive_verified={"at": recent, "backup": "b", "ok": True, "tables": 12})).status == "pass"
