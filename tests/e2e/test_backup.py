"""Backups, restore under load, and uploads shared by every app server (https://localhost:22443).

One system for the module; the tests run in order and build on each other's rows: uploads first (so the backup
holds media), then backup -> more rows -> restore, then a damaged backup that must change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from djship.config import with_values
from djship.deploy.lock import exclusive
from tests.e2e.conftest import DJSHIP, Ports, RequestLoop, Site, running_site
from tests.e2e.test_deploy import ADD_FIELD_MIGRATION, changed
from tests.e2e.test_system import _png, _post_form, _sign_up

pytestmark = pytest.mark.e2e

BACKUP_PORTS = Ports.of(https=22443, http=22080, database=29432, app_prefix="127.0.51", database_address="127.0.52.1")
CREATE_POSTS = (
    "from django.contrib.auth.models import User; from posts.models import Post; "
    "author, _ = User.objects.get_or_create(username='backup-test'); "
    "[Post.objects.create(author=author, title=title, body='written by the ORM') for title in {titles!r}]"
)


@pytest.fixture(scope="module")
def site() -> Site:
    with running_site(BACKUP_PORTS) as running:
        yield running


def _create_posts(site: Site, *titles: str) -> None:
    site.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=list(titles)))


def _posts(site: Site) -> list[dict]:
    response = site.session().get(site.url + "/api/posts/")
    assert response.status_code == 200
    return response.json()["posts"]


def _titles_from_every_server(site: Site) -> set[tuple[str, ...]]:
    """The post titles as each answer lists them, over enough requests to reach every app server."""
    session = site.session()
    seen, servers = set(), set()
    for _ in range(12):
        response = session.get(site.url + "/api/posts/")
        assert response.status_code == 200
        servers.add(response.headers["X-Djship-Server"])
        seen.add(tuple(sorted(post["title"] for post in response.json()["posts"])))
    assert servers == {"app1", "app2"}
    return seen


def _from_app_server(site: Site, index: int, path: str) -> requests.Response:
    """GET path from app server i's nginx directly, as the balancer would send it."""
    return requests.get(
        f"http://{site.ports.app_prefix}.{index}:8000{path}",
        headers={"Host": "localhost", "X-Forwarded-Proto": "https"}, timeout=10, allow_redirects=False,
    )


def _upload(site: Site, session: requests.Session, title: str) -> tuple[str, str]:
    """Post an image through the HTML form; (the app server that handled the upload, the image's URL path)."""
    response = _post_form(
        session, f"{site.url}/posts/new/", {"title": title, "body": "with an image"},
        files={"image": ("dot.png", _png(), "image/png")},
    )
    assert response.status_code == 302, response.text[:2000]
    image = next(post["image_url"] for post in _posts(site) if post["title"] == title)
    assert image and image.startswith("/media/posts/")
    return response.headers["X-Djship-Server"], image


def _backups(site: Site) -> list[dict]:
    return json.loads(site.djship("backups", "--json").stdout)


def _names_and_sizes(backups: list[dict]) -> list[tuple[str, int]]:
    return [(row["name"], row["size"]) for row in backups]


def _databases(site: Site) -> list[dict]:
    """The app's databases, without their sizes (those change as PostgreSQL works)."""
    return [{"name": row["name"], "live": row["live"]} for row in json.loads(site.djship("databases", "--json").stdout)]


def test_an_upload_through_either_app_server_is_served_by_every_app_server(site: Site):
    session = site.session()
    _sign_up(site, session)
    handled_by: dict[str, str] = {}
    for attempt in range(12):
        server, image = _upload(site, session, f"upload {attempt}")
        handled_by.setdefault(server, image)
        if len(handled_by) == 2:
            break
    assert set(handled_by) == {"app1", "app2"}, "the balancer never sent an upload to both app servers"
    for uploaded_on, image in handled_by.items():
        for index in (1, 2):
            response = _from_app_server(site, index, image)
            assert response.status_code == 200, f"{image} uploaded on {uploaded_on} is missing on app{index}"
            assert response.content == _png() and response.headers["X-Djship-Server"] == f"app{index}"
    links = {(site.project / f".djship/servers/app{i}/media").resolve() for i in (1, 2)}
    assert links == {(site.project / ".djship/shared/media").resolve()}


