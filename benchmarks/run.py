"""djship benchmark: the full stack against bare gunicorn and runserver, measured in one run on this machine.

    python benchmarks/run.py [--duration 10] [--connections 32]

Deploys a copy of examples/board with the real `djship up` on loopback ports of its own (https://localhost:24443),
puts 10 posts in its database, then loads three pages with wrk (Debian package `wrk`):

  db page      /api/posts/           reads the 10 posts and their comment counts from PostgreSQL
  plain page   /accounts/login/      renders a template, no database query
  static file  /static/admin/css/base.css

(interleaved rounds, medians shown) against three targets that run the same release, the same production settings and the same database:

  djship       HAProxy (TLS) -> 2 x (nginx -> gunicorn, 3 sync workers) -> Django       (what djship runs)
  gunicorn     bare gunicorn, 6 sync workers on TCP, no nginx, no TLS                   (the baseline)
  runserver    manage.py runserver --noreload --insecure (static files via django.contrib.staticfiles)

Every figure is printed with its ratio to bare gunicorn measured in the same run. Bare gunicorn cannot serve
static files with DEBUG = False, so the static row compares with runserver. Also measured: time from
`djship up` (cold: new state directory, virtualenv from uv's cache) to the first HTTPS 200, `djship up` after
`djship down`, and a code-only `djship deploy`. Every process started here is stopped here, by PID.
"""

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
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from djship.config import with_values

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "board"
DJSHIP = [sys.executable, "-m", "djship"]
HTTPS_PORT, HTTP_PORT, DB_PORT = 24443, 24080, 31432
GUNICORN_PORT, RUNSERVER_PORT = 24801, 24802
PAGES = {"db page": "/api/posts/", "plain page": "/accounts/login/", "static file": "/static/admin/css/base.css"}
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
    p99_ms: float


def djship(project: Path, *args: str) -> str:
    result = subprocess.run([*DJSHIP, *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"djship {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def expect_200(url: str, headers: dict[str, str], ca: Path) -> None:
    """wrk counts a redirect as a success, so every URL is first checked to answer 200 itself."""
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca), *header_args, url],
        capture_output=True, text=True,
    ).stdout
    if status != "200":
        sys.exit(f"{url} answered {status}, not 200; the benchmark would measure the wrong thing")


def wrk(url: str, duration: int, connections: int, headers: dict[str, str]) -> Measurement:
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *header_args, url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx or 3xx responses" in output:
        sys.exit(f"wrk saw error responses from {url}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output).groups()
    return Measurement(rate, float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def process(argv: list[str], port: int, env: dict[str, str], cwd: Path, user: str | None):
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for_port(port)
        yield
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def https_200_after(project: Path, *args: str) -> float:
    """Seconds from running `djship ARGS` to the first 200 over HTTPS, verified with djship's CA."""
    started = time.monotonic()
    djship(project, *args)
    ca = project / ".djship" / "tls" / "ca.crt"
    while subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "--cacert", str(ca), f"https://localhost:{HTTPS_PORT}/"]
    ).returncode != 0:
        time.sleep(0.02)
    return time.monotonic() - started


def configure(project: Path) -> None:
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {
        "balancer.https_port": HTTPS_PORT,
        "balancer.http_port": HTTP_PORT,
        "database.port": DB_PORT,
        "database.address": "127.0.72.1",
        "app.address_prefix": "127.0.71",
    }))


