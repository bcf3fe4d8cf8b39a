"""End-to-end fixtures: the real `djship` CLI on a copy of examples/board, on loopback ports of the tests' own.

Every system a test brings up is taken down by the fixture that made it, and any process it started that is
still alive afterwards is killed by PID, also when the test failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from djship.config import with_values

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "board"
DJSHIP = [sys.executable, "-m", "djship"]


# Runs side by side (one per git worktree) set DJSHIP_TEST_OFFSET=1..9: every test port moves up by it and every
# loopback address from 127.0.x.y to 127.<offset>.x.y, so they never collide.
# Under pytest-xdist (`./bootstrap test` runs two workers) worker gwN adds N, so the workers never collide either.
OFFSET = int(os.environ.get("DJSHIP_TEST_OFFSET", "0")) + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])


def _shift(address: str) -> str:
    first, _, rest = address.split(".", 2)
    return f"{first}.{OFFSET}.{rest}"


@dataclass(frozen=True)
class Ports:
    """A loopback layout that does not collide with a developer's own `djship up` on the defaults."""

    https: int
    http: int
    database: int
    app_prefix: str
    database_address: str

    @classmethod
    def of(cls, https: int, http: int, database: int, app_prefix: str, database_address: str) -> Ports:
        return cls(https + OFFSET, http + OFFSET, database + OFFSET, _shift(app_prefix), _shift(database_address))

    def settings(self) -> dict[str, object]:
        return {
            "balancer.https_port": self.https,
            "balancer.http_port": self.http,
            "database.port": self.database,
            "database.address": self.database_address,
            "app.address_prefix": self.app_prefix,
        }


MAIN_PORTS = Ports.of(https=18443, http=18080, database=25432, app_prefix="127.0.11", database_address="127.0.12.1")
SPARE_PORTS = Ports.of(https=19443, http=19080, database=26432, app_prefix="127.0.21", database_address="127.0.22.1")
DEPLOY_PORTS = Ports.of(https=20443, http=20080, database=27432, app_prefix="127.0.31", database_address="127.0.32.1")


def run_djship(project: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*DJSHIP, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"djship {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@contextmanager
def searchable_directory():
    """A temporary directory that djship's service user can reach when the tests run as root.

    pytest's own tmp_path lives under a 0700 directory that every new pytest session resets, so it is not used.
    """
    directory = Path(tempfile.mkdtemp(prefix="djship-e2e-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def workdir():
    with searchable_directory() as directory:
        yield directory


def make_project(directory: Path, ports: Ports) -> Path:
    """A fresh copy of the example with djship.toml written by `djship init` and the tests' ports set."""
    project = directory / "board"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
    run_djship(project, "init")
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), ports.settings()))
    return project


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_process_group(pid: int) -> None:
    """SIGKILL a process and its group if it is still alive, and wait until it is gone."""
    if not alive(pid):
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


