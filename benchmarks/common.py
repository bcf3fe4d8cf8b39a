"""What the benchmarks share: a copy of examples/board deployed with the real `djship up` on loopback ports of the
caller's choosing, its database seeded with the same rows, wrk, the bare-gunicorn baseline, and processes that
are stopped by PID."""

from __future__ import annotations

import argparse

import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from djship.config import parse_config, with_values

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "board"
DJSHIP = [sys.executable, "-m", "djship"]
PAGES = {"db page": "/api/posts/", "plain page": "/accounts/login/", "static file": "/static/admin/css/base.css"}
# What a TLS-terminating proxy tells Django; sent by hand to servers that are reached without one.
FORWARDED = {"Host": "localhost", "X-Forwarded-Proto": "https"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SEED = """
from django.contrib.auth.models import User
from posts.models import Comment, Post
author, _ = User.objects.get_or_create(username="bench")
for number in range(10 - Post.objects.count()):
    post = Post.objects.create(author=author, title=f"Post {number}", body="Benchmark body text. " * 20)
    Comment.objects.create(post=post, author=author, body="A comment.")
print(Post.objects.count())
"""


@dataclass
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    """CPU time (user + system) the serving processes spent per request, wrk's own left out. Other work on a shared
    machine moves it less than throughput and latency, but still moves it (caches, context switches)."""


@dataclass(frozen=True)
class Deployment:
    """A copy of the example deployed by djship, and what a process needs to run its release beside it."""

    project: Path

    @property
    def release(self) -> Path:
        return self.project / ".djship" / "current"

    @property
    def ca(self) -> Path:
        return self.project / ".djship" / "tls" / "ca.crt"

    @property
    def site_pem(self) -> Path:
        """djship's site certificate and key in one file, as HAProxy and nginx both read it."""
        return self.project / ".djship" / "tls" / "site.pem"

    @property
    def supervisord(self) -> int:
        """djship's supervisor: every process of the deployed system (PostgreSQL too) runs below it."""
        return int((self.project / ".djship" / "supervisor" / "supervisord.pid").read_text())

    @property
    def user(self) -> str | None:
        """As root, djship runs the app as this user ([users] app of the copied example's djship.toml), and so do
        the benchmarks."""
        return parse_config((self.project / "djship.toml").read_text()).users.app if os.geteuid() == 0 else None

    def env(self, settings: str = "djship_production.settings", *path: Path) -> dict[str, str]:
        """The environment of a process running the release's Django with SETTINGS, PATH first on its path."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings,
            "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, self.release / "app", self.release)),
        }

    def venv_bin(self, name: str) -> str:
        return str(self.release / "venv" / "bin" / name)


def djship(project: Path, *args: str) -> str:
    result = subprocess.run([*DJSHIP, *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"djship {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def copy_example(workdir: Path, settings: dict[str, object]) -> Deployment:
    """A copy of examples/board in WORKDIR with djship.toml from `djship init`, then SETTINGS (dotted keys)."""
    workdir.chmod(0o755)
    project = workdir / "board"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media"))
    djship(project, "init")
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), settings))
    return Deployment(project)


def seed(deployment: Deployment) -> None:
    djship(deployment.project, "manage", "--", "shell", "-c", SEED)


def destroy(deployment: Deployment) -> None:
    subprocess.run([*DJSHIP, "destroy", "--yes"], cwd=deployment.project, capture_output=True)


def bare_gunicorn(deployment: Deployment, port: int, workers: int = 6) -> list[str]:
    """The baseline: the release's gunicorn with sync workers on TCP, no nginx, no TLS (6 = djship's 2 x 3)."""
    return [deployment.venv_bin("gunicorn"), "board.wsgi:application", "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--no-control-socket"]


def expect_200(url: str, headers: dict[str, str], ca: Path) -> None:
    """wrk counts a redirect as a success, so every URL is first checked to answer 200 itself."""
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca), *header_args, url],
        capture_output=True, text=True,
    ).stdout
    if status != "200":
        sys.exit(f"{url} answered {status}, not 200; the benchmark would measure the wrong thing")


def _milliseconds(output: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}%\s+([\d.]+)(us|ms|s)\b", output).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def cpu_seconds(roots: set[int]) -> float:
    """CPU time (user + system) used so far by the processes ROOTS and every process below them."""
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command's closing parenthesis: state, ppid, ..., utime (12th), stime (13th).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total, pending, seen = 0.0, list(roots), set()
    while pending:
        pid = pending.pop()
        if pid not in seen:
            seen.add(pid)
            total += used.get(pid, 0.0)
            pending.extend(children.get(pid, ()))
    return total


def wrk(url: str, duration: int, connections: int, headers: dict[str, str], serving: set[int]) -> Measurement:
    """SERVING: the processes (with all below them) that answer URL, whose CPU time is counted.

    A response slower than wrk's default 2 s timeout would be left out of the latencies; on a busy shared machine
    that happens, so wrk waits 10 s and any timeout fails the benchmark."""
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    cpu_before = cpu_seconds(serving)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", *header_args, url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx or 3xx responses" in output or "Socket errors" in output:
        sys.exit(f"wrk saw errors from {url}:\n{output}")
    cpu_ms = 1000 * (cpu_seconds(serving) - cpu_before) / int(re.search(r"(\d+) requests in", output).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    return Measurement(rate, _milliseconds(output, "50"), _milliseconds(output, "99"), cpu_ms)


def require_wrk() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: sudo apt-get install -y wrk")


def _listening(address: int | Path, host: str) -> bool:
    family = socket.AF_UNIX if isinstance(address, Path) else socket.AF_INET
    with socket.socket(family) as probe:
        return probe.connect_ex(str(address) if isinstance(address, Path) else (host, address)) == 0


def wait_until_listening(address: int | Path, host: str = "127.0.0.1", timeout: float = 30) -> None:
    """ADDRESS is a TCP port on HOST or a unix socket's path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(address, host):
            return
        time.sleep(0.1)
    sys.exit(f"nothing listens on {address if isinstance(address, Path) else f'{host}:{address}'} after {timeout}s")


