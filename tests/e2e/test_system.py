"""The whole system from `djship up` on a copy of examples/board, checked over HTTPS with djship's CA."""

from __future__ import annotations

import os
import re
import signal
import struct
import time
import uuid
import zlib

import pytest
import requests

from tests.e2e.conftest import RequestLoop, Site

pytestmark = pytest.mark.e2e

CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _csrf(session: requests.Session, url: str) -> str:
    response = session.get(url)
    assert response.status_code == 200, response.text[:500]
    return CSRF_INPUT.search(response.text).group(1)


def _post_form(
    session: requests.Session, url: str, data: dict, files: dict | None = None, page: str | None = None
) -> requests.Response:
    """Submit a Django form as a browser does: the token from the page that shows the form (default: url),
    Origin and Referer of the HTTPS site."""
    page = page or url
    token = _csrf(session, page)
    origin = url.split("/", 3)[:3]
    headers = {"Origin": "/".join(origin), "Referer": page}
    return session.post(url, data={"csrfmiddlewaretoken": token, **data}, files=files, headers=headers,
                        allow_redirects=False)


def _png(size: int = 8) -> bytes:
    """A valid RGB PNG made with the standard library (the test environment has no Pillow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xc8\x1e\x1e" * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _sign_up(site: Site, session: requests.Session) -> str:
    username = f"user{uuid.uuid4().hex[:8]}"
    password = "a-long-passphrase-" + uuid.uuid4().hex
    response = _post_form(
        session, f"{site.url}/accounts/signup/",
        {"username": username, "password1": password, "password2": password},
    )
    assert response.status_code == 302, response.text[:2000]
    assert _post_form(session, f"{site.url}/accounts/logout/", {}, page=f"{site.url}/").status_code in (200, 302)
    response = _post_form(session, f"{site.url}/accounts/login/", {"username": username, "password": password})
    assert response.status_code == 302, "login through the HTML form failed:\n" + response.text[:2000]
    return username


def _create_post(site: Site, session: requests.Session, title: str) -> str:
    response = _post_form(
        session, f"{site.url}/posts/new/", {"title": title, "body": "Written through the HTML form."},
        files={"image": ("dot.png", _png(), "image/png")},
    )
    assert response.status_code == 302, response.text[:2000]
    return response.headers["Location"]


def test_home_page_over_https_with_the_djship_ca(site: Site):
    response = site.session().get(site.url + "/")
    assert response.status_code == 200
    assert "<html" in response.text.lower()
    assert "max-age=" in response.headers["Strict-Transport-Security"]


def test_sign_up_log_in_and_post_through_the_html_forms(site: Site):
    session = site.session()
    username = _sign_up(site, session)
    title = f"Hello from {username}"
    location = _create_post(site, session, title)
    detail = session.get(site.url + location if location.startswith("/") else location)
    assert detail.status_code == 200 and title in detail.text
    image = re.search(r'src="(/media/[^"]+)"', detail.text)
    assert image, "the post page shows no uploaded image"
    uploaded = session.get(site.url + image.group(1))
    assert uploaded.status_code == 200 and uploaded.content == _png()
    listing = session.get(site.url + "/api/posts/").json()["posts"]
    assert any(post["title"] == title and post["author"] == username for post in listing)


def test_admin_css_is_served_by_nginx_not_django(site: Site):
    path = "/static/admin/css/base.css"
    response = site.session().get(site.url + path)
    assert response.status_code == 200 and "text/css" in response.headers["Content-Type"]
    # nginx's static location sets these (an unhashed name is revalidated); every response Django makes carries
    # X-Frame-Options instead.
    assert response.headers["Cache-Control"] == "no-cache" and "ETag" in response.headers
    assert "X-Frame-Options" not in response.headers
    assert "X-Frame-Options" in site.session().get(site.url + "/").headers


def test_http_answers_301_to_https(site: Site):
    response = requests.get(f"http://localhost:{site.ports.http}/posts/1/?page=2", allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == f"{site.url}/posts/1/?page=2"


def test_client_cannot_forge_the_forwarded_headers(site: Site):
    # If the balancer passed the client's X-Forwarded-Proto through, Django would redirect this to HTTPS.
    response = site.session().get(site.url + "/", headers={"X-Forwarded-Proto": "http"}, allow_redirects=False)
    assert response.status_code == 200


def test_requests_are_spread_over_both_app_servers(site: Site):
    session = site.session()
    served_by = {session.get(site.url + "/api/posts/").headers["X-Djship-Server"] for _ in range(20)}
    assert served_by == {"app1", "app2"}


def test_status_shows_the_topology(site: Site):
    report = site.status()
    assert report["url"] == f"{site.url}/" and report["ca_path"] == site.ca
    roles = [component["role"] for component in report["components"]]
    assert roles == ["balancer", "app", "app", "app", "app", "database"]
    for component in report["components"]:
        assert component["state"] == "RUNNING" and component["pid"], component
        assert component["health"] in ("up", "accepting"), component
    table = site.djship("status").stdout
    assert "balancer" in table and "app2-gunicorn" in table and "database" in table


def test_up_on_a_running_system_changes_nothing(site: Site):
    before = {c["name"]: c["pid"] for c in site.status()["components"]}
    result = site.djship("up")
    assert "nothing was changed" in result.stdout
    assert {c["name"]: c["pid"] for c in site.status()["components"]} == before


def test_manage_runs_in_the_live_release(site: Site):
    result = site.djship("manage", "--", "shell", "-c", "from django.conf import settings; print(settings.DEBUG, settings.DATABASES['default']['ENGINE'])")
    assert result.stdout.strip().splitlines()[-1] == "False django.db.backends.postgresql"


def test_logs_show_each_component(site: Site):
    balancer = site.djship("logs", "haproxy", "-n", "20").stdout
    assert "app_servers/app" in balancer
    app = site.djship("logs", "app2").stdout
    assert "local app2-nginx-access | " in app and "local app2-gunicorn | " in app  # each line: host, log
    unknown = site.djship("logs", "app9", check=False)
    assert unknown.returncode == 1 and "no component 'app9'" in unknown.stderr


def test_kill_9_of_a_gunicorn_under_load_fails_no_request_and_is_restarted(site: Site):
    victim = site.component("app1-gunicorn")["pid"]
    with RequestLoop(site) as load:
        os.kill(victim, signal.SIGKILL)
        load.wait_for(load.served + 400)
    assert load.failures == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        restarted = site.component("app1-gunicorn")
        if restarted["pid"] not in (None, victim) and restarted["state"] == "RUNNING" and restarted["health"] == "up":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"app1-gunicorn was not restarted and healthy again: {restarted}")


def test_data_survives_down_and_up(site: Site):
    session = site.session()
    _sign_up(site, session)
    title = f"Kept across restarts {uuid.uuid4().hex[:6]}"
    _create_post(site, session, title)
    before = session.get(site.url + "/api/posts/").json()["posts"]
    site.djship("down")
    assert site.status()["running"] is False
    site.up()
    after = site.session().get(site.url + "/api/posts/").json()["posts"]
    assert after == before and any(post["title"] == title for post in after)
