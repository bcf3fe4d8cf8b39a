"""Continuous archiving (backup.archive): pgbackrest.conf and postgresql.conf golden, checked by pgBackRest itself;
the plan; and the pure parts of the point-in-time restore (pgbackrest info, the window, the backup type, --to)."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from djship import render
from djship.components.pgbackrest import ArchiveBackup, Window, backup_type, parse_info, window_of
from djship.errors import DjshipError
from djship.ops.pitr import parse_target

ARCHIVE = {"archive": True, "archive_timeout": 5}


@pytest.fixture
def archive_plan(make_plan):
    return make_plan(running_as_root=True, app={"servers": 2}, backup=ARCHIVE)


@pytest.mark.parametrize("name, renderer", [("pgbackrest.conf", render.pgbackrest_conf),
                                            ("postgresql-archive.conf", render.postgresql_conf)])
def test_rendering_matches_the_golden_file(archive_plan, matches_golden, name, renderer):
    matches_golden(name, renderer(archive_plan))


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


def test_pgbackrest_accepts_the_rendered_config(archive_plan, pgbackrest_accepts):
    """pgBackRest parses the file: an unknown or misspelt option fails here."""
    pgbackrest_accepts(render.pgbackrest_conf(archive_plan))


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


HOST_ADDRESSES = {"lb1": "10.0.0.2", "app1": "10.0.0.11", "db1": "10.0.0.20", "bk1": "10.0.0.40"}
HOST_ROLES = {"lb1": ("lb",), "app1": ("app",), "db1": ("db",), "bk1": ("backup",)}


def host_plans(make_config, tools, backup_host: bool = True) -> dict:
    from pathlib import Path

    from djship.plan import HostSpec, build_plans

    roles = HOST_ROLES if backup_host else {name: r for name, r in HOST_ROLES.items() if name != "bk1"}
    servers = {"lb": ["lb1"], "app": ["app1"], "db": "db1", **({"backup": "bk1"} if backup_host else {})}
    config = make_config(servers=servers, hosts={name: {"address": HOST_ADDRESSES[name]} for name in roles},
                         backup=ARCHIVE)
    return build_plans(config, Path("/srv/example/board"),
                       [HostSpec(name, HOST_ADDRESSES[name], roles[name], Path("/srv") / name, tools, True)
                        for name in roles])


@pytest.fixture
def plans_with_backup_host(make_config, fake_tools):
    return host_plans(make_config, fake_tools)


def test_on_hosts_without_a_backup_host_the_archive_is_refused_naming_servers_backup(make_config, fake_tools):
    with pytest.raises(DjshipError) as refused:
        host_plans(make_config, fake_tools, backup_host=False)
    assert str(refused.value) == ("djship.toml: backup.archive: on real hosts pgBackRest's repository is kept on the "
                                  "backup host, never on the db host; name one in servers.backup, or remove "
                                  "backup.archive")


def test_on_hosts_the_repository_is_the_backup_hosts_mounted_on_the_db_host(plans_with_backup_host):
    from pathlib import Path

    db1, bk1 = plans_with_backup_host["db1"], plans_with_backup_host["bk1"]
    archive = db1.backup.archive
    assert (archive.repo, archive.store) == (Path("/srv/db1/archive-mount"), Path("/srv/bk1/archive"))
    assert archive.scratch_lock == Path("/srv/db1/archive-scratch.lock")
    assert f"repo1-path={archive.repo}\n" in render.pgbackrest_conf(db1)
    assert db1.mounts_archive and not bk1.mounts_archive and not plans_with_backup_host["app1"].mounts_archive
    assert [program.name for program in render.programs(db1)][:2] == ["archive-mount", "postgres"]
    assert "archive-mount" not in [program.name for program in render.programs(bk1)]


def test_the_archive_mount_is_the_media_mount_with_the_backup_hosts_key_for_the_db_user(plans_with_backup_host):
    db1 = plans_with_backup_host["db1"]
    sh, flag, script = shlex.split(render.archive_mount_command(db1))
    assert (sh, flag) == ("/bin/sh", "-c") and subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert script.startswith("fusermount3 -u -z /srv/db1/archive-mount 2>/dev/null; exec sshfs -f ")
    assert "IdentityFile=/srv/db1/secrets/backup_ed25519" in script
    assert "UserKnownHostsFile=/srv/db1/secrets/backup_known_hosts" in script and "StrictHostKeyChecking=yes" in script
    assert "allow_other,default_permissions,uid=$(id -u djship-db),gid=$(id -g djship-db)" in script
    assert script.endswith(" djship-backup@10.0.0.40:/srv/bk1/archive /srv/db1/archive-mount")


def test_a_new_key_or_host_key_restarts_the_archive_mount(plans_with_backup_host):
    from djship.components import offsite
    from djship.components.media import Access, new_private_key

    access = Access(new_private_key(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0fake")
    files = offsite.desired_files(plans_with_backup_host["db1"], access)
    assert {file.path.name: file.programs for file in files} == {"backup_ed25519": ("archive-mount",),
                                                                  "backup_known_hosts": ("archive-mount",)}


def test_the_db_host_needs_pgbackrest_and_sshfs_with_an_archive_on_hosts(make_config, tmp_path):
    from djship.hosts import remote_hosts, requirements_for

    config = make_config(servers={"lb": ["lb1"], "app": ["app1"], "db": "db1", "backup": "bk1"},
                         hosts={name: {"address": address} for name, address in HOST_ADDRESSES.items()},
                         backup=ARCHIVE)
    db1 = next(host for host in remote_hosts(config, tmp_path) if host.name == "db1")
    assert {"pgbackrest", "sshfs"} <= {requirement.package for requirement in requirements_for(db1.roles, db1.features)}


@pytest.mark.parametrize("name, renderer", [("pgbackrest-db1.conf", render.pgbackrest_conf),
                                            ("supervisord-archive-db1.conf", render.supervisord_conf)])
def test_the_db_hosts_files_match_the_golden_file(plans_with_backup_host, matches_golden, name, renderer):
    matches_golden(name, renderer(plans_with_backup_host["db1"]))


def test_pgbackrest_accepts_the_db_hosts_config(plans_with_backup_host, pgbackrest_accepts):
    pgbackrest_accepts(render.pgbackrest_conf(plans_with_backup_host["db1"]))


def test_the_lock_on_a_host_refuses_a_second_holder_naming_the_first_and_frees_when_its_input_ends(short_tmp):
    """The script SSHConnector.lock runs on the host, run here by sh: flock(1) holds the lock for as long as the
    channel's input is open; djship.deploy.lock.exclusive (the agent's, on the db host) sees the same lock."""
    from djship.connectors.ssh import _LOCK, LOCK_BUSY
    from djship.deploy.lock import exclusive

    path = short_tmp / "archive-scratch.lock"
    first = subprocess.Popen(["sh", "-c", _LOCK, "lock", str(path), "a restore by pid 1"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == b"locked\n"
        second = subprocess.run(["sh", "-c", _LOCK, "lock", str(path), "another"], input=b"", capture_output=True)
        assert (second.returncode, second.stdout) == (LOCK_BUSY, b"a restore by pid 1\n")
        with pytest.raises(DjshipError, match=r"^busy \(a restore by pid 1\); wait"):
            with exclusive(path, "a verification", busy="busy"):
                pass
    finally:
        first.stdin.close()
        first.wait(timeout=10)
    with exclusive(path, "a verification", busy="busy"):
        pass


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


def test_a_db_host_that_also_mounts_the_uploads_needs_sshfs_once():
    from djship.hosts import requirements_for

    packages = [requirement.package for requirement in requirements_for(("app", "db"), frozenset({"mounts", "archives"}))]
    assert packages.count("sshfs") == 1 and "pgbackrest" in packages


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
