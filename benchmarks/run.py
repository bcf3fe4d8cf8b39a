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

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    FORWARDED, PAGES, Measurement, Target, bare_gunicorn, copy_example, destroy, djship, machine, measure, process,
    require_wrk, seed, load_options,
)

HTTPS_PORT, HTTP_PORT, DB_PORT = 24443, 24080, 31432
GUNICORN_PORT, RUNSERVER_PORT = 24801, 24802
SETTINGS = {
    "balancer.https_port": HTTPS_PORT,
    "balancer.http_port": HTTP_PORT,
    "database.port": DB_PORT,
    "database.address": "127.0.72.1",
    "app.address_prefix": "127.0.71",
}


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
    options = load_options(__doc__.split("\n\n")[0])
    require_wrk()
    context = machine(options.connections, options.duration, options.repeat)

    deployment = copy_example(Path(tempfile.mkdtemp(prefix="djship-bench-")), SETTINGS)
    project = deployment.project
    try:
        print("Measuring djship up (cold), down, up (warm) ...", flush=True)
        cold_up = https_200_after(project, "up")
        djship(project, "down")
        warm_up = https_200_after(project, "up")
        seed(deployment)

        targets = {
            "djship": Target(f"https://localhost:{HTTPS_PORT}", {}),
            "gunicorn": Target(f"http://127.0.0.1:{GUNICORN_PORT}", FORWARDED),
            "runserver": Target(f"http://127.0.0.1:{RUNSERVER_PORT}", FORWARDED),
        }
        runserver = [deployment.venv_bin("python"), "manage.py", "runserver", "--noreload", "--insecure",
                     f"127.0.0.1:{RUNSERVER_PORT}"]
        app = {"env": deployment.env(), "cwd": deployment.release / "app", "user": deployment.user}
        with process(bare_gunicorn(deployment, GUNICORN_PORT), GUNICORN_PORT, **app) as gunicorn, \
                process(runserver, RUNSERVER_PORT, **app) as development:
            cases = [(page, target) for page in PAGES for target in targets
                     if not (target == "gunicorn" and page == "static file")]
            serving = {deployment.supervisord, gunicorn.pid, development.pid}
            results = measure(cases, targets, options.repeat, options.duration, options.connections, deployment.ca,
                              serving)

        template = project / "templates" / "posts" / "home.html"
        template.write_text(template.read_text() + "\n")
        started = time.monotonic()
        djship(project, "deploy")
        deploy_seconds = time.monotonic() - started
    finally:
        destroy(deployment)
        shutil.rmtree(project.parent, ignore_errors=True)

    rows = []
    for page in PAGES:
        baseline = results[(page, "gunicorn" if page != "static file" else "runserver")]
        for target in ("djship", "gunicorn", "runserver"):
            if (page, target) in results:
                rows.append((page, target, results[(page, target)], baseline))
    print()
    print(context)
    print(table(rows))
    print()
    db_ratio = results[("db page", "djship")].requests_per_second / results[("db page", "gunicorn")].requests_per_second
    print(f"djship / bare gunicorn on the db page: {db_ratio:.2f}x")
    print(f"djship up, cold (new state dir) to first HTTPS 200: {cold_up:.1f} s")
    print(f"djship up after down to first HTTPS 200:            {warm_up:.1f} s")
    print(f"code-only djship deploy (2 app servers, rolling):    {deploy_seconds:.1f} s")


if __name__ == "__main__":
    main()