def table(rows: list[tuple[str, str, Measurement | None, Measurement | None]]) -> str:
    lines = [
        "| page | target | req/s | p99 ms | req/s vs baseline | baseline |",
        "|---|---|---:|---:|---:|---|",
    ]
    for page, target, measured, baseline in rows:
        ratio = f"{measured.requests_per_second / baseline.requests_per_second:.2f}x" if baseline else "-"
        lines.append(
            f"| {page} | {target} | {measured.requests_per_second:,.0f} | {measured.p99_ms:.1f} | {ratio} | "
            f"{'gunicorn' if page != 'static file' else 'runserver'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are shown (default 3)")
    options = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: sudo apt-get install -y wrk")

    workdir = Path(tempfile.mkdtemp(prefix="djship-bench-"))
    workdir.chmod(0o755)
    project = workdir / "board"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media"))
    djship(project, "init")
    configure(project)
    try:
        print("Measuring djship up (cold), down, up (warm) ...", flush=True)
        cold_up = https_200_after(project, "up")
        djship(project, "down")
        warm_up = https_200_after(project, "up")
        djship(project, "manage", "--", "shell", "-c", SEED)

        release = project / ".djship" / "current"
        ca = project / ".djship" / "tls" / "ca.crt"
        user = "djship" if os.geteuid() == 0 else None
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "djship_production.settings",
            "PYTHONPATH": f"{release / 'app'}{os.pathsep}{release}",
        }
        forwarded = {"Host": "localhost", "X-Forwarded-Proto": "https"}
        targets = {
            "djship": (f"https://localhost:{HTTPS_PORT}", {}),
            "gunicorn": (f"http://127.0.0.1:{GUNICORN_PORT}", forwarded),
            "runserver": (f"http://127.0.0.1:{RUNSERVER_PORT}", forwarded),
        }
        gunicorn = [str(release / "venv" / "bin" / "gunicorn"), "board.wsgi:application", "-w", "6",
                    "-b", f"127.0.0.1:{GUNICORN_PORT}", "--no-control-socket"]
        runserver = [str(release / "venv" / "bin" / "python"), "manage.py", "runserver", "--noreload", "--insecure",
                     f"127.0.0.1:{RUNSERVER_PORT}"]
        runs: dict[tuple[str, str], list[Measurement]] = {}
        with process(gunicorn, GUNICORN_PORT, env, release / "app", user), \
                process(runserver, RUNSERVER_PORT, env, release / "app", user):
            cases = [(page, target) for page in PAGES for target in targets
                     if not (target == "gunicorn" and page == "static file")]
            for page, target in cases:
                base, headers = targets[target]
                expect_200(base + PAGES[page], headers, ca)
            # Interleaved, so a slow minute of a shared machine does not land on one target only.
            for round_number in range(1, options.repeat + 1):
                print(f"Round {round_number} of {options.repeat}: {len(cases)} loads of {options.duration}s", flush=True)
                for page, target in cases:
                    base, headers = targets[target]
                    runs.setdefault((page, target), []).append(
                        wrk(base + PAGES[page], options.duration, options.connections, headers)
                    )
        results = {
            case: Measurement(
                statistics.median(m.requests_per_second for m in measured), statistics.median(m.p99_ms for m in measured)
            )
            for case, measured in runs.items()
        }

        template = project / "templates" / "posts" / "home.html"
        template.write_text(template.read_text() + "\n")
        started = time.monotonic()
        djship(project, "deploy")
        deploy_seconds = time.monotonic() - started
    finally:
        subprocess.run([*DJSHIP, "destroy", "--yes"], cwd=project, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for page in PAGES:
        baseline = results[(page, "gunicorn" if page != "static file" else "runserver")]
        for target in ("djship", "gunicorn", "runserver"):
            if (page, target) in results:
                rows.append((page, target, results[(page, target)], baseline))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print()
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}; wrk -t2 -c{options.connections} -d{options.duration}s, "
          f"median of {options.repeat} interleaved rounds")
    print(table(rows))
    print()
    db_ratio = results[("db page", "djship")].requests_per_second / results[("db page", "gunicorn")].requests_per_second
    print(f"djship / bare gunicorn on the db page: {db_ratio:.2f}x")
    print(f"djship up, cold (new state dir) to first HTTPS 200: {cold_up:.1f} s")
    print(f"djship up after down to first HTTPS 200:            {warm_up:.1f} s")
    print(f"code-only djship deploy (2 app servers, rolling):    {deploy_seconds:.1f} s")


if __name__ == "__main__":
    main()
