"""A backup host (servers.backup): every backup, `djship backup`'s and the daily one of backup.schedule, is taken on
the db host by djship's agent and sent to the backup host over SFTP, as an SFTP-only user that accepts the db host's
key only; nothing stays on the db host; `djship restore` brings one back from there under load with no failed
request.

Hosts are network namespaces (10.247.x.y) the fixture makes and deletes: lb1, app1 (two app servers), db1 (the
database and, since the backup host archives them there, the uploads) and bk1.
"""

from __future__ import annotations

import json
import pwd
import shutil
import time
from pathlib import Path

import pytest

from djship.config import with_values
from tests.e2e.conftest import EXAMPLE, OFFSET, run_djship, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import CREATE_POSTS, _a_minute_ahead
from tests.e2e.test_remote_system import Fleet, FleetLoop, write_config

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "app1", "db1", "bk1"]


@pytest.fixture(scope="module")
def fleet():
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1"])
        config = project / "djship.toml"
        config.write_text(config.read_text().replace('db = "db1"', 'db = "db1"\nbackup = "bk1"') + "\n".join([
            "", "[hosts.bk1]", f'address = "{hosts["bk1"].address}"', f'root = "{hosts["bk1"].root}"', ""]))
        made = Fleet(project, hosts)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _backups(fleet: Fleet) -> list[dict]:
    return json.loads(fleet.djship("backups", "--json").stdout)


def _titles(fleet: Fleet) -> set[str]:
    answer = fleet.get("/api/posts/")
    return {post["title"] for post in json.loads(answer.body)["posts"]}


def _kept(fleet: Fleet, host: str) -> list[str]:
    directory = fleet.hosts[host].root / "backups"
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


def test_djship_backup_lands_on_the_backup_host_and_nothing_stays_on_the_db_host(fleet: Fleet):
    fleet.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["kept off the db host"]))
    result = fleet.djship("backup")
    assert "Backed up" in result.stdout and "sending it to bk1" in result.stdout
    [entry] = _backups(fleet)
    assert entry["host"] == "bk1" and Path(entry["path"]).parent == fleet.hosts["bk1"].root / "backups"
    path = Path(entry["path"])
    assert sorted(p.name for p in path.iterdir()) == ["database.dump", "manifest.json", "media.tar"]
    assert {pwd.getpwuid(p.stat().st_uid).pw_name for p in [path, *path.iterdir()]} == {f"djship-backup-t{OFFSET}"}
    assert {p.stat().st_mode & 0o777 for p in path.iterdir()} == {0o600} and path.stat().st_mode & 0o777 == 0o700
    assert _kept(fleet, "db1") == []
    assert json.loads((path / "manifest.json").read_text())["rows"]["public.posts_post"] == len(_titles(fleet))


def test_the_db_hosts_key_opens_sftp_only_and_from_the_db_host_only(fleet: Fleet):
    secrets = fleet.hosts["db1"].root / "secrets"
    ssh = ["ssh", "-i", str(secrets / "backup_ed25519"), "-o", f"UserKnownHostsFile={secrets / 'backup_known_hosts'}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"djship-backup-t{OFFSET}@{fleet.hosts['bk1'].address}", "id"]
    from_db = fleet.in_namespace("db1", *ssh)
    assert from_db.returncode != 0 and "This service allows sftp connections only." in from_db.stdout + from_db.stderr
    from_app = fleet.in_namespace("app1", *ssh)
    assert from_app.returncode != 0 and "Permission denied" in from_app.stderr


def test_the_daily_backup_goes_to_the_backup_host_and_restores_from_there_without_a_failed_request(fleet: Fleet):
    config = fleet.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"backup.schedule": _a_minute_ahead()}))
    fleet.djship("up")
    scheduler = next(c for c in fleet.status()["components"] if c["name"] == "backup-scheduler")
    assert scheduler["host"] == "db1" and "on bk1" in json.dumps(scheduler), scheduler
    at_backup = _titles(fleet)
    deadline = time.monotonic() + 240
    while not (daily := [row for row in _backups(fleet) if row["note"] == "daily"]):
        assert time.monotonic() < deadline, fleet.djship("logs", "backup-scheduler", "-n", "40").stdout
        time.sleep(5)
    assert daily[0]["host"] == "bk1"
    # Listed on bk1 once sent; the run then removes its outgoing directory on db1.
    while _kept(fleet, "db1") != []:
        assert time.monotonic() < deadline, _kept(fleet, "db1")
        time.sleep(0.5)
    fleet.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["after the daily backup"]))
    assert _titles(fleet) != at_backup

    with FleetLoop(fleet) as load:
        result = fleet.djship("restore", daily[0]["name"], "--yes")
        load.wait_for(load.served + 50)
    assert load.failures == [] and "Restored" in result.stdout
    assert _titles(fleet) == at_backup
    # The safety backup the restore took went to the backup host too.
    assert {row["host"] for row in _backups(fleet)} == {"bk1"} and len(_backups(fleet)) == 3


def test_destroy_deletes_the_system_but_not_the_backups_on_the_backup_host(fleet: Fleet):
    kept = _kept(fleet, "bk1")
    refused = fleet.djship("destroy", check=False)
    assert refused.returncode != 0 and "the backups stay" in refused.stderr
    fleet.djship("destroy", "--yes")
    assert _kept(fleet, "bk1") == kept and len(kept) == 3
    assert sorted(path.name for path in fleet.hosts["bk1"].root.iterdir()) == ["backups"]
    assert not (fleet.hosts["db1"].root / "postgres").exists()
