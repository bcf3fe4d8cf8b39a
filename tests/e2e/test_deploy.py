"""Deploys, rollbacks and scaling under a bounded stream of requests: not one may fail.

One system for the module (https://localhost:20443); each test changes the project copy and restores it.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from djship.config import with_values
from tests.e2e.conftest import DEPLOY_PORTS, DJSHIP, RequestLoop, Site, kill_process_group, running_site

pytestmark = pytest.mark.e2e

BROKEN_MIDDLEWARE = '''
from django.http import HttpResponseServerError


class BrokenMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return HttpResponseServerError("this release is broken")
'''

FAILING_MIGRATION = '''
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("this migration fails on purpose")


class Migration(migrations.Migration):
    dependencies = [("posts", "{previous}")]
    operations = [migrations.RunPython(fail)]
'''

ADD_FIELD_MIGRATION = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("posts", "0001_initial")]
    operations = [
        migrations.AddField(model_name="post", name="pinned", field=models.BooleanField(db_default=False)),
    ]
'''


@pytest.fixture(scope="module")
def deployed() -> Site:
    with running_site(DEPLOY_PORTS) as running:
        config = running.project / "djship.toml"
        config.write_text(config.read_text().replace("health_timeout = 60", "health_timeout = 20"))
        running.djship("up")
        yield running


@contextmanager
def changed(project: Path, relative: str, text: str | None = None, append: str = "", replace: tuple[str, str] = ("", "")):
    """Change (or create) one file of the project for the duration of the `with`."""
    path = project / relative
    original = path.read_text() if path.exists() else None
    if text is None:
        assert original is not None and replace[0] in original
        text = original.replace(*replace) + append if replace[0] else original + append
    path.write_text(text)
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_text(original)


def live_release(site: Site) -> str:
    return next(row["id"] for row in releases(site) if row["live"])


def releases(site: Site) -> list[dict]:
    import json

    return json.loads(site.djship("releases", "--json").stdout)


def answering_releases(site: Site, count: int = 12) -> set[str]:
    session = site.session()
    return {session.get(site.url + "/api/posts/").headers["X-Djship-Release"] for _ in range(count)}


def deploy_under_load(site: Site, check: bool = True) -> tuple[subprocess.CompletedProcess, RequestLoop]:
    with RequestLoop(site) as load:
        result = site.djship("deploy", check=check)
        load.wait_for(load.served + 50)
    return result, load


def test_code_deploy_fails_no_request_and_the_new_release_answers(deployed: Site):
    before = live_release(deployed)
    with changed(deployed.project, "templates/posts/home.html", replace=("No posts yet.", "No posts yet (deployed by the test).")):
        result, load = deploy_under_load(deployed)
    assert load.failures == []
    new = live_release(deployed)
    assert new != before and f"Deployed release {new}" in result.stdout
    assert set(load.releases) >= {before, new}
    assert answering_releases(deployed) == {new}
    assert "deployed by the test" in deployed.session().get(deployed.url + "/").text


def test_deploy_with_a_migration_fails_no_request(deployed: Site):
    with changed(deployed.project, "posts/models.py", append="\nPost.add_to_class('pinned', __import__('django.db.models', fromlist=['BooleanField']).BooleanField(db_default=False))\n"), \
         changed(deployed.project, "posts/migrations/0002_post_pinned.py", ADD_FIELD_MIGRATION):
        _, load = deploy_under_load(deployed)
        assert load.failures == []
        assert answering_releases(deployed) == {live_release(deployed)}
        columns = deployed.djship(
            "manage", "--", "shell", "-c",
            "from django.db import connection; print([c.name for c in connection.introspection.get_table_description(connection.cursor(), 'posts_post')])",
        ).stdout
        assert "'pinned'" in columns


def test_rollback_fails_no_request_and_the_previous_release_answers(deployed: Site):
    kept = [row["id"] for row in releases(deployed)]
    live = live_release(deployed)
    previous = kept[kept.index(live) - 1]
    with RequestLoop(deployed) as load:
        deployed.djship("rollback")
        load.wait_for(load.served + 50)
    assert load.failures == []
    assert live_release(deployed) == previous
    assert answering_releases(deployed) == {previous}
    deployed.djship("rollback", live)
    assert answering_releases(deployed) == {live}


def test_scale_2_to_4_to_1_and_back_fails_no_request(deployed: Site):
    session = deployed.session()
    with RequestLoop(deployed) as load:
        deployed.djship("scale", "4")
        assert {session.get(deployed.url + "/api/posts/").headers["X-Djship-Server"] for _ in range(24)} == {
            "app1", "app2", "app3", "app4"
        }
        deployed.djship("scale", "1")
        assert {session.get(deployed.url + "/api/posts/").headers["X-Djship-Server"] for _ in range(8)} == {"app1"}
        deployed.djship("scale", "2")
        load.wait_for(load.served + 50)
    assert load.failures == []
    assert "servers = 2" in (deployed.project / "djship.toml").read_text()
    names = [c["name"] for c in deployed.status()["components"] if c["role"] == "app"]
    assert names == ["app1-nginx", "app1-gunicorn", "app2-nginx", "app2-gunicorn"]
    assert not (deployed.project / ".djship" / "servers" / "app3").exists()


def test_up_applies_an_edited_config_without_failing_a_request(deployed: Site):
    config = deployed.project / "djship.toml"
    original = config.read_text()
    session = deployed.session()
    try:
        with RequestLoop(deployed) as load:
            config.write_text(with_values(original, {"app.timeout": 45, "app.servers": 3}))
            result = deployed.djship("up")
            assert "Draining app1" in result.stdout and "Reloading the load balancer" in result.stdout
            assert {session.get(deployed.url + "/api/posts/").headers["X-Djship-Server"] for _ in range(18)} == {
                "app1", "app2", "app3"
            }
            assert "proxy_read_timeout 50s" in (deployed.project / ".djship/servers/app1/nginx.conf").read_text()
            config.write_text(original)
            deployed.djship("up")
            load.wait_for(load.served + 50)
    finally:
        config.write_text(original)
    assert load.failures == []
    assert "nothing was changed" in deployed.djship("up").stdout
    assert len([c for c in deployed.status()["components"] if c["role"] == "app"]) == 4


def test_scale_beyond_the_connection_budget_is_refused_before_anything_changes(deployed: Site):
    config = (deployed.project / "djship.toml").read_text()
    result = deployed.djship("scale", "40", check=False)
    assert result.returncode == 1
    assert "connection budget" in result.stderr and "raise database.max_connections to at least 133" in result.stderr
    assert (deployed.project / "djship.toml").read_text() == config
    assert len([c for c in deployed.status()["components"] if c["role"] == "app"]) == 4


def _assert_refused(site: Site, result: subprocess.CompletedProcess, load: RequestLoop, live: str, reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and reason in error and f"release {live} keeps serving" in error, error
    assert "Traceback" not in result.stdout + result.stderr
    assert load.failures == []
    assert live_release(site) == live and answering_releases(site) == {live}


def test_release_that_does_not_import_never_takes_traffic(deployed: Site):
    live = live_release(deployed)
    with changed(deployed.project, "posts/views.py", append="\nimport module_that_is_not_installed\n"):
        result, load = deploy_under_load(deployed, check=False)
    _assert_refused(deployed, result, load, live, "module_that_is_not_installed")


def test_release_whose_gunicorn_exits_while_starting_never_takes_traffic(deployed: Site):
    """check --deploy and collectstatic never import the WSGI module: the failure shows only once gunicorn starts,
    and the wait for its health check ends as soon as the supervisor sees it exit."""
    live = live_release(deployed)
    with changed(deployed.project, "board/wsgi.py", append='\nraise RuntimeError("wsgi fails on purpose")\n'):
        result, load = deploy_under_load(deployed, check=False)
    _assert_refused(deployed, result, load, live, "-gunicorn exited while starting")


def test_release_whose_migration_fails_never_takes_traffic(deployed: Site):
    live = live_release(deployed)
    migration = FAILING_MIGRATION.replace("{previous}", "0001_initial")
    with changed(deployed.project, "posts/migrations/0099_fails.py", migration):
        result, load = deploy_under_load(deployed, check=False)
    _assert_refused(deployed, result, load, live, "this migration fails on purpose")


def test_release_whose_health_check_fails_is_rolled_back(deployed: Site):
    live = live_release(deployed)
    with changed(deployed.project, "posts/broken.py", BROKEN_MIDDLEWARE), \
         changed(deployed.project, "board/settings.py", append='\nMIDDLEWARE = MIDDLEWARE + ["posts.broken.BrokenMiddleware"]\n'):
        result, load = deploy_under_load(deployed, check=False)
    _assert_refused(deployed, result, load, live, "HTTP 500")
    assert {row["id"] for row in releases(deployed) if row["servers"]} == {live}


def _start_deploy(site: Site) -> subprocess.Popen:
    return subprocess.Popen([*DJSHIP, "deploy"], cwd=site.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(site: Site) -> None:
    lock = site.project / ".djship" / "deploy.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and "deploy by pid" in lock.read_text()):
        assert time.monotonic() < deadline, "the first deploy never took the lock"
        time.sleep(0.05)


def test_a_second_deploy_is_refused_while_one_runs(deployed: Site):
    (deployed.project / ".djship" / "deploy.lock").unlink(missing_ok=True)
    first = _start_deploy(deployed)
    try:
        _wait_for_lock(deployed)
        second = deployed.djship("deploy", check=False)
        assert second.returncode == 1 and "another deploy, rollback, scale or up is running" in second.stderr
        assert first.wait(timeout=300) == 0, first.stderr
    finally:
        kill_process_group(first.pid)


def test_a_crashed_deploy_leaves_no_lock_behind(deployed: Site):
    (deployed.project / ".djship" / "deploy.lock").unlink(missing_ok=True)
    crashed = _start_deploy(deployed)
    try:
        _wait_for_lock(deployed)
        crashed.kill()
        crashed.wait(timeout=30)
    finally:
        kill_process_group(crashed.pid)
    _, load = deploy_under_load(deployed)
    assert load.failures == []
    assert answering_releases(deployed) == {live_release(deployed)}
