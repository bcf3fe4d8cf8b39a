"""backup.archive with a standby on real hosts: lb1 + app1 + db1 (primary) + db2 (standby) + the backup host bk1
(network namespaces), database.synchronous, WAL pushed at least every 5 seconds.

Both db hosts mount bk1's archive; after `djship db switchover` db2's archive_command pushes into the same
repository (its first segments on the new timeline are on bk1's disk, `pgbackrest check` passes on db2, `djship
backups` still shows the window from up's full backup) and a restore to a time after the switchover replays across
both timelines. Then the archive mount of the primary stopped: the doctor names the archive as failing; `djship up`
mounts it again and the segment written meanwhile reaches bk1. One system for the module, the tests in order. Only
the test hosts' addresses are contacted; every process the test starts is stopped by its PID. Last, the primary
(db2) unable to archive and then killed: `djship db failover` pushes the WAL it had not archived from db1, and a
restore to a time in that WAL finds its rows.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from djship.ops.failover import without_host
from tests.e2e.conftest import EXAMPLE, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_pitr import _archive_rows, _doctor_check, _fleet_titles, _note_then_drop, _restore_to_under_load
from tests.e2e.test_remote_system import FleetLoop
from tests.e2e.test_standby import Standby

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "app1", "db1", "db2", "bk1"]


def write_config(project: Path, hosts: NetnsHosts) -> None:
    lines = [
        "[project]", 'settings_module = "board.settings"', 'wsgi_application = "board.wsgi.application"', "",
        "[app]", "workers = 2", "", "[database]", "synchronous = true", "",
        "[backup]", "archive = true", "archive_timeout = 5", "",
        "[servers]", 'lb = ["lb1"]', 'app = ["app1"]', 'db = ["db1", "db2"]', 'media = "lb1"', 'backup = "bk1"', "",
        "[ssh]", f'key = "{hosts.client_key}"', f'known_hosts = "{hosts.known_hosts}"', "", *hosts.users_toml,
    ]
    for name in HOSTS:
        lines += ["", f"[hosts.{name}]", f'address = "{hosts[name].address}"', f'root = "{hosts[name].root}"']
    (project / "djship.toml").write_text("\n".join(lines) + "\n")


class ArchivedStandby(Standby):
    @property
    def port(self) -> int:
        return int(next(c["address"] for c in self.status()["components"] if c["name"] == "postgres").rsplit(":", 1)[1])

    def sql(self, host: str, sql: str) -> str:
        result = self.superuser_sql(host, self.port, sql)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def archiver(self, host: str) -> dict:
        return json.loads(self.sql(host, "SELECT json_build_object('wal', last_archived_wal, 'failed', failed_count, "
                                         "'failing', coalesce(last_failed_time > last_archived_time, false)) "
                                         "FROM pg_stat_archiver"))

    def segments_on_bk1(self) -> set[str]:
        """The WAL segments (and timeline histories) in bk1's repository, by their PostgreSQL names."""
        store = self.hosts["bk1"].root / "archive" / "archive" / "main"
        return {path.name.split("-")[0].removesuffix(".gz") for path in store.rglob("0*") if path.is_file()}

    def as_db_user(self, host: str, *argv: str) -> subprocess.CompletedProcess:
        """argv as the db user, in the host's network and mount namespaces (where its sshfs mount is)."""
        root = self.hosts[host].root
        user = pwd.getpwuid((root / "postgres" / "data").stat().st_uid).pw_name
        postgres = next(pid for pid in self.hosts[host].pids()
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres")
        return subprocess.run(
            ["nsenter", "-t", str(postgres), "-m", "-n", "--", "setpriv", f"--reuid={user}", f"--regid={user}",
             "--init-groups", "env", f"PGHOST={self.hosts[host].address}", f"PGPASSFILE={root}/pgbackrest/pgpass",
             *argv], capture_output=True, text=True, timeout=120)

    def pgbackrest(self, host: str, *args: str) -> subprocess.CompletedProcess:
        conf = self.hosts[host].root / "pgbackrest.conf"
        return self.as_db_user(host, shutil.which("pgbackrest") or "/usr/bin/pgbackrest", f"--config={conf}",
                               "--stanza=main", *args)

    def supervisorctl(self, host: str, *args: str) -> None:
        conf = self.hosts[host].root / "supervisor" / "supervisord.conf"
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args], check=True,
                       capture_output=True, timeout=60)

    def wait_archived(self, host: str, segment: str, timeout: float = 90) -> None:
        """Until the host's archiver reports segment (or a later one) archived: each try switches to a new segment,
        which wakes the archiver (it otherwise retries a failed push only once a minute)."""
        deadline = time.monotonic() + timeout
        while (self.archiver(host)["wal"] or "") < segment:
            assert time.monotonic() < deadline, (self.archiver(host), self.djship("logs", "postgres", "-n", "20", check=False).stdout)
            self.sql(host, "SELECT pg_switch_wal()")
            time.sleep(1)


