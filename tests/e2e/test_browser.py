"""A real headless Chromium drives the deployed board over HTTPS with djship's CA trusted by `djship trust`.

`djship trust` runs with a temporary HOME, so it creates the NSS database Chromium reads there, and it adds the CA
to this machine's system store (which the test checks and restores, also when it fails). No flag that weakens
certificate checks is given, so a page only loads if HAProxy's certificate chains to djship's CA and names
localhost; no page may log a console error. `djship trust --remove` then takes the CA out of both stores. The browser signs up, logs out, logs in, writes a post and finds it on the
home page, and checks on every page that the stylesheet (served by nginx from the collected static files)
arrived and applies. All name resolution other than localhost is blocked, so the browser only ever talks to
the site under test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from djship.tls.trust import LocalCA
from tests.e2e.conftest import DJSHIP, alive

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CERTUTIL = "/usr/bin/certutil"
SYSTEM_STORE = Path("/usr/local/share/ca-certificates")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # what update-ca-certificates writes, OpenSSL's default
WAIT = 30  # seconds for a page or an element

# What examples/board/static/css/board.css sets, as Chromium computes it.
BODY_BACKGROUND = "rgb(245, 246, 248)"  # body { background: #f5f6f8 }
HEADER_BACKGROUND = "rgb(36, 87, 197)"  # .site-header { background: #2457c5 }

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-pings",
    "--no-proxy-server",
    "--window-size=1280,900",
    # Every host name but localhost resolves to nothing: the site under test is the only server reachable.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
]

# Nothing that would let a page load with an untrusted certificate may ever be among the flags.
FORBIDDEN_FLAG_PARTS = ("ignore-certificate", "ignore-ssl", "allow-insecure", "ignore-urlfetcher-cert",
                        "unsafely-treat-insecure", "allow-running-insecure-content")


def _require_tools() -> None:
    missing = [
        f"{path} (Debian package {package})"
        for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"), (CERTUTIL, "libnss3-tools"))
        if not os.access(path, os.X_OK)
    ]
    if missing:
        pytest.fail("missing for the browser test: " + ", ".join(missing)
                    + "; install with: apt-get install chromium chromium-driver libnss3-tools")


def _certutil_listing(home: Path) -> str:
    result = subprocess.run([CERTUTIL, "-d", f"sql:{home / '.pki' / 'nssdb'}", "-L"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"certutil -L exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _djship_trust(site, home: Path, *args: str) -> str:
    result = subprocess.run([*DJSHIP, "trust", *args], cwd=site.project, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(home), "COLUMNS": "200"})
    assert result.returncode == 0, f"djship trust {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _system_store_verifies(site) -> bool:
    """Whether OpenSSL's system bundle alone verifies the site (what curl and Python do by default)."""
    context = ssl.create_default_context(cafile=SYSTEM_BUNDLE)
    try:
        with socket.create_connection(("localhost", site.ports.https), timeout=10) as connection:
            with context.wrap_socket(connection, server_hostname="localhost"):
                return True
    except ssl.SSLCertVerificationError:
        return False


def _restore_system_store(before: set[Path]) -> None:
    """Whatever the test left in the system store goes, whether or not `djship trust --remove` worked."""
    left = set(SYSTEM_STORE.iterdir()) - before
    for path in left:
        path.unlink()
    if left:
        subprocess.run(["update-ca-certificates", "--fresh"], capture_output=True, timeout=120, check=True)


# ---- processes -------------------------------------------------------------------------------------------

def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def _our_processes(root_pid: int | None, marker: str) -> set[int]:
    """Descendants of chromedriver, and anything whose command line names our temporary directory
    (Chromium's helpers that may have been re-parented, such as the crash handler)."""
    table = _process_table()
    ours = {pid for pid, (_, cmdline) in table.items() if marker in cmdline}
    if root_pid is not None and root_pid in table:
        ours.add(root_pid)
        grew = True
        while grew:
            grew = False
            for pid, (parent, _) in table.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
    ours.discard(os.getpid())
    return ours


