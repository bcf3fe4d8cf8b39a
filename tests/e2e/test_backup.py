"""Backups and restore under load, written once and run on both topologies: one machine (https://localhost:22443)
and netns hosts (1 lb + 2 app + 1 db, each its own sshd and state root; see tests/e2e/hosts.py).

One system per topology for the module; the tests run in order and build on each other's rows: a post with an image
first (so the backup holds media), then backup -> more rows -> restore, then a damaged backup that must change
nothing. Only loopback and the test hosts' addresses are contacted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from djship.components.probe import Response, request
from djship.config import with_values
from djship.deploy.lock import exclusive
from tests.e2e.conftest import DJSHIP, EXAMPLE, Ports, Site, run_djship, running_site, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_deploy import ADD_FIELD_MIGRATION, changed
from tests.e2e.test_remote_system import FleetLoop, write_config
from tests.e2e.test_system import _png, _post_form, _sign_up

pytestmark = pytest.mark.e2e

BACKUP_PORTS = Ports.of(https=22443, http=22080, database=29432, app_prefix="127.0.51", database_address="127.0.52.1")
HOSTS = ["lb1", "app1", "app2", "db1"]
ONE_MACHINE, ON_HOSTS = "one machine", "netns hosts"
SERVERS = {"app1", "app2"}
CREATE_POSTS = (
    "from django.contrib.auth.models import User; from posts.models import Post; "
    "author, _ = User.objects.get_or_create(username='backup-test'); "
    "[Post.objects.create(author=author, title=title, body='written by the ORM') for title in {titles!r}]"
)
# Saved by `djship manage` on the first app host: the media a backup archives.
CREATE_IMAGE_POST = (
    "import base64; from django.contrib.auth.models import User; from django.core.files.base import ContentFile; "
    "from posts.models import Post; author, _ = User.objects.get_or_create(username='backup-test'); "
    "Post.objects.create(author=author, title={title!r}, body='with an image', "
    "image=ContentFile(base64.b64decode({png!r}), name='dot.png'))"
)


@dataclass
class Target:
    """A running system and how to reach it: through its balancer, and each host's state root on this machine's
    file system (netns hosts share it)."""

    project: Path
    roots: dict[str, Path]
    """The state root of each host, by host name."""
    site: Site | None = None
    """On one machine: the conftest site, which records every PID for the final kill."""
    hosts_of: dict[str, str] = field(default_factory=dict)
    """The host of each app server (read from `djship status`, as are the balancer's address and port)."""
    address: str = ""
    port: int = 0

    @property
    def ca(self) -> Path:
        return self.project / ".djship" / "tls" / "ca.crt"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def djship(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_djship(self.project, *args, check=check, timeout=900)

    def status(self) -> dict:
        report = self.site.status() if self.site else json.loads(self.djship("status", "--json").stdout)
        self.hosts_of = {c["server"]: c["host"] for c in report["components"] if c["server"]}
        balancer = next(c for c in report["components"] if c["name"] == "haproxy")
        self.address, port = balancer["address"].rsplit(":", 1)
        self.port = int(port)
        return report

    def component(self, name: str) -> dict:
        return next(c for c in self.status()["components"] if c["name"] == name)

    def root_of(self, server: str) -> Path:
        return self.roots[self.hosts_of[server]]

    @property
    def app_roots(self) -> list[Path]:
        return sorted({self.root_of(server) for server in SERVERS})

    def get(self, path: str = "/api/posts/") -> Response | str:
        """Through the balancer, its certificate verified against djship's CA for the site's name."""
        return request(self.address, self.port, "localhost", "GET", path, tls_name="localhost", ca_file=self.ca,
                       timeout=30)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca)
        return session


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    if request.param == ONE_MACHINE:
        with running_site(BACKUP_PORTS) as site:
            made = Target(site.project, {"local": site.project / ".djship"}, site)
            made.status()
            yield made
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1", "app2"])
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        try:
            made.djship("up")
            made.status()
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _create_posts(target: Target, *titles: str) -> None:
    target.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=list(titles)))