@pytest.fixture(scope="module")
def fleet() -> Iterator[ArchivedStandby]:
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts)
        made = ArchivedStandby(project, hosts)
        try:
            started = time.monotonic()
            made.djship("up")
            print(f"\nup of lb1, app1, db1, db2 and bk1 with backup.archive and a standby: "
                  f"{time.monotonic() - started:.1f}s")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _mounts(fleet: ArchivedStandby) -> dict[str, tuple[str, str, str]]:
    return {c["host"]: (c["state"], c["health"], c["address"]) for c in fleet.status()["components"]
            if c["name"] == "archive-mount"}


def test_both_db_hosts_mount_the_backup_hosts_archive(fleet: ArchivedStandby):
    store = fleet.hosts["bk1"].root / "archive"
    assert _mounts(fleet) == {host: ("RUNNING", "mounted", f"bk1:{store}") for host in ("db1", "db2")}
    for host in ("db1", "db2"):
        root = fleet.hosts[host].root
        assert f"repo1-path={root / 'archive-mount'}\n" in (root / "pgbackrest.conf").read_text()
        listed = fleet.as_db_user(host, "ls", str(root / "archive-mount"))
        assert listed.returncode == 0 and listed.stdout.split() == ["archive", "backup"], listed
    [full] = _archive_rows(fleet)
    assert (full["type"], full["host"]) == ("full", "bk1"), full
    # The standby archives nothing while in recovery (archive_mode = on): only db1 pushes.
    assert fleet.archiver("db2")["wal"] is None
    assert _doctor_check(fleet, "archiving")["status"] == "pass"


