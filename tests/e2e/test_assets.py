"""What a browser gets for static files: no failed asset across deploys and rollbacks, fresh CSS, compression.

A copy of the example runs first with Django's default storage (unhashed names), then switched to
ManifestStaticFilesStorage (hashed names, name.0123456789ab.css), as the tests below need it.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Ports, Site, make_project, searchable_directory

ASSET_PORTS = Ports.of(https=17443, http=17080, database=24432, app_prefix="127.0.81", database_address="127.0.82.1")
MANIFEST = ('\nSTORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},\n'
            '            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}\n')
LINKED = re.compile(r"""(?:href|src)="(/static/[^"]+)\"""")
HASHED_CSS = re.compile(r"/static/css/board\.[0-9a-f]{12}\.css")
IMMUTABLE = "public, max-age=31536000, immutable"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def assets_site():
    """The example with the default storage, up on ASSET_PORTS; `up`'s output is kept in `up_output`."""
    with searchable_directory() as directory:
        site = Site(make_project(directory, ASSET_PORTS), ASSET_PORTS)
        try:
            site.up_output = site.up().stdout
            yield site
        finally:
            site.stop_everything()


class PageLoop:
    """Browsers in threads: fetch the home page, then every CSS and JS file it links; count each failure."""

    def __init__(self, site: Site, threads: int = 3, max_seconds: float = 240):
        self.site = site
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.deadline = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.assets: Counter[str] = Counter()
        self.page_releases: Counter[str] = Counter()

    def _fetch(self, session: requests.Session, path: str) -> requests.Response | None:
        try:
            response = session.get(self.site.url + path, timeout=30)
        except requests.RequestException as error:
            self._fail(f"{path}: {error!r}")
            return None
        if response.status_code != 200:
            self._fail(f"{path}: HTTP {response.status_code} from {response.headers.get('X-Djship-Server')}")
            return None
        return response

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def _run(self) -> None:
        session = self.site.session()
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            page = self._fetch(session, "/")
            if page is None:
                continue
            with self.lock:
                self.page_releases[page.headers.get("X-Djship-Release", "?")] += 1
            for path in LINKED.findall(page.text):
                if self._fetch(session, path) is not None:
                    with self.lock:
                        self.assets[path] += 1

    def __enter__(self) -> PageLoop:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(self.assets.values()) < 10:
            assert time.monotonic() < deadline and not self.failures, f"the page loop does not get going: {self.failures}"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _direct(site: Site, server: int, path: str, **headers: str) -> requests.Response:
    """A request to one app server's nginx, around the balancer."""
    session = requests.Session()
    session.trust_env = False
    return session.get(f"http://{site.ports.app_prefix}.{server}:8000{path}", headers=headers, timeout=10, stream=True)


def _linked_css(site: Site) -> str:
    return next(path for path in LINKED.findall(site.session().get(site.url + "/").text) if path.endswith(".css"))


def _live_static(site: Site) -> Path:
    live = (site.project / ".djship" / "current").resolve()
    return live / "static"


def _edit_css(site: Site, rule: str) -> None:
    css = site.project / "static" / "css" / "board.css"
    css.write_text(css.read_text() + rule)


def _use_manifest_storage(site: Site) -> None:
    settings = site.project / "board" / "settings.py"
    if MANIFEST not in settings.read_text():
        settings.write_text(settings.read_text() + MANIFEST)
        site.djship("deploy")
    assert HASHED_CSS.fullmatch(_linked_css(site)), _linked_css(site)


def _write_posts(site: Site) -> None:
    """Enough posts for /api/posts/ to be worth compressing (nginx leaves bodies under 256 bytes as they are)."""
    site.djship("manage", "--", "shell", "-c", (
        "from django.contrib.auth.models import User; from posts.models import Post\n"
        "author, _ = User.objects.get_or_create(username='assets')\n"
        "Post.objects.bulk_create(Post(author=author, title=f'Post {n}', body='Compressible. ' * 20) for n in range(10))"))


def test_up_mentions_djship_trust_once(assets_site: Site):
    assert assets_site.up_output.count("djship trust") == 1, assets_site.up_output


def test_with_unhashed_names_a_changed_css_is_fetched_fresh_on_the_next_revalidation(assets_site: Site):
    session = assets_site.session()
    url = assets_site.url + "/static/css/board.css"
    before = session.get(url)
    assert before.status_code == 200
    assert before.headers["Cache-Control"] == "no-cache", before.headers  # the browser asks again on every use
    validators = {"If-None-Match": before.headers["ETag"], "If-Modified-Since": before.headers["Last-Modified"]}
    assert session.get(url, headers=validators).status_code == 304
    untouched = assets_site.url + "/static/admin/css/base.css"
    untouched_etag = session.get(untouched).headers["ETag"]

    _edit_css(assets_site, "\n.fresh-after-deploy { color: #010203; }\n")
    assets_site.djship("deploy")

    after = session.get(url, headers=validators)
    assert after.status_code == 200 and ".fresh-after-deploy" in after.text, (after.status_code, after.headers)
    assert session.get(url, headers={"If-None-Match": after.headers["ETag"]}).status_code == 304
    # A file the deploy did not change keeps its validators: the browser's revalidation is still a 304.
    assert session.get(untouched, headers={"If-None-Match": untouched_etag}).status_code == 304


