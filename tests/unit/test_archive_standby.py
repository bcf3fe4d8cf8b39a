"""backup.archive with a standby (servers.db = ["db1", "db2"]) on hosts: both db hosts mount the backup host's
archive, the standby's files (golden, checked by pgBackRest), and the doctor's check of archive_command."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from djship import render
from djship.components import offsite
from djship.components.media import Access, new_private_key
from djship.doctor.checks import CHECKS
from djship.doctor.facts import Facts
from djship.hosts import remote_hosts, requirements_for
from djship.plan import Plan, build_plans
from tests.unit.test_host_plans import specs

ADDRESSES = {"lb1": "10.0.0.2", "app1": "10.0.0.11", "db1": "10.0.0.20", "db2": "10.0.0.21", "bk1": "10.0.0.40"}
ROLES = {"lb1": ("lb", "media"), "app1": ("app",), "db1": ("db",), "db2": ("standby",), "bk1": ("backup",)}
ACCESS = Access(new_private_key(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0fake")


def config(make_config):
    return make_config(servers={"lb": ["lb1"], "app": ["app1"], "db": ["db1", "db2"], "media": "lb1", "backup": "bk1"},
                       hosts={name: {"address": address} for name, address in ADDRESSES.items()},
                       database={"synchronous": True}, backup={"archive": True, "archive_timeout": 5})


@pytest.fixture
def plans(make_config, fake_tools) -> dict[str, Plan]:
    return build_plans(config(make_config), Path("/srv/example/board"),
                       specs(fake_tools, roles=ROLES, addresses=ADDRESSES))


def test_both_db_hosts_mount_the_archive_each_in_its_own_root(plans):
    db1, db2 = plans["db1"], plans["db2"]
    assert db1.mounts_archive and db2.mounts_archive
    assert not any(plans[name].mounts_archive for name in ("lb1", "app1", "bk1"))
    assert (db2.backup.archive.repo, db2.backup.archive.store) == (Path("/srv/db2/archive-mount"), Path("/srv/bk1/archive"))
    assert db1.backup.archive.repo == Path("/srv/db1/archive-mount")
    assert [program.name for program in render.programs(db2)] == ["archive-mount", "postgres"]
    _, _, script = shlex.split(render.archive_mount_command(db2))
    assert "IdentityFile=/srv/db2/secrets/backup_ed25519" in script
    assert script.endswith(" djship-backup@10.0.0.40:/srv/bk1/archive /srv/db2/archive-mount")
    # Only the primary takes and sends the daily backups; the standby only mounts the archive.
    assert db1.sends_backups and not db2.sends_backups and not db2.runs_agent


def test_the_backup_host_accepts_the_key_from_both_db_hosts_only(plans):
    [authorized] = offsite.desired_files(plans["bk1"], ACCESS)
    assert authorized.text.startswith('restrict,command="internal-sftp",from="10.0.0.20,10.0.0.21" ssh-ed25519 ')
    files = offsite.desired_files(plans["db2"], ACCESS)
    assert {file.path: file.programs for file in files} == {
        Path("/srv/db2/secrets/backup_ed25519"): ("archive-mount",),
        Path("/srv/db2/secrets/backup_known_hosts"): ("archive-mount",)}
    assert offsite.desired_files(plans["app1"], ACCESS) == []


def test_the_standby_archives_nothing_until_promoted_and_then_into_the_same_stanza(plans):
    """archive_mode = on on both (pgBackRest refuses `always`: two archivers of one stanza): the standby's archiver
    stays idle in recovery; promoted, it pushes with the same archive_command into the same stanza."""
    db1, db2 = (render.postgresql_conf(plans[name]) for name in ("db1", "db2"))
    for conf, name in ((db1, "db1"), (db2, "db2")):
        assert "archive_mode = on\n" in conf
        assert f"--config=/srv/{name}/pgbackrest.conf --stanza=main archive-push %p'" in conf
    stanza = render.pgbackrest_conf(plans["db2"])
    assert "repo1-path=/srv/db2/archive-mount\n" in stanza and "[main]\npg1-path=/srv/db2/postgres/data\n" in stanza


@pytest.mark.parametrize("name, renderer", [("pgbackrest-db2.conf", render.pgbackrest_conf),
                                            ("supervisord-archive-db2.conf", render.supervisord_conf)])
def test_the_standbys_files_match_the_golden_file(plans, matches_golden, name, renderer):
    matches_golden(name, renderer(plans["db2"]))


def test_pgbackrest_accepts_the_standbys_config(plans, pgbackrest_accepts):
    pgbackrest_accepts(render.pgbackrest_conf(plans["db2"]))


def test_the_standby_host_gets_pgbackrest_and_sshfs(make_config, tmp_path):
    db2 = next(host for host in remote_hosts(config(make_config), tmp_path) if host.name == "db2")
    packages = {requirement.package for requirement in requirements_for(db2.roles, db2.features)}
    assert {"pgbackrest", "sshfs"} <= packages and "openssh-client" not in packages


def _judge(plan: Plan, archiver: dict | None):
    judge = next(run for run in CHECKS if run.__name__ == "archiving")
    return judge(plan, Facts(archiver=archiver))


def test_the_doctor_fails_while_archive_command_fails_and_passes_once_it_pushes_again(plans):
    now = time.time()
    failing = _judge(plans["db1"], {"last": now - 120, "failed": 7, "last_failed": now - 3})
    assert failing.status == "fail"
    assert failing.cause.startswith("archive_command is failing (7 failures, the last at ")
    assert "the archive is behind" in failing.cause
    assert "archive-mount mounted; `djship up` starts it" in failing.fix and "backup host bk1" in failing.fix
    assert _judge(plans["db1"], {"last": now - 1, "failed": 7, "last_failed": now - 3}).status == "pass"
    assert _judge(plans["db1"], {"last": now - 1, "failed": 0, "last_failed": None}).status == "pass"
    assert _judge(plans["db1"], {"last": None, "failed": 2, "last_failed": now}).status == "fail"
    assert _judge(plans["db1"], {"last": None, "failed": 0, "last_failed": None}).status == "warn"
    assert _judge(plans["db1"], None).status == "warn"


def test_without_an_archive_the_doctor_has_nothing_to_check(make_plan):
    assert _judge(make_plan(), None).status == "pass"


def test_a_failover_saves_the_complete_segments_the_dead_primary_had_not_archived():
    from djship.components.pgbackrest import unarchived_segments

    size = 16 * 1024 * 1024
    pg_wal = ["000000010000000000000007", "000000010000000000000008", "000000010000000000000009",
              "00000001000000000000000A", "00000001000000000000000B", "00000001000000000000000C",
              "00000001.history", "archive_status", "000000010000000000000009.partial", "000000020000000000000009"]
    # Archived up to 8; the standby was replaying segment 0B (0/0B000028): 9 and 0A are complete and not archived;
    # 0B is archived by PostgreSQL itself as .partial at the promotion, and 0C is a recycled file with a future name.
    assert unarchived_segments(pg_wal, "000000010000000000000008", "0/B000028", size) == [
        "000000010000000000000009", "00000001000000000000000A"]
    assert unarchived_segments(pg_wal, "00000001000000000000000A", "0/B000028", size) == []
    # Another timeline's segments are not the dead primary's; a segment number across the 4 GB boundary counts on.
    assert unarchived_segments(["0000000200000000000000FF", "000000020000000100000000"], "0000000200000000000000FE",
                               "1/1000000", size) == ["0000000200000000000000FF", "000000020000000100000000"]
    assert unarchived_segments(["000000020000000000000009"], "000000010000000000000008", "0/B000028", size) == []