def test_after_a_switchover_the_new_primary_archives_into_the_same_repository(fleet: ArchivedStandby):
    [full] = _archive_rows(fleet)
    started = time.monotonic()
    fleet.djship("db", "switchover")
    print(f"\nswitchover with the archive: {time.monotonic() - started:.1f}s")
    assert (fleet.replication()["primary"], fleet.replication()["standby"]) == ("db2", "db1")
    fleet.djship("manage", "--", "shell", "-c", "from django.db import connection; "
                 "connection.cursor().execute('CREATE TABLE after_switchover (id int); "
                 "INSERT INTO after_switchover VALUES (1)')")
    written = fleet.sql("db2", "SELECT pg_walfile_name(pg_current_wal_lsn())")
    assert written.startswith("00000002"), written  # db2's own timeline
    fleet.wait_archived("db2", written)
    on_bk1 = fleet.segments_on_bk1()
    assert written in on_bk1 and "00000002.history" in on_bk1, sorted(on_bk1)[-5:]
    checked = fleet.pgbackrest("db2", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The window still starts at up's full backup and now ends after the switchover.
    [row] = _archive_rows(fleet)
    assert row["name"] == full["name"] and row["recoverable_from"] == full["recoverable_from"], row
    assert row["recoverable_to"] > full["recoverable_to"], row
    assert "Recoverable to any second from" in fleet.djship("backups").stdout
    assert _doctor_check(fleet, "archiving")["status"] == "pass"


def test_a_restore_to_a_time_after_the_switchover_replays_both_timelines(fleet: ArchivedStandby):
    """up's full backup was taken on db1's timeline; the time noted is on db2's."""
    noted, live = _note_then_drop(fleet, _fleet_titles)
    _restore_to_under_load(fleet, FleetLoop(fleet), noted, live, _fleet_titles)


def test_the_primary_without_its_archive_mount_fails_in_the_doctor_and_catches_up_after_up(fleet: ArchivedStandby):
    fleet.supervisorctl("db2", "stop", "archive-mount")
    try:
        assert _mounts(fleet)["db2"][:2] == ("STOPPED", "down")
        fleet.djship("manage", "--", "shell", "-c", "from django.db import connection; "
                     "connection.cursor().execute('INSERT INTO after_switchover VALUES (2)')")
        pending = fleet.sql("db2", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        fleet.sql("db2", "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while not fleet.archiver("db2")["failing"]:
            assert time.monotonic() < deadline, fleet.archiver("db2")
            time.sleep(0.5)
        doctor = _doctor_check(fleet, "archiving")
        assert doctor["status"] == "fail" and "archive_command is failing" in doctor["cause"], doctor
        assert "archive-mount" in doctor["fix"] and "`djship up`" in doctor["fix"], doctor
        assert pending not in fleet.segments_on_bk1()
        print(f"\nwithout the mount: {doctor['cause']}")
    finally:
        said = fleet.djship("up").stdout
    assert "Mounting the archive of the backup host on db2" in said, said
    assert _mounts(fleet)["db2"][:2] == ("RUNNING", "mounted")
    fleet.wait_archived("db2", pending)
    assert pending in fleet.segments_on_bk1()
    info = json.loads(fleet.pgbackrest("db2", "info", "--output=json").stdout)
    assert info[0]["archive"][0]["max"] >= pending, info[0]["archive"]
    assert _doctor_check(fleet, "archiving")["status"] == "pass"


def _notes(fleet: ArchivedStandby, sql: str, then: str = "") -> str:
    return fleet.djship("manage", "--", "shell", "-c", "from django.db import connection; cursor = "
                        f"connection.cursor(); cursor.execute({sql!r}); {then}").stdout


def test_a_failover_archives_the_wal_the_dead_primary_had_not_and_a_restore_crosses_it(fleet: ArchivedStandby):
    """db2 (the primary since the switchover) cannot archive (its mount stopped): the segments it writes reach db1
    only, by streaming. Then every process of db2 is killed and `djship db failover` promotes db1, which pushes
    them; a restore to a time among them (up's full backup, then timelines 1, 2 and 3) finds its rows."""
    live = fleet.status()["database"]
    fleet.supervisorctl("db2", "stop", "archive-mount")
    _notes(fleet, "CREATE TABLE failover_notes (body text); INSERT INTO failover_notes VALUES ('kept')")
    time.sleep(1.5)
    noted = datetime.now(timezone.utc)
    time.sleep(1.5)
    _notes(fleet, "INSERT INTO failover_notes VALUES ('later')")
    unarchived = [fleet.sql("db2", "SELECT pg_walfile_name(pg_current_wal_lsn())")]
    fleet.sql("db2", "SELECT pg_switch_wal()")
    unarchived.append(fleet.sql("db2", "SELECT pg_walfile_name(pg_current_wal_lsn())"))
    fleet.sql("db2", "CREATE TABLE later_segment AS SELECT 1 AS id; SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    while not fleet.archiver("db2")["failing"]:
        assert time.monotonic() < deadline, fleet.archiver("db2")
        time.sleep(0.5)
    assert not set(unarchived) & fleet.segments_on_bk1(), unarchived
    fleet.hosts["db2"].kill()
    try:
        said = fleet.djship("db", "failover").stdout
        pushed = re.search(r"Archiving (\d+) WAL segments db2 had not archived \((\w+) to (\w+)\), from db1", said)
        assert pushed and pushed[2] <= unarchived[0] and pushed[3] >= unarchived[-1], said
        print(f"\nfailover: {pushed[0]}")
        assert set(unarchived) <= fleet.segments_on_bk1()
        config = fleet.project / "djship.toml"
        original = config.read_text()
        config.write_text(without_host(original, "db2", "db1"))  # as the failover's own `up` ran: db2 is gone
        try:
            started = time.monotonic()
            restored = fleet.djship("restore", "--to", f"{noted:%Y-%m-%d %H:%M:%S.%f}", "--yes").stdout
            print(f"restore --to across the failover: {time.monotonic() - started:.1f}s")
            # The live database as db1 knows it: the one test 3's restore made while db1 was the standby.
            assert f"Dumping database {live} as it was at" in restored, (live, restored)
            assert "Restored the database as it was at" in restored, restored
            found = _notes(fleet, "SELECT body FROM failover_notes", "print(cursor.fetchall())")
            assert found.strip().endswith("[('kept',)]"), found
        finally:
            config.write_text(original)
    finally:
        fleet.hosts.start_sshd(fleet.hosts["db2"])  # for the module's `down`