@dataclass
class Site:
    project: Path
    ports: Ports
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.ports.https}"

    @property
    def ca(self) -> str:
        return str(self.project / ".djship" / "tls" / "ca.crt")

    def djship(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_djship(self.project, *args, check=check)

    def status(self) -> dict:
        report = json.loads(self.djship("status", "--json").stdout)
        self.pids.update(pid for pid in [report["supervisor_pid"], *(c["pid"] for c in report["components"])] if pid)
        return report

    def component(self, name: str) -> dict:
        return next(c for c in self.status()["components"] if c["name"] == name)

    def session(self) -> requests.Session:
        session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE from the environment silently replaces session.verify.
        session.trust_env = False
        session.verify = self.ca
        return session

    def up(self) -> subprocess.CompletedProcess:
        result = self.djship("up")
        self.status()
        return result

    def stop_everything(self) -> None:
        """`djship down`, then SIGKILL by PID whatever it left running."""
        run_djship(self.project, "down", check=False)
        for pid in self.pids:
            kill_process_group(pid)


class RequestLoop:
    """GETs from several threads, from `with` until its end (and never longer than max_seconds), against the
    site under test only; counts every failure and which release answered."""

    PAUSE = 0.025
    """Each thread's pause between requests. Flat out, 4 threads took 97% of this 2-core machine (441 requests/s on
    the example; the system under test and the other test worker got the rest); with 25 ms about 120 requests/s,
    47% busy: still a request every 8 ms, so a gap in serving longer than that is met."""

    def __init__(self, site: Site, path: str = "/api/posts/", threads: int = 4, max_seconds: float = 180):
        self.site = site
        self.url = site.url + path
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.deadline = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.releases: Counter[str] = Counter()

    @property
    def served(self) -> int:
        return sum(self.releases.values())

    def _get(self, session: requests.Session) -> tuple[str | None, str | None]:
        """One request: (what failed or None, the release that answered)."""
        try:
            response = session.get(self.url, timeout=30)
        except requests.RequestException as error:
            return repr(error), None
        if response.status_code != 200:
            return f"HTTP {response.status_code}", None
        return None, response.headers.get("X-Djship-Release", "?")

    def _run(self) -> None:
        session = self.site.session()
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            outcome, release = self._get(session)
            with self.lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.releases[release] += 1
            self.stopped.wait(self.PAUSE)

    def wait_for(self, served: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.served < served:
            assert time.monotonic() < deadline, f"only {self.served} of {served} requests served"
            time.sleep(0.05)

    def __enter__(self) -> RequestLoop:
        for thread in self.threads:
            thread.start()
        self.wait_for(20)
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=60)


@contextmanager
def running_site(ports: Ports):
    """A copy of the example, up on these ports until the end of the `with`; then down, and killed by PID."""
    with searchable_directory() as directory:
        running = Site(make_project(directory, ports), ports)
        try:
            running.up()
            yield running
        finally:
            running.stop_everything()


@pytest.fixture(scope="session")
def site() -> Site:
    """The example project, up once for the session: https://localhost:18443 with two app servers."""
    with running_site(MAIN_PORTS) as running:
        yield running


def supervisor_pid_of(project: Path) -> int | None:
    pid_file = project / ".djship" / "supervisor" / "supervisord.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


# Mozilla's "intermediate" guidelines 6.0: the TLS 1.3 suites and ECDHE with AEAD ciphers for TLS 1.2 (no DHE).
INTERMEDIATE_CIPHERS = {
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}


@dataclass(frozen=True)
class TlsScan:
    """What sslscan found at an address: each protocol enabled or disabled, the (version, cipher) pairs accepted,
    and the key exchange groups."""

    protocols: dict[str, str]
    accepted: list[tuple[str, str]]
    groups: list[str]
    output: str


def sslscan(address: str, port: int, sni: str | None = None) -> TlsScan:
    scan = subprocess.run(["sslscan", "--no-colour", *([f"--sni-name={sni}"] if sni else []), f"{address}:{port}"],
                          capture_output=True, text=True, timeout=120)
    assert scan.returncode == 0, scan.stderr
    groups = scan.stdout.split("Server Key Exchange Group(s):")[-1]
    return TlsScan(
        protocols=dict(re.findall(r"^(SSLv2|SSLv3|TLSv1\.[0-3])\s+(enabled|disabled)", scan.stdout, re.M)),
        accepted=re.findall(r"^(?:Preferred|Accepted)\s+(TLSv1\.[0-3])\s+\d+ bits\s+(\S+)", scan.stdout, re.M),
        groups=re.findall(r"^TLSv1\.[23]\s+\d+ bits\s+(\S+)", groups, re.M),
        output=scan.stdout,
    )


ONLY_TLS12_AND_13 = {"SSLv2": "disabled", "SSLv3": "disabled", "TLSv1.0": "disabled", "TLSv1.1": "disabled",
                     "TLSv1.2": "enabled", "TLSv1.3": "enabled"}
