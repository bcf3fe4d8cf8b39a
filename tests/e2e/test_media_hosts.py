"""Uploads shared by every app host: 1 lb + 3 app + 1 db netns hosts, the db host holding the media (the default).

Each app host mounts the db host's media directory with a supervised sshfs. The hosts share this machine's file
system but not its mounts (each host's sshd runs in a mount namespace of its own), so a file saved on app1 reaches
app2 only through the mount: the test checks that it is absent beneath each app host's mount point. A restore
puts the backed-up media once on the media host, and every app host serves them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from djship.config import with_values
from djship.connectors.ssh import SSHConnector, SSHTarget
from djship.deploy.release import Release
from tests.e2e.conftest import EXAMPLE, OFFSET, run_djship, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_remote_system import ROLES, Fleet, FleetLoop, write_config

pytestmark = pytest.mark.e2e

APPS = ("app1", "app2", "app3")
# The smallest valid PNG: what an ImageField upload would store.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
SAVE = ("from django.core.files.base import ContentFile; from django.core.files.storage import default_storage; "
        "print(default_storage.save({name!r}, ContentFile(bytes.fromhex({data!r}))))")
FETCH = """
import hashlib, ssl, sys, urllib.request, urllib.error
ask = urllib.request.Request(sys.argv[1], headers={"Host": "localhost", "X-Forwarded-Proto": "https"})
try:
    with urllib.request.urlopen(ask, timeout=10, context=ssl.create_default_context(cafile=sys.argv[2])) as answer:
        print(answer.status, answer.headers["X-Djship-Server"], hashlib.sha256(answer.read()).hexdigest())
except urllib.error.HTTPError as error:
    print(error.code, error.headers["X-Djship-Server"], "-")
"""


@pytest.fixture(scope="module")
def fleet():
    with netns_hosts(list(ROLES)) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, list(APPS))
        made = Fleet(project, hosts)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def save_on(fleet: Fleet, host: str, name: str) -> str:
    """Save a file through Django's default storage in the live release on that host, as the app does; its name."""
    root = fleet.hosts[host].root
    release = Release("current", root / "current")
    target = SSHTarget(fleet.hosts[host].address, key_file=fleet.hosts.client_key, known_hosts=fleet.hosts.known_hosts)
    with SSHConnector(target) as connector:
        result = connector.run([str(release.python), str(release.app / "manage.py"), "shell", "-c",
                                SAVE.format(name=name, data=PNG.hex())],
                               user="djship-app", env=release.environment(), cwd=release.app, timeout=120)
    assert result.ok, result.stderr
    return result.stdout.strip().splitlines()[-1]


def fetched(fleet: Fleet, server: str, path: str) -> tuple[int, str, str]:
    """GET path from an app server's nginx, from the balancer host (the only one it answers), over TLS verified
    against djship's CA as the balancer's are: status, server, hash."""
    url = f"https://{fleet.hosts[server].address}:8000{path}"
    answer = fleet.in_namespace("lb1", "python3", "-c", FETCH, url, str(fleet.ca))
    status, served_by, digest = answer.stdout.split()
    return int(status), served_by, digest


def assert_served_everywhere(fleet: Fleet, names: list[str]) -> None:
    digest = hashlib.sha256(PNG).hexdigest()
    for name in names:
        for server in APPS:
            assert fetched(fleet, server, f"/media/{name}") == (200, server, digest), f"{name} via {server}"


def sshfs_pids(fleet: Fleet, host: str) -> list[int]:
    pids = []
    for pid in fleet.hosts[host].pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshfs":
                pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def saved(fleet: Fleet) -> list[str]:
    return [save_on(fleet, host, f"posts/from-{host}.png") for host in APPS]


def test_a_file_saved_on_each_app_host_is_served_by_every_app_server_from_the_media_host(fleet: Fleet, saved):
    assert_served_everywhere(fleet, saved)
    media = fleet.hosts["db1"].root / "uploads" / "media"
    assert sorted(path.name for path in (media / "posts").iterdir()) == [f"from-{host}.png" for host in APPS]
    assert (media / saved[0]).read_bytes() == PNG
    for host in APPS:  # beneath the mount point: nothing, and root's, so an app server cannot write there unmounted
        beneath = fleet.hosts[host].root / "uploads"
        assert list(beneath.iterdir()) == []
        assert (beneath.stat().st_uid, beneath.stat().st_mode & 0o777) == (0, 0o755)
    status = fleet.status()
    assert [host["roles"] for host in status["hosts"] if host["name"] == "db1"] == [["db", "media"]]


