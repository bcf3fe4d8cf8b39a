"""Continuous archiving and point-in-time restore (backup.archive, pgBackRest), on one machine (the archive in
backup.dir) and on hosts (lb1, app1, db1 and the backup host bk1, network namespaces 10.247.x.y: the archive on bk1,
mounted on db1 with sshfs); WAL pushed at least every 5 seconds.

One system for the module; the tests run in order: rows written and a table made, the time noted, the table dropped
and more rows written, then `restore --to` that time under 4 threads of requests; then a time outside the window,
which must change nothing; then `backup verify`, a file of the full backup corrupted, `backup verify` again; then the
daily backup (a minute ahead), whose verification of what it took fails too. On hosts: where the repository's files
are, `backup verify` of up's first full backup, `restore --to` under load, the daily backup (verified). Only loopback addresses and the test
hosts' are contacted.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from djship.components.probe import Response
from djship.config import with_values
from tests.e2e.conftest import EXAMPLE, OFFSET, Ports, RequestLoop, Site, make_project, run_djship, \
    searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import _a_minute_ahead
from tests.e2e.test_remote_system import Fleet, FleetLoop, write_config

pytestmark = pytest.mark.e2e

PITR_PORTS = Ports.of(https=33443, http=33080, database=13432, app_prefix="127.0.131", database_address="127.0.132.1")
CREATE_POSTS = (
    "from django.contrib.auth.models import User; from posts.models import Post; "
    "author, _ = User.objects.get_or_create(username='pitr-test'); "
    "[Post.objects.create(author=author, title=title, body='written by the ORM') for title in {titles!r}]"
)
RUN_SQL = "from django.db import connection; cursor = connection.cursor(); cursor.execute({sql!r}); {then}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with searchable_directory() as directory:
        project = make_project(directory, PITR_PORTS)
        config = project / "djship.toml"
        config.write_text(with_values(config.read_text(), {"backup.archive": True, "backup.archive_timeout": 5}))
        running = Site(project, PITR_PORTS)
        try:
            running.up()
            yield running
        finally:
            running.stop_everything()


def _sql(site: Site, sql: str, then: str = "") -> str:
    return site.djship("manage", "--", "shell", "-c", RUN_SQL.format(sql=sql, then=then)).stdout


def _titles(site: Site) -> set[str]:
    session = site.session()
    response = session.get(site.url + "/api/posts/", timeout=30)
    assert response.status_code == 200, response.text
    return {post["title"] for post in response.json()["posts"]}


def _archive_rows(site: Site) -> list[dict]:
    return [row for row in json.loads(site.djship("backups", "--json").stdout) if row["kind"] == "archive"]


def test_up_takes_a_first_full_backup_and_shows_the_window(site: Site):
    [full] = _archive_rows(site)
    assert full["type"] == "full" and full["recoverable_from"] == full["created"]
    listing = site.djship("backups").stdout
    assert "Recoverable to any second from" in listing, listing
    assert (site.project / ".djship" / "backups" / "archive" / "archive" / "main").is_dir()


def test_backup_takes_a_differential_one_and_dump_still_a_pg_dump(site: Site):
    said = site.djship("backup").stdout
    assert "into the archive" in said and "diff" in said, said
    dumped = site.djship("backup", "--dump").stdout
    assert "Backed up database" in dumped, dumped
    kinds = [row["kind"] for row in json.loads(site.djship("backups", "--json").stdout)]
    assert kinds.count("archive") == 2 and kinds.count("dump") == 1, kinds


def _note_then_drop(target, titles) -> tuple[datetime, str]:
    """Two posts and a table, the time noted, then the table dropped and a third post: what a restore to that time
    undoes. The time and the live database."""
    target.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["before-1", "before-2"]))
    _sql(target, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
    time.sleep(1.5)
    noted = datetime.now(timezone.utc)
    time.sleep(1.5)
    _sql(target, "DROP TABLE notes")
    target.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["after-1"]))
    assert {"before-1", "before-2", "after-1"} <= titles(target)
    return noted, target.status()["database"]


def _restore_to_under_load(target, loop, noted: datetime, live: str, titles) -> None:
    """`restore --to` the noted time while loop's 4 threads make requests: none fails, the posts and the table of
    that time are back, the later post is not, and the live database is a new one."""
    started = time.monotonic()
    with loop as load:
        said = target.djship("restore", "--to", f"{noted:%Y-%m-%d %H:%M:%S.%f}", "--yes").stdout
        load.wait_for(load.served + 20)
    took = time.monotonic() - started
    restored = next(line for line in said.splitlines() if line.startswith("Restored"))
    print(f"\nrestore --to under 4 threads: {load.served} requests, {len(load.failures)} failed, {took:.1f}s; {restored}")
    assert load.failures == [], load.failures[:5]
    assert "Restored the database as it was at" in said and "0 failed" in said, said
    found = titles(target)
    assert {"before-1", "before-2"} <= found and "after-1" not in found, found
    assert "kept" in _sql(target, "SELECT body FROM notes", "print(cursor.fetchall())")
    assert target.status()["database"] != live


def test_restore_to_a_time_brings_back_a_dropped_table_and_not_later_writes(site: Site):
    noted, live = _note_then_drop(site, _titles)
    _restore_to_under_load(site, RequestLoop(site, threads=4), noted, live, _titles)


def _databases(site: Site) -> list[tuple[str, bool]]:
    """The app's databases and which is live (not their size: the live one's grows with every session)."""
    return [(row["name"], row["live"]) for row in json.loads(site.djship("databases", "--json").stdout)]


def test_a_time_outside_the_window_is_refused_and_changes_nothing(site: Site):
    before = (site.status()["database"], _databases(site), _titles(site))
    for moment in (datetime.now(timezone.utc) + timedelta(hours=1), datetime(2000, 1, 1, tzinfo=timezone.utc)):
        result = site.djship("restore", "--to", f"{moment:%Y-%m-%d %H:%M:%S}", "--yes", check=False)
        error = result.stderr.strip()
        assert result.returncode == 1 and len(error.splitlines()) == 1, (result.stdout, error)
        assert "Traceback" not in result.stdout + result.stderr
        assert "the archive has no WAL for that time" in error and "nothing was changed" in error, error
    after = (site.status()["database"], _databases(site), _titles(site))
    assert after == before


def _shared_file(site: Site) -> Path:
    """The largest file of the full backup that no later backup holds a copy of: every differential one restores it
    from the full, so each verification that follows restores it."""
    stanza = site.project / ".djship" / "backups" / "archive" / "backup" / "main"
    [full] = [row["name"] for row in _archive_rows(site) if row["type"] == "full"]
    later = {path.relative_to(stanza / row["name"]) for row in _archive_rows(site) if row["name"] != full
             for path in (stanza / row["name"]).rglob("*") if path.is_file()}
    files = [path for path in (stanza / full / "pg_data").rglob("*")
             if path.is_file() and path.relative_to(stanza / full) not in later]
    return max(files, key=lambda path: path.stat().st_size)


def _doctor_check(site: Site, check_id: str) -> dict:
    document = json.loads(site.djship("doctor", "--json", check=False).stdout)
    return next(check for check in document["checks"] if check["id"] == check_id)


def test_backup_verify_restores_the_newest_backup_and_a_corrupted_file_fails_in_status_and_doctor(site: Site):
    said = site.djship("backup", "verify").stdout
    assert "Verified backup" in said and "it restores" in said, said
    verified = site.status()["archive_verified"]
    assert verified["ok"] is True and verified["tables"] > 0, verified
    assert _doctor_check(site, "archive-verified")["status"] == "pass"

    newest = _archive_rows(site)[-1]["name"]
    largest = _shared_file(site)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))

    result = site.djship("backup", "verify", check=False)
    error = result.stderr.strip()
    assert result.returncode == 1 and len(error.splitlines()) == 1, (result.stdout, error)
    assert f"backup {newest} of the archive failed its verification" in error, error
    failed = site.status()["archive_verified"]
    assert failed["ok"] is False and failed["backup"] == newest and failed["at"] >= verified["at"], failed
    doctor = _doctor_check(site, "archive-verified")
    assert doctor["status"] == "fail" and newest in doctor["cause"], doctor
    print(f"\ncorrupted {largest.name} ({largest.stat().st_size} bytes): {failed['problem']}")


def test_the_daily_backup_verifies_what_it_took_and_its_failure_shows_in_status_and_doctor(site: Site):
    """After the corrupted file above: the daily run takes a differential backup, which restores that file from
    the full one, so its verification fails."""
    before = {row["name"] for row in _archive_rows(site)}
    asked = datetime.now(timezone.utc).isoformat(timespec="seconds")
    config = site.project / "djship.toml"
    # The first whole minute at least 90 s ahead: time for `up`.
    schedule = (datetime.now(timezone.utc) + timedelta(seconds=90)).strftime("%H:%M")
    config.write_text(with_values(config.read_text(), {"backup.schedule": schedule}))
    site.djship("up")
    deadline = time.monotonic() + 300
    while (verified := site.status()["archive_verified"])["at"] < asked:
        assert time.monotonic() < deadline, site.djship("logs", "backup-scheduler", "-n", "40").stdout
        time.sleep(5)
    [taken] = [row["name"] for row in _archive_rows(site) if row["name"] not in before]
    assert verified["ok"] is False and verified["backup"] == taken, verified
    doctor = _doctor_check(site, "archive-verified")
    assert doctor["status"] == "fail" and taken in doctor["cause"], doctor
    logs = site.djship("logs", "backup-scheduler", "-n", "40").stdout
    assert f"backup {taken} of the archive failed its verification" in logs, logs


# -- on hosts: the repository on the backup host, mounted on the db host ---------------------------------------------

HOSTS = ["lb1", "app1", "db1", "bk1"]
# The on-hosts half is a group of its own (tests/conftest.py): under xdist it runs beside the one-machine half.
ONE_MACHINE, ON_HOSTS = "one machine", "netns hosts"


@pytest.fixture(scope="module", params=[ON_HOSTS])
def fleet() -> Iterator[Fleet]:
    """lb1, app1, db1 and the backup host bk1 (network namespaces), with backup.archive; `up` timed."""
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1"])
        config = project / "djship.toml"
        text = config.read_text().replace('db = "db1"', 'db = "db1"\nbackup = "bk1"') + "\n".join([
            "", "[hosts.bk1]", f'address = "{hosts["bk1"].address}"', f'root = "{hosts["bk1"].root}"', ""])
        config.write_text(with_values(text, {"backup.archive": True, "backup.archive_timeout": 5}))
        made = Fleet(project, hosts)
        try:
            started = time.monotonic()
            made.djship("up")
            print(f"\nup of lb1, app1, db1 and bk1 with backup.archive: {time.monotonic() - started:.1f}s")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _fleet_titles(fleet: Fleet) -> set[str]:
    answer = fleet.get("/api/posts/")
    assert isinstance(answer, Response) and answer.status == 200, answer
    return {post["title"] for post in json.loads(answer.body)["posts"]}


def _owners(paths: list[Path]) -> set[str]:
    return {pwd.getpwuid(path.stat().st_uid).pw_name for path in paths}


def test_on_hosts_the_repository_is_on_the_backup_host_and_mounted_on_the_db_host(fleet: Fleet):
    [full] = _archive_rows(fleet)
    store = fleet.hosts["bk1"].root / "archive"
    assert (full["type"], full["host"], full["path"]) == ("full", "bk1", str(store)), full
    assert "Recoverable to any second from" in fleet.djship("backups").stdout
    # The files themselves are on bk1's disk, the SFTP user's: the backup and the WAL segments archived since.
    segments = [path for path in (store / "archive" / "main").rglob("0*") if path.is_file()]
    backup = [path for path in (store / "backup" / "main" / full["name"]).rglob("*") if path.is_file()]
    assert segments and len(backup) > 100, (segments, len(backup))
    assert _owners([*segments, *backup]) == {f"djship-backup-t{OFFSET}"}
    # On db1, pgBackRest writes only into the mount (nothing of the repository on db1's disk) ...
    db1 = fleet.hosts["db1"].root
    assert f"repo1-path={db1 / 'archive-mount'}\n" in (db1 / "pgbackrest.conf").read_text()
    on_disk = [path for path in db1.rglob("*.info") if "archive-mount" not in path.parts]
    assert on_disk == [], on_disk
    # ... which is bk1's directory over sshfs, as the db host's processes see it (their mount namespace).
    sshfs = next(pid for pid in fleet.hosts["db1"].pids()
                 if Path(f"/proc/{pid}/comm").read_text().strip() == "sshfs")
    mounted = subprocess.run(["nsenter", "-t", str(sshfs), "-m", "--", "findmnt", "-no", "SOURCE,FSTYPE",
                              "--mountpoint", str(db1 / "archive-mount")], capture_output=True, text=True, timeout=30)
    source = f"djship-backup-t{OFFSET}@{fleet.hosts['bk1'].address}:{store}"
    assert mounted.stdout.split() == [source, "fuse.sshfs"], (mounted.stdout, mounted.stderr)
    mount = next(c for c in fleet.status()["components"] if c["name"] == "archive-mount")
    assert (mount["host"], mount["role"], mount["state"], mount["health"]) == ("db1", "archive", "RUNNING", "mounted")
    assert mount["address"] == f"bk1:{store}", mount


def test_on_hosts_backup_verify_restores_the_first_full_backup_and_shows_in_status_and_the_doctor(fleet: Fleet):
    """The first full backup, which `up` takes once the release migrated the database: it holds the app's tables."""
    said = fleet.djship("backup", "verify").stdout
    assert "Verified backup" in said and "it restores" in said, said
    verified = fleet.status()["archive_verified"]
    [full] = _archive_rows(fleet)
    assert verified["ok"] is True and verified["tables"] > 0 and verified["backup"] == full["name"], verified
    assert _doctor_check(fleet, "archive-verified")["status"] == "pass"