def test_backup_writes_a_checksummed_private_backup_and_lists_it(site: Site):
    _create_posts(site, "kept 1", "kept 2")
    killed = site.project / ".djship" / "backups" / ".20260101T000000Z.partial"
    killed.mkdir(parents=True)
    result = site.djship("backup")
    assert not killed.exists(), "a partial backup left by a killed run is removed"
    assert "Backed up database board and media" in result.stdout
    [entry] = _backups(site)
    path = site.project / ".djship" / "backups" / entry["name"]
    assert entry["path"] == str(path) and entry["database"] == "board" and entry["size"] > 0
    assert sorted(p.name for p in path.iterdir()) == ["database.dump", "manifest.json", "media.tar"]
    assert oct(path.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in path.iterdir()} == {"0o600"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["rows"]["public.posts_post"] == len(_posts(site))
    listing = site.djship("backups").stdout
    assert entry["name"] in listing and "board" in listing


def test_restore_brings_back_exactly_the_backed_up_rows_and_media_without_a_failed_request(site: Site):
    [backup] = _backups(site)
    backed_up = {tuple(sorted(post["title"] for post in _posts(site)))}
    kept_image = next(post["image_url"] for post in _posts(site) if post["image_url"])
    _create_posts(site, "lost 1", "lost 2")
    _, lost_image = _upload(site, _logged_in(site), "lost upload")
    assert _titles_from_every_server(site) != backed_up
    databases_before = {row["name"] for row in _databases(site)}
    assert databases_before == {"board"}

    with RequestLoop(site) as load:
        result = site.djship("restore", backup["name"], "--yes")
        load.wait_for(load.served + 50)

    assert load.failures == []
    assert "Restored" in result.stdout and "Draining app1" in result.stdout and "Draining app2" in result.stdout
    assert _titles_from_every_server(site) == backed_up
    live = [row["name"] for row in _databases(site) if row["live"]]
    assert len(live) == 1 and live[0].startswith("board_")
    assert {row["name"] for row in _databases(site)} == {"board", live[0]}, "the old database must be kept"
    assert site.status()["database"] == live[0]
    assert "djship drop-database board --yes" in result.stdout
    for index in (1, 2):
        assert _from_app_server(site, index, kept_image).content == _png()
        assert _from_app_server(site, index, lost_image).status_code == 404
    doctor = json.loads(site.djship("doctor", "--json", check=False).stdout)
    assert {check["id"]: check["status"] for check in doctor["checks"]}["media"] == "pass", doctor
    safety = [row for row in _backups(site) if row["name"] != backup["name"]]
    assert len(safety) == 1 and safety[0]["note"] == f"safety backup before restoring {backup['name']}"
    assert safety[0]["rows"] > backup["rows"], "the safety backup holds the rows written after the backup"


def _servers_disagree(site: Site) -> bool:
    try:
        return len(_titles_from_every_server(site)) == 2
    except AssertionError:  # app1 restarting: every answer came from app2
        return False


def test_a_restore_killed_half_way_is_undone_by_the_next_deploy(site: Site):
    """As if a restore died after switching app1 only: app1 on another database than live.json names."""
    state = site.project / ".djship"
    live = json.loads((state / "live.json").read_text())
    other = next(row["name"] for row in _databases(site) if not row["live"])
    (state / "servers" / "app1" / "live.json").write_text(json.dumps({**live, "database": other}))
    gunicorn = site.component("app1-gunicorn")["pid"]
    os.kill(gunicorn, signal.SIGTERM)  # the supervisor starts it again, now on the other database
    deadline = time.monotonic() + 60
    while not _servers_disagree(site):
        assert time.monotonic() < deadline, "app1 never came back on the other database"
        time.sleep(1)

    with RequestLoop(site) as load:
        site.djship("deploy")
    assert load.failures == []
    assert len(_titles_from_every_server(site)) == 1
    assert json.loads((state / "servers" / "app1" / "live.json").read_text()) == live


def _logged_in(site: Site) -> requests.Session:
    session = site.session()
    _sign_up(site, session)
    return session


def test_a_damaged_backup_is_refused_before_anything_changes(site: Site, workdir):
    backups, databases, status = _backups(site), _databases(site), site.status()
    damaged = workdir / "damaged"
    shutil.copytree(backups[0]["path"], damaged)
    dump = damaged / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    result = site.djship("restore", str(damaged), "--yes", check=False)

    assert result.returncode == 1
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr, error
    assert "backup damaged is damaged: database.dump does not match its sha256" in error
    assert "nothing was changed" in error
    assert _names_and_sizes(_backups(site)) == _names_and_sizes(backups), "no safety backup may be taken"
    assert _databases(site) == databases
    assert site.status()["database"] == status["database"]
    assert site.session().get(site.url + "/api/posts/").status_code == 200


def test_restore_without_a_terminal_or_yes_is_refused(site: Site):
    name = _backups(site)[0]["name"]
    result = subprocess.run(
        [*DJSHIP, "restore", name], cwd=site.project, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 1 and "re-run with --yes" in result.stderr
    assert len(_backups(site)) == 2


def test_restore_is_refused_while_a_deploy_holds_the_lock(site: Site):
    backups, live = _backups(site), site.status()["database"]
    with exclusive(site.project / ".djship" / "deploy.lock", "deploy"):
        result = site.djship("restore", backups[0]["name"], "--yes", check=False)
    assert result.returncode == 1 and f"(deploy by pid {os.getpid()}" in result.stderr
    assert _names_and_sizes(_backups(site)) == _names_and_sizes(backups) and site.status()["database"] == live


def test_a_restore_whose_row_counts_differ_is_removed_and_never_switched(site: Site, workdir):
    backups, databases, live = _backups(site), _databases(site), site.status()["database"]
    tampered = workdir / "tampered"
    shutil.copytree(backups[0]["path"], tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["rows"]["public.posts_post"] += 1  # the files and their checksums are intact
    (tampered / "manifest.json").write_text(json.dumps(manifest))

    with RequestLoop(site) as load:
        result = site.djship("restore", str(tampered), "--yes", check=False)
        load.wait_for(load.served + 20)

    assert load.failures == []
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "the restored database does not match backup tampered: public.posts_post:" in result.stderr
    assert "Removing the unfinished restore" in result.stdout
    assert _databases(site) == databases and site.status()["database"] == live
    assert sorted(p.name for p in (site.project / ".djship/shared").iterdir()) == sorted(
        {Path(json.loads((site.project / ".djship/live.json").read_text())["media"]).name, "media"}
    )
    assert len(_backups(site)) == len(backups) + 1, "the safety backup is taken before the restore starts"


def test_a_backup_from_before_a_migration_is_migrated_before_any_server_switches(site: Site):
    site.djship("backup")
    older = _backups(site)[-1]["name"]
    add_field = "\nPost.add_to_class('pinned', __import__('django.db.models', fromlist=['BooleanField']).BooleanField(db_default=False))\n"
    with changed(site.project, "posts/models.py", append=add_field), \
         changed(site.project, "posts/migrations/0002_post_pinned.py", ADD_FIELD_MIGRATION):
        site.djship("deploy")
    with RequestLoop(site) as load:
        result = site.djship("restore", older, "--yes")
        load.wait_for(load.served + 50)
    # Without the migration the new release's queries (they select posts.pinned) would fail on every server.
    assert load.failures == []
    assert "Migrating board_" in result.stdout
    columns = site.djship(
        "manage", "--", "shell", "-c",
        "from django.db import connection; print(connection.settings_dict['NAME'], "
        "[c.name for c in connection.introspection.get_table_description(connection.cursor(), 'posts_post')])",
    ).stdout
    assert f"{site.status()['database']} [" in columns and "'pinned'" in columns
    assert not (site.project / ".djship" / "restoring.json").exists()


def test_the_daily_backup_runs_under_the_supervisor_when_scheduled(site: Site):
    config = site.project / "djship.toml"
    original = config.read_text()
    try:
        config.write_text(with_values(original, {"backup.schedule": "03:30"}))
        site.djship("up")
        scheduler = site.component("backup-scheduler")
        assert scheduler["state"] == "RUNNING" and scheduler["health"] == "scheduled"
        assert "next backup at 03:30 UTC" in (site.project / ".djship/logs/backup-scheduler.log").read_text()
    finally:
        config.write_text(original)
    site.djship("up")
    assert "backup-scheduler" not in {c["name"] for c in site.status()["components"]}