@contextmanager
def process(argv: list[str], listens: int | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
            user: str | None = None, host: str = "127.0.0.1"):
    """ARGV running (as USER) until the block ends, once it listens on LISTENS; then stopped by its PID."""
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until_listening(listens, host)
        yield child
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def machine(connections: int, duration: int, repeat: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}; wrk -t2 -c{connections} -d{duration}s, median of {repeat} interleaved "
            f"rounds; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def median(measurements: list[Measurement]) -> Measurement:
    return Measurement(*(statistics.median(getattr(m, field) for m in measurements)
                         for field in ("requests_per_second", "p50_ms", "p99_ms", "cpu_ms")))


@dataclass(frozen=True)
class Target:
    base: str
    """The URL the pages are appended to."""
    headers: dict[str, str]


def measure(cases: list[tuple[str, str]], targets: dict[str, Target], repeat: int, duration: int, connections: int,
            ca: Path, serving: set[int]) -> dict[tuple[str, str], Measurement]:
    """Each (page, target) case loaded REPEAT times, round after round, so a slow minute of a shared machine does
    not land on one target only; the medians. SERVING: the processes below which every target runs."""
    for page, target in cases:
        expect_200(targets[target].base + PAGES[page], targets[target].headers, ca)
    runs: dict[tuple[str, str], list[Measurement]] = {}
    for round_number in range(1, repeat + 1):
        print(f"Round {round_number} of {repeat}: {len(cases)} loads of {duration}s", flush=True)
        for page, target in cases:
            runs.setdefault((page, target), []).append(
                wrk(targets[target].base + PAGES[page], duration, connections, targets[target].headers, serving)
            )
    return {
        case: median(measured)
        for case, measured in runs.items()
    }


def load_options(description: str) -> argparse.Namespace:
    """What every benchmark's load takes: seconds per measurement, connections, interleaved rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are shown (default 3)")
    return parser.parse_args()