def _kill_leftovers(pids: set[int]) -> set[int]:
    """SIGKILL by PID whatever of `pids` is still alive; returns what was alive."""
    left = {pid for pid in pids if alive(pid)}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# ---- page helpers ----------------------------------------------------------------------------------------

def _describe(driver) -> str:
    try:
        text = driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        text = "<no body>"
    return f"url={driver.current_url!r} title={driver.title!r}\n--- page text ---\n{text[:2000]}"


def _wait(driver, condition, what: str):
    try:
        return WebDriverWait(driver, WAIT).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}; {_describe(driver)}") from None


def _loaded(driver) -> bool:
    return driver.execute_script("return document.readyState") == "complete"


def _submit_and_wait(driver, button, what: str) -> None:
    """Click a submit button and wait until the next document has replaced this one and finished loading."""
    old_html = driver.find_element(By.TAG_NAME, "html")
    button.click()

    def replaced(d) -> bool:
        try:
            old_html.tag_name  # raises once the old document is gone
            return False
        except WebDriverException:
            return _loaded(d)

    _wait(driver, replaced, what)


def _get(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, _loaded, f"{url} to load")


def _fill(driver, field_id: str, value: str) -> None:
    element = driver.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(value)


def _main_submit(driver):
    """The submit button of the page's own form (the nav's logout form has one too)."""
    return driver.find_element(By.CSS_SELECTOR, "main.content form button[type=submit]")