def _create_image_post(target: Target, title: str) -> str:
    """A post with an image, saved on the first app host; the image's URL path."""
    target.djship("manage", "--", "shell", "-c",
                  CREATE_IMAGE_POST.format(title=title, png=base64.b64encode(_png()).decode()))
    image = next(post["image_url"] for post in _posts(target) if post["title"] == title)
    assert image and image.startswith("/media/posts/")
    return image


def _posts(target: Target) -> list[dict]:
    response = target.get("/api/posts/")
    assert isinstance(response, Response) and response.status == 200, response
    return json.loads(response.body)["posts"]


def _from_every_server(target: Target, path: str) -> dict[str, Response]:
    """An answer to GET path through the balancer from each app server (round robin reaches them all)."""
    answers: dict[str, Response] = {}
    for _ in range(20):
        response = target.get(path)
        assert isinstance(response, Response), response
        answers.setdefault(response.header("X-Djship-Server"), response)
        if set(answers) == SERVERS:
            return answers
    raise AssertionError(f"only {sorted(answers)} answered {path}")


def _titles_from_every_server(target: Target) -> set[tuple[str, ...]]:
    """The post titles as each answer lists them, over enough requests to reach every app server."""
    seen, servers = set(), set()
    for _ in range(12):
        response = target.get("/api/posts/")
        assert isinstance(response, Response) and response.status == 200, response
        servers.add(response.header("X-Djship-Server"))
        seen.add(tuple(sorted(post["title"] for post in json.loads(response.body)["posts"])))
    assert servers == SERVERS
    return seen


def _backups(target: Target) -> list[dict]:
    return json.loads(target.djship("backups", "--json").stdout)


def _names_and_sizes(backups: list[dict]) -> list[tuple[str, int]]:
    return [(row["name"], row["size"]) for row in backups]


def _databases(target: Target) -> list[dict]:
    """The app's databases, without their sizes (those change as PostgreSQL works)."""
    return [{"name": row["name"], "live": row["live"]} for row in json.loads(target.djship("databases", "--json").stdout)]


def _nothing_staged(target: Target) -> None:
    for root in target.roots.values():
        assert not any((root / kind).exists() for kind in ("backup-staging", "restore-staging", "daily-backup-staging")), root


# Uploads are shared by the app servers of one host only, so far: this runs on one machine until item 3 of
# issue 10 (uploads shared by every app host) lands.
@pytest.mark.parametrize("target", [ONE_MACHINE], indirect=True)
def test_an_upload_through_either_app_server_is_served_by_every_app_server(target: Target):
    session = target.session()
    _sign_up(target, session)
    handled_by: dict[str, str] = {}
    for attempt in range(12):
        response = _post_form(
            session, f"{target.url}/posts/new/", {"title": f"upload {attempt}", "body": "with an image"},
            files={"image": ("dot.png", _png(), "image/png")},
        )
        assert response.status_code == 302, response.text[:2000]
        image = next(post["image_url"] for post in _posts(target) if post["title"] == f"upload {attempt}")
        handled_by.setdefault(response.headers["X-Djship-Server"], image)
        if len(handled_by) == 2:
            break
    assert set(handled_by) == SERVERS, "the balancer never sent an upload to both app servers"
    for uploaded_on, image in handled_by.items():
        for server, response in _from_every_server(target, image).items():
            assert response.status == 200, f"{image} uploaded on {uploaded_on} is missing on {server}"
            assert response.body == _png()
    links = {(target.root_of(server) / "servers" / server / "media").resolve() for server in SERVERS}
    assert links == {(target.project / ".djship/shared/media").resolve()}