def test_hashed_assets_never_fail_across_a_deploy_and_a_rollback(assets_site: Site):
    _use_manifest_storage(assets_site)
    old_css = _linked_css(assets_site)

    _edit_css(assets_site, "\n.deployed-under-load { color: #040506; }\n")
    with PageLoop(assets_site) as deploy:
        assets_site.djship("deploy")
    new_css = _linked_css(assets_site)
    assert new_css != old_css

    for server in (1, 2):
        response = _direct(assets_site, server, old_css)
        assert response.status_code == 200, f"app{server} answers {response.status_code} for the old {old_css}"

    with PageLoop(assets_site) as rollback:
        assets_site.djship("rollback")
    assert _linked_css(assets_site) == old_css
    for server in (1, 2):
        response = _direct(assets_site, server, new_css)
        assert response.status_code == 200, f"app{server} answers {response.status_code} for the newer {new_css}"

    for loop, what in ((deploy, "deploy"), (rollback, "rollback")):
        assert loop.failures == [], f"failed requests during the {what}: {loop.failures[:10]}"
        assert loop.assets[old_css] > 0 and loop.assets[new_css] > 0, f"the {what} was not seen: {loop.assets}"
        assert len(loop.page_releases) == 2, f"pages from one release only during the {what}: {loop.page_releases}"
    print(f"assets fetched during the deploy: {sum(deploy.assets.values())}, the rollback: {sum(rollback.assets.values())}")


def test_hashed_names_are_immutable_and_others_are_revalidated(assets_site: Site):
    _use_manifest_storage(assets_site)
    session = assets_site.session()
    admin_css = next(f"/static/admin/css/{file.name}" for file in (_live_static(assets_site) / "admin/css").iterdir()
                     if re.fullmatch(r"base\.[0-9a-f]{12}\.css", file.name))
    for path in (_linked_css(assets_site), admin_css):
        response = session.get(assets_site.url + path)
        assert response.status_code == 200 and response.headers["Cache-Control"] == IMMUTABLE, (path, response.headers)
    for path in ("/", _linked_css(assets_site)):  # what a browser asks for: brotli wins over gzip
        response = session.get(assets_site.url + path, headers={"Accept-Encoding": "gzip, deflate, br"})
        assert response.headers.get("Content-Encoding") == "br", (path, response.headers)
    for path in ("/static/css/board.css", "/static/admin/css/base.css", "/static/js/board.js"):
        response = session.get(assets_site.url + path)
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache", (path, response.headers)
        assert "ETag" in response.headers and "Last-Modified" in response.headers


def _decoded(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    return subprocess.run(["brotli", "-d", "-c"], input=body, capture_output=True, check=True).stdout


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_css_js_html_and_json_are_compressed_and_decompress_to_the_same_body(assets_site: Site, encoding: str):
    _use_manifest_storage(assets_site)
    static = _live_static(assets_site)
    _write_posts(assets_site)
    js = next(path for path in LINKED.findall(assets_site.session().get(assets_site.url + "/").text) if path.endswith(".js"))
    session = assets_site.session()
    for path in (_linked_css(assets_site), js, "/static/admin/css/base.css"):
        for server in (1, 2):
            packed = _direct(assets_site, server, path, **{"Accept-Encoding": encoding})
            assert packed.status_code == 200 and packed.headers.get("Content-Encoding") == encoding, packed.headers
            assert packed.headers["Vary"] == "Accept-Encoding"
            assert _decoded(encoding, packed.raw.read(decode_content=False)) == (static / path.removeprefix("/static/")).read_bytes()
            plain = _direct(assets_site, server, path, **{"Accept-Encoding": "identity"})
            assert "Content-Encoding" not in plain.headers
            assert plain.raw.read() == (static / path.removeprefix("/static/")).read_bytes()
    for path, kind in (("/", "text/html"), ("/api/posts/", "application/json")):
        packed = session.get(assets_site.url + path, headers={"Accept-Encoding": encoding}, stream=True)
        assert packed.headers["Content-Type"].startswith(kind) and packed.headers.get("Content-Encoding") == encoding
        body = _decoded(encoding, packed.raw.read(decode_content=False))
        plain = session.get(assets_site.url + path, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and body == plain.content, path