def test_on_hosts_restore_to_a_time_brings_back_a_dropped_table_with_no_failed_request(fleet: Fleet):
    noted, live = _note_then_drop(fleet, _fleet_titles)
    _restore_to_under_load(fleet, FleetLoop(fleet), noted, live, _fleet_titles)
    assert not (fleet.hosts["db1"].root / "pgbackrest" / "scratch").exists()  # the scratch cluster is gone


def test_on_hosts_the_daily_backup_runs_on_the_db_host_into_the_backup_hosts_archive_and_verifies_it(fleet: Fleet):
    before = {row["name"] for row in _archive_rows(fleet)}
    asked = datetime.now(timezone.utc).isoformat(timespec="seconds")
    config = fleet.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"backup.schedule": _a_minute_ahead()}))
    fleet.djship("up")
    deadline = time.monotonic() + 300
    while (fleet.status()["archive_verified"] or {"at": ""})["at"] < asked:
        assert time.monotonic() < deadline, fleet.djship("logs", "backup-scheduler", "-n", "40").stdout
        time.sleep(5)
    [taken] = [row for row in _archive_rows(fleet) if row["name"] not in before]
    assert taken["host"] == "bk1" and (fleet.hosts["bk1"].root / "archive" / "backup" / "main" /
                                       taken["name"]).is_dir(), taken
    verified = fleet.status()["archive_verified"]
    assert verified["ok"] is True and verified["backup"] == taken["name"] and verified["tables"] > 0, verified
    logs = fleet.djship("logs", "backup-scheduler", "-n", "40").stdout
    assert f"verified backup {taken['name']}: restored into a scratch cluster" in logs, logs