def test_backup_writes_a_checksummed_private_backup_here_and_lists_it(target: Target):
    _create_posts(target, "kept 1", "kept 2")
    image = _create_image_post(target, "kept image")
    killed = target.project / ".djship" / "backups" / ".20260101T000000Z.partial"
    killed.mkdir(parents=True)
    result = target.djship("backup")
    assert not killed.exists(), "a partial backup left by a killed run is removed"
    assert "Backed up database board and media" in result.stdout
    [entry] = _backups(target)
    path = target.project / ".djship" / "backups" / entry["name"]
    assert entry["path"] == str(path) and entry["database"] == "board" and entry["size"] > 0
    assert sorted(p.name for p in path.iterdir()) == ["database.dump", "manifest.json", "media.tar"]
    assert oct(path.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in path.iterdir()} == {"0o600"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["rows"]["public.posts_post"] == len(_posts(target))
    assert manifest["files"]["media.tar"]["size"] == (path / "media.tar").stat().st_size
    with tarfile.open(path / "media.tar") as media:
        assert media.extractfile("." + image.removeprefix("/media")).read() == _png()
    listing = target.djship("backups").stdout
    assert entry["name"] in listing and "board" in listing
    _nothing_staged(target)


def test_restore_brings_back_exactly_the_backed_up_rows_and_media_without_a_failed_request(target: Target):
    [backup] = _backups(target)
    backed_up = {tuple(sorted(post["title"] for post in _posts(target)))}
    kept_image = next(post["image_url"] for post in _posts(target) if post["title"] == "kept image")
    _create_posts(target, "lost 1", "lost 2")
    lost_image = _create_image_post(target, "lost image")
    assert _titles_from_every_server(target) != backed_up
    assert {row["name"] for row in _databases(target)} == {"board"}

    with FleetLoop(target) as load:  # type: ignore[arg-type]
        result = target.djship("restore", backup["name"], "--yes")
        load.wait_for(load.served + 50)

    assert load.failures == []
    assert "Restored" in result.stdout and "Draining app1" in result.stdout and "Draining app2" in result.stdout
    assert _titles_from_every_server(target) == backed_up
    live = [row["name"] for row in _databases(target) if row["live"]]
    assert len(live) == 1 and live[0].startswith("board_")
    assert {row["name"] for row in _databases(target)} == {"board", live[0]}, "the old database must be kept"
    assert target.status()["database"] == live[0]
    assert "djship drop-database board --yes" in result.stdout
    for server, response in _from_every_server(target, kept_image).items():
        assert response.status == 200 and response.body == _png(), f"{kept_image} is missing on {server}"
    assert {response.status for response in _from_every_server(target, lost_image).values()} == {404}
    # Each app host's own live.json names the restored database and the new media: its own on one machine, on the
    # hosts the one beside the live media on the db host, which every app host mounts at its uploads.
    media_dirs = "shared" if target.site else "uploads"
    for server in SERVERS:
        root = target.root_of(server)
        host_live = json.loads((root / "live.json").read_text())
        assert host_live["database"] == live[0] and Path(host_live["media"]).parent.resolve() == (root / media_dirs).resolve()
        assert (root / "servers" / server / "media").resolve() == Path(host_live["media"]).resolve()
    safety = [row for row in _backups(target) if row["name"] != backup["name"]]
    assert len(safety) == 1 and safety[0]["note"] == f"safety backup before restoring {backup['name']}"
    assert safety[0]["rows"] > backup["rows"], "the safety backup holds the rows written after the backup"
    _nothing_staged(target)


def _servers_disagree(target: Target) -> bool:
    try:
        return len(_titles_from_every_server(target)) == 2
    except AssertionError:  # app1 restarting: every answer came from app2
        return False


def test_a_restore_killed_half_way_is_undone_by_the_next_deploy(target: Target):
    """As if a restore died after switching app1 only: app1 on another database than live.json names."""
    state = target.root_of("app1")
    live = json.loads((state / "live.json").read_text())
    other = next(row["name"] for row in _databases(target) if not row["live"])
    (state / "servers" / "app1" / "live.json").write_text(json.dumps({**live, "database": other}))
    gunicorn = target.component("app1-gunicorn")["pid"]
    os.kill(gunicorn, signal.SIGTERM)  # the supervisor starts it again, now on the other database
    deadline = time.monotonic() + 60
    while not _servers_disagree(target):
        assert time.monotonic() < deadline, "app1 never came back on the other database"
        time.sleep(1)

    with FleetLoop(target) as load:  # type: ignore[arg-type]
        target.djship("deploy")
    assert load.failures == []
    assert len(_titles_from_every_server(target)) == 1
    assert json.loads((state / "servers" / "app1" / "live.json").read_text()) == live


def test_a_damaged_backup_is_refused_before_anything_changes(target: Target, workdir):
    backups, databases, status = _backups(target), _databases(target), target.status()
    damaged = workdir / "damaged"
    shutil.copytree(backups[0]["path"], damaged)
    dump = damaged / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    result = target.djship("restore", str(damaged), "--yes", check=False)

    assert result.returncode == 1
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr, error
    assert "backup damaged is damaged: database.dump does not match its sha256" in error
    assert "nothing was changed" in error
    assert _names_and_sizes(_backups(target)) == _names_and_sizes(backups), "no safety backup may be taken"
    assert _databases(target) == databases
    assert target.status()["database"] == status["database"]
    assert _posts(target)


def test_a_dump_that_is_not_a_dump_is_refused_on_the_db_host_before_anything_changes(target: Target, workdir):
    backups, databases = _backups(target), _databases(target)
    fake = workdir / "fake"
    shutil.copytree(backups[0]["path"], fake)
    (fake / "database.dump").write_bytes(b"not a dump\n")
    manifest = json.loads((fake / "manifest.json").read_text())
    digest = subprocess.run(["sha256sum", str(fake / "database.dump")], capture_output=True, text=True).stdout.split()[0]
    manifest["files"]["database.dump"] = {"sha256": digest, "size": 11}  # a consistent manifest: only pg_restore knows
    (fake / "manifest.json").write_text(json.dumps(manifest))

    result = target.djship("restore", str(fake), "--yes", check=False)

    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "backup fake: database.dump is not a readable PostgreSQL dump (" in result.stderr
    assert "nothing was changed" in result.stderr
    assert _names_and_sizes(_backups(target)) == _names_and_sizes(backups) and _databases(target) == databases
    _nothing_staged(target)


def test_restore_without_a_terminal_or_yes_is_refused(target: Target):
    name = _backups(target)[0]["name"]
    result = subprocess.run(
        [*DJSHIP, "restore", name], cwd=target.project, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 1 and "re-run with --yes" in result.stderr
    assert len(_backups(target)) == 2


def test_restore_is_refused_while_a_deploy_holds_the_lock(target: Target):
    backups, live = _backups(target), target.status()["database"]
    with exclusive(target.project / ".djship" / "deploy.lock", "deploy"):
        result = target.djship("restore", backups[0]["name"], "--yes", check=False)
    assert result.returncode == 1 and f"(deploy by pid {os.getpid()}" in result.stderr
    assert _names_and_sizes(_backups(target)) == _names_and_sizes(backups) and target.status()["database"] == live


def test_a_restore_whose_row_counts_differ_is_removed_and_never_switched(target: Target, workdir):
    target.djship("backup")
    backups, databases, live = _backups(target), _databases(target), target.status()["database"]
    tampered = workdir / "tampered"
    shutil.copytree(backups[0]["path"], tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["rows"]["public.posts_post"] += 1  # the files and their checksums are intact
    (tampered / "manifest.json").write_text(json.dumps(manifest))

    with FleetLoop(target) as load:  # type: ignore[arg-type]
        result = target.djship("restore", str(tampered), "--yes", check=False)
        load.wait_for(load.served + 20)

    assert load.failures == []
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "the restored database does not match backup tampered: public.posts_post:" in result.stderr
    assert "Removing the unfinished restore" in result.stdout
    assert _databases(target) == databases and target.status()["database"] == live
    # One machine: beside the live media in shared/ (with the static store); hosts: on the media host (db1), whose
    # uploads every app host mounts (this test sees the hosts' files, not their mounts).
    media_dirs = target.root_of("app1") / "shared" if target.site else target.roots["db1"] / "uploads"
    for root in target.app_roots:
        live_file = root / "live.json"  # absent until a restore switched one: the media then are the plan's
        live_media = Path(json.loads(live_file.read_text())["media"]).name if live_file.exists() else "media"
        assert {path.name for path in media_dirs.iterdir()} - {"static"} == {live_media, "media"}
    assert len(_backups(target)) == len(backups) + 1, "the safety backup is taken before the restore starts"
    _nothing_staged(target)


def test_a_backup_from_before_a_migration_is_migrated_before_any_server_switches(target: Target):
    target.djship("backup")
    older = _backups(target)[-1]["name"]
    add_field = "\nPost.add_to_class('pinned', __import__('django.db.models', fromlist=['BooleanField']).BooleanField(db_default=False))\n"
    with changed(target.project, "posts/models.py", append=add_field), \
         changed(target.project, "posts/migrations/0002_post_pinned.py", ADD_FIELD_MIGRATION):
        target.djship("deploy")
    with FleetLoop(target) as load:  # type: ignore[arg-type]
        result = target.djship("restore", older, "--yes")
        load.wait_for(load.served + 50)
    # Without the migration the new release's queries (they select posts.pinned) would fail on every server.
    assert load.failures == []
    assert "Migrating board_" in result.stdout
    columns = target.djship(
        "manage", "--", "shell", "-c",
        "from django.db import connection; print(connection.settings_dict['NAME'], "
        "[c.name for c in connection.introspection.get_table_description(connection.cursor(), 'posts_post')])",
    ).stdout
    assert f"{target.status()['database']} [" in columns and "'pinned'" in columns
    assert not (target.root_of("app1") / "restoring.json").exists()


def test_drop_database_removes_a_kept_database_and_never_the_live_one(target: Target):
    live = target.status()["database"]
    kept = sorted(row["name"] for row in _databases(target) if not row["live"])
    refused = target.djship("drop-database", live, "--yes", check=False)
    assert refused.returncode == 1 and f"{live} is the live database; djship never drops it" in refused.stderr
    target.djship("drop-database", kept[0], "--yes")
    assert sorted(row["name"] for row in _databases(target) if not row["live"]) == kept[1:]
    assert _posts(target)


def _a_minute_ahead() -> str:
    """The first whole UTC minute at least 30 seconds from now (time for `up`), as backup.schedule takes it."""
    return (datetime.now(timezone.utc) + timedelta(seconds=90)).strftime("%H:%M")


def _daily_backup(target: Target, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        daily = [row for row in _backups(target) if row["note"] == "daily"]
        if daily:
            return daily[0]
        assert time.monotonic() < deadline, "no daily backup was taken: " + _log_of(target, "backup-scheduler")
        time.sleep(5)


def _log_of(target: Target, program: str) -> str:
    return target.djship("logs", program, "-n", "40", check=False).stdout


# The last test of the module: it restores the daily backup.
def test_the_daily_backup_runs_on_the_db_host_by_itself_and_restores_without_a_failed_request(target: Target):
    config = target.project / "djship.toml"
    original = config.read_text()
    try:
        # Written first: on a busy machine `up` may still run when the scheduled minute comes.
        _create_posts(target, "in the daily backup")
        at_backup = _titles_from_every_server(target)
        config.write_text(with_values(original, {"backup.schedule": _a_minute_ahead()}))
        target.djship("up")
        scheduler = target.component("backup-scheduler")
        assert scheduler["state"] == "RUNNING", scheduler
        if not target.site:  # on real hosts the db host keeps them: status says so
            assert scheduler["host"] == "db1" and "the db host's own disk" in json.dumps(scheduler), scheduler
        daily = _daily_backup(target)
        kept = target.project / ".djship" / "backups" if target.site else target.roots["db1"] / "backups"
        assert daily["host"] == (None if target.site else "db1") and Path(daily["path"]).parent == kept, daily
        assert {oct(p.stat().st_mode & 0o777) for p in Path(daily["path"]).iterdir()} == {"0o600"}
        assert daily["rows"] > 0 and daily["database"]
        assert "the daily backup exited 0" in _log_of(target, "backup-scheduler")
        _create_posts(target, "after the daily backup")
        assert _titles_from_every_server(target) != at_backup

        with FleetLoop(target) as load:  # type: ignore[arg-type]
            result = target.djship("restore", daily["name"], "--yes")
            load.wait_for(load.served + 50)
        assert load.failures == []
        assert "Restored" in result.stdout
        assert _titles_from_every_server(target) == at_backup
        _nothing_staged(target)
    finally:
        config.write_text(original)
    target.djship("up")
    assert "backup-scheduler" not in {c["name"] for c in target.status()["components"]}