def _check_page(driver, site_url: str, path: str, first_load: bool = False) -> None:
    """The page came over trusted HTTPS from the site under test, board.css arrived and applies, and the console
    shows no error."""
    console_errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not console_errors, f"console errors on {path}: {console_errors}"
    title = driver.title
    source = driver.page_source
    assert title != "Privacy error" and "NET::ERR_CERT" not in source and "ERR_CERT_" not in source, (
        f"Chromium showed a certificate interstitial: the djship CA is not trusted. {_describe(driver)}")
    assert "This site can" not in title and "ERR_" not in title, f"Chromium showed an error page. {_describe(driver)}"
    assert driver.current_url.startswith(site_url + "/"), f"left the site under test: {_describe(driver)}"
    assert urlsplit(driver.current_url).path == path, f"expected to be on {path}: {_describe(driver)}"
    assert driver.execute_script("return window.isSecureContext && location.protocol") == "https:", _describe(driver)

    styles = driver.execute_script(
        "return [getComputedStyle(document.body).backgroundColor,"
        " getComputedStyle(document.querySelector('.site-header')).backgroundColor,"
        " getComputedStyle(document.body).fontFamily]")
    assert styles[0] == BODY_BACKGROUND, f"board.css not applied to body on {path}: background {styles[0]!r}"
    assert styles[1] == HEADER_BACKGROUND, f"board.css not applied to the header on {path}: {styles[1]!r}"
    assert "system-ui" in styles[2], f"board.css font-family not applied on {path}: {styles[2]!r}"

    sheets = driver.execute_script(
        "return Array.from(document.styleSheets).map(s => {"
        "  let rules = -1; try { rules = s.cssRules.length } catch (e) {}"
        "  return {href: s.href, rules: rules} })")
    board = [s for s in sheets if s["href"] and urlsplit(s["href"]).path.endswith("/board.css")]
    assert board, f"no board.css among the page's stylesheets on {path}: {sheets}"
    assert urlsplit(board[0]["href"]).netloc == urlsplit(site_url).netloc, f"board.css from elsewhere: {board}"
    assert board[0]["rules"] > 5, f"board.css on {path} has no readable rules: {board}"

    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => ({name: e.name, size: e.transferSize,"
        " body: e.decodedBodySize, status: e.responseStatus}))")
    css = [r for r in resources if urlsplit(r["name"]).path.endswith("/board.css")]
    assert css, f"the browser did not fetch board.css for {path}: {resources}"
    assert all(r["status"] in (None, 0, 200, 304) for r in css), f"board.css answered with an error: {css}"
    # An unhashed name is revalidated on every page (no-cache), so the browser always asks the server; after the
    # first page the answer is a 304 with no body to count, and the rules read above show what arrived.
    assert css[0]["size"] > 0, f"the browser used board.css from its cache without asking the server on {path}: {css}"
    if first_load:  # a fresh profile has nothing cached: the bytes came over the wire
        assert css[0]["body"] > 0, f"board.css arrived empty on the first page: {css}"
    for resource in resources:
        assert resource["name"].startswith(site_url + "/"), f"the page fetched something off-site: {resource}"


# ---- the test --------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_browser_signs_up_logs_in_and_posts_over_https_trusted_by_djship_trust(site, tmp_path):
    _require_tools()
    ca = LocalCA.load(Path(site.ca))
    before = set(SYSTEM_STORE.iterdir())
    home = Path(tempfile.mkdtemp(prefix="djship-home-", dir="/tmp"))
    try:
        assert not _system_store_verifies(site), "the system store trusts the site before `djship trust`"
        lines = _djship_trust(site, home).splitlines()
        assert lines[:2] == [
            f"system store: added {ca.system_file} (curl, wget, Python and other OpenSSL programs trust it)",
            f"NSS database {home}/.pki/nssdb (Chromium): created, added {ca.nickname!r}",
        ], lines
        assert ca.nickname in _certutil_listing(home)
        assert _system_store_verifies(site), "the system store does not trust the site after `djship trust`"

        _browse(site, tmp_path, home)

        lines = _djship_trust(site, home, "--remove").splitlines()
        assert lines == [f"system store: removed {ca.system_file}",
                         f"NSS database {home}/.pki/nssdb (Chromium): removed {ca.nickname!r}"], lines
        assert ca.nickname not in _certutil_listing(home)
        assert set(SYSTEM_STORE.iterdir()) == before
        assert not _system_store_verifies(site), "the system store still trusts the site after `djship trust --remove`"
    finally:
        _restore_system_store(before)
        shutil.rmtree(home, ignore_errors=True)


def _browse(site, tmp_path: Path, home: Path) -> None:
    """Sign up, log out, log in, write a post and find it, in a headless Chromium whose HOME is `home`."""
    started = time.monotonic()

    # Short, in /tmp: Chromium puts Unix sockets under TMPDIR, and pytest's tmp_path can exceed their 108-byte limit
    # (Chromium then exits before chromedriver can talk to it).
    root = Path(tempfile.mkdtemp(prefix="djship-chromium-", dir="/tmp"))
    try:
        profile = root / "profile"
        for directory in (profile, root / "cache", root / "config", root / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.accept_insecure_certs = False
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for flag in options.arguments:
            assert not any(part in flag for part in FORBIDDEN_FLAG_PARTS), f"certificate checks weakened by {flag}"

        environment = {
            **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_CACHE_HOME": str(root / "cache"),
            "TMPDIR": str(root / "tmp"),
        }
        environment.pop("SE_CHROMEDRIVER", None)
        log = tmp_path / "chromedriver.log"  # kept by pytest for a post-mortem
        service = Service(executable_path=CHROMEDRIVER, env=environment, log_output=str(log))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise

    driver = None
    driver_pid = None
    seen: set[int] = set()
    try:
        try:
            driver = webdriver.Chrome(service=service, options=options)
        finally:
            if service.process is not None:
                driver_pid = service.process.pid
                seen |= _our_processes(driver_pid, str(root))
        driver.set_page_load_timeout(60)
        assert driver.capabilities.get("acceptInsecureCerts") is False, driver.capabilities
        seen |= _our_processes(driver_pid, str(root))

        username = f"e2e_{uuid.uuid4().hex[:12]}"
        password = f"Brw-{secrets.token_urlsafe(18)}!9"
        title = f"Browser post {uuid.uuid4().hex[:8]}"
        body = "Written by a headless Chromium\nthrough HAProxy, nginx and gunicorn."

        # Sign up: the board logs the new user in and sends them home.
        _get(driver, site.url + "/accounts/signup/")
        _check_page(driver, site.url, "/accounts/signup/", first_load=True)
        seen |= _our_processes(driver_pid, str(root))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Sign up", _describe(driver)
        _fill(driver, "id_username", username)
        _fill(driver, "id_password1", password)
        _fill(driver, "id_password2", password)
        _submit_and_wait(driver, _main_submit(driver), "the sign-up to complete")
        _check_page(driver, site.url, "/")
        nav_user = driver.find_elements(By.CSS_SELECTOR, ".nav-user")
        assert nav_user and username in nav_user[0].text, f"not logged in after signing up. {_describe(driver)}"

        # Log out through the nav's POST form.
        _submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "form.logout-form button[type=submit]"),
                         "the logout to complete")
        _check_page(driver, site.url, "/")
        assert not driver.find_elements(By.CSS_SELECTOR, ".nav-user"), f"still logged in. {_describe(driver)}"
        assert driver.find_elements(By.LINK_TEXT, "Log in"), _describe(driver)

        # Writing a post needs a login: the board sends an anonymous visitor to the login page.
        _get(driver, site.url + "/posts/new/")
        _check_page(driver, site.url, "/accounts/login/")

        # Log in again.
        _get(driver, site.url + "/accounts/login/")
        _check_page(driver, site.url, "/accounts/login/")
        _fill(driver, "id_username", username)
        _fill(driver, "id_password", password)
        _submit_and_wait(driver, _main_submit(driver), "the login to complete")
        _check_page(driver, site.url, "/")
        nav_user = driver.find_elements(By.CSS_SELECTOR, ".nav-user")
        assert nav_user and username in nav_user[0].text, f"not logged in after logging in. {_describe(driver)}"

        # Write a post; board.js (a static file too) adds a live character count under the body.
        _get(driver, site.url + "/posts/new/")
        _check_page(driver, site.url, "/posts/new/")
        _fill(driver, "id_title", title)
        _fill(driver, "id_body", body)
        _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".char-count").text == f"{len(body)} characters",
              "board.js's character count to follow the body")
        _submit_and_wait(driver, _main_submit(driver), "the post to be published")

        # The post's own page.
        path = urlsplit(driver.current_url).path
        assert path.startswith("/posts/") and path.rstrip("/").rsplit("/", 1)[-1].isdigit(), (
            f"not on a post detail page after publishing. {_describe(driver)}")
        _check_page(driver, site.url, path)
        assert driver.find_element(By.CSS_SELECTOR, "h1.post-title").text == title, _describe(driver)
        assert driver.title.startswith(title), _describe(driver)
        post_body = driver.find_element(By.CSS_SELECTOR, ".post-body").text
        assert "Written by a headless Chromium" in post_body, _describe(driver)
        assert username in driver.find_element(By.CSS_SELECTOR, ".post .post-meta").text, _describe(driver)

        # The home page lists it, linking to that page.
        _get(driver, site.url + "/")
        _check_page(driver, site.url, "/")
        links = {a.text: a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, ".post-card .post-title a")}
        assert title in links, f"the new post is not listed on the home page. {_describe(driver)}"
        assert urlsplit(links[title]).path == path, f"the home page links {links[title]!r}, not {path!r}"
        seen |= _our_processes(driver_pid, str(root))
    except Exception:
        if log.exists():
            tail = log.read_text(errors="replace")[-4000:]
            print(f"--- chromedriver log (tail) ---\n{tail}")
        raise
    finally:
        seen |= _our_processes(driver_pid, str(root))
        if driver is not None:
            try:
                driver.quit()
            except Exception as error:  # still kill below
                print(f"driver.quit() failed: {error!r}")
        elif service.process is not None:
            service.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in seen | _our_processes(None, str(root))):
            time.sleep(0.2)
        leftover = _kill_leftovers(seen | _our_processes(None, str(root)))
        shutil.rmtree(root, ignore_errors=True)
        print(f"browser test took {time.monotonic() - started:.1f}s; tracked processes {sorted(seen)}")

    assert driver_pid is not None and driver_pid in seen
    assert len(seen) > 1, f"no Chromium process was seen under chromedriver {driver_pid}"
    assert not leftover, f"chromium/chromedriver processes outlived driver.quit() and were killed: {sorted(leftover)}"