def test_the_key_of_the_app_hosts_opens_sftp_only_and_from_app_hosts_only(fleet: Fleet, saved):
    app1 = fleet.hosts["app1"].root / "secrets"
    assert (app1 / "media_ed25519").stat().st_mode & 0o777 == 0o600
    ssh = ["ssh", "-i", str(app1 / "media_ed25519"), "-o", f"UserKnownHostsFile={app1 / 'media_known_hosts'}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"djship-media-t{OFFSET}@{fleet.hosts['db1'].address}", "id"]
    from_app = fleet.in_namespace("app1", *ssh)
    assert from_app.returncode != 0 and "This service allows sftp connections only." in from_app.stdout + from_app.stderr
    from_lb = fleet.in_namespace("lb1", *ssh)
    assert from_lb.returncode != 0 and "Permission denied" in from_lb.stderr


def test_up_again_changes_nothing(fleet: Fleet, saved):
    assert "Nothing to change." in fleet.djship("up", "--dry-run").stdout


def test_a_killed_mount_is_restarted_by_the_supervisor(fleet: Fleet, saved):
    [before] = sshfs_pids(fleet, "app2")
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while fetched(fleet, "app2", f"/media/{saved[0]}")[0] != 200 or sshfs_pids(fleet, "app2") in ([], [before]):
        assert time.monotonic() < deadline, f"app2's mount did not come back: {json.dumps(fleet.status()['hosts'])}"
        time.sleep(1)
    assert_served_everywhere(fleet, saved)


def test_the_uploads_survive_a_deploy_without_a_failed_request(fleet: Fleet, saved):
    """Half the app servers at a time (2 of 3, rounded up): app1 and app2 restart at once, then app3."""
    config = fleet.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"deploy.batch_size": "50%"}))
    views = fleet.project / "posts" / "views.py"
    original = views.read_text()
    views.write_text(original + "\n# deployed by the media e2e test\n")
    try:
        with FleetLoop(fleet) as load:
            said = fleet.djship("deploy").stdout
            load.wait_for(load.served + 30)
    finally:
        views.write_text(original)
    assert load.failures == []
    assert re.search(r"Restarting app1, app2 on release \S+ and checking their health", said), said
    assert re.search(r"Restarting app3 on release \S+ and checking its health", said), said
    assert_served_everywhere(fleet, [*saved, save_on(fleet, "app3", "posts/after-deploy.png")])


def test_a_restore_brings_back_the_backed_up_media_on_every_app_host(fleet: Fleet, saved):
    posts = fleet.hosts["db1"].root / "uploads" / "media" / "posts"
    backed_up = sorted(f"posts/{path.name}" for path in posts.iterdir())
    fleet.djship("backup")
    [backup] = json.loads(fleet.djship("backups", "--json").stdout)
    lost = save_on(fleet, "app2", "posts/after-backup.png")
    with FleetLoop(fleet) as load:
        fleet.djship("restore", backup["name"], "--yes")
        load.wait_for(load.served + 30)
    assert load.failures == []
    restored = Path(json.loads((fleet.hosts["db1"].root / "live.json").read_text())["media"])
    assert restored.parent == fleet.hosts["db1"].root / "uploads"  # once, on the media host, beside the old media
    assert sorted(f"posts/{path.name}" for path in (restored / "posts").iterdir()) == backed_up
    for host in APPS:  # each app host's servers use it through the mount
        live = json.loads((fleet.hosts[host].root / "live.json").read_text())["media"]
        assert live == str(fleet.hosts[host].root / "uploads" / restored.name)
        assert not (fleet.hosts[host].root / "uploads" / restored.name).exists()
    assert_served_everywhere(fleet, backed_up)
    assert {fetched(fleet, server, f"/media/{lost}")[0] for server in APPS} == {404}
    assert_served_everywhere(fleet, [save_on(fleet, "app1", "posts/after-restore.png")])
