"""Tail latency and throughput of the full stack under balancer and app-server settings, tried side by side.

    python benchmarks/balancer.py [--duration 10] [--connections 32] [--repeat 3]

Deploys a copy of examples/board with the real `djship up` (https://localhost:25443) and puts 10 posts in its
database. Then, beside that stack, each variant below runs as an HAProxy of its own on a loopback port of its own
(26040 and up), made from the haproxy.cfg djship rendered with one change, balancing over the same two app servers
(or, for the nginx variant, over a second nginx per app server in front of the same gunicorn).

The db page of each configuration (and of djship as deployed) is loaded with wrk right after the same load on bare
gunicorn (6 sync workers, the baseline), pair after pair, round after round: on a machine shared with other work
the ratio within a pair cancels most of the drift that separates two rounds. Then its static file (admin's
base.css, served by nginx), compared with the old configuration's (round-robin, no limit) of the same round.
Shown: the medians of each configuration's figures and of its ratios. Every process started here is stopped
here, by PID.
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from common import (
    FORWARDED, PAGES, Deployment, Measurement, Target, bare_gunicorn, copy_example, destroy, djship, expect_200,
    machine, median, process, require_wrk, seed, wrk, load_options,
)

HTTPS_PORT, HTTP_PORT = 25443, 25080
SETTINGS = {
    "balancer.https_port": HTTPS_PORT,
    "balancer.http_port": HTTP_PORT,
    "database.port": 32432,
    "database.address": "127.8.2.1",
    "app.address_prefix": "127.8.1",
}
GUNICORN_PORT = 26001
FIRST_VARIANT_PORT = 26040
NGINX_PORT = 26090
DB_PAGE, STATIC_FILE = PAGES["db page"], PAGES["static file"]
BEFORE = "roundrobin, no limit (before)"


@dataclass(frozen=True)
class Variant:
    name: str
    balance: str = "roundrobin"
    maxconn: int | None = None
    """Per-server limit; requests beyond it wait in HAProxy's queue for the first server that frees up."""
    http_reuse: str | None = None
    """None: HAProxy's default (safe: idle connections to nginx are reused for later requests)."""
    nginx_workers: str | None = None
    """None: each app server's nginx as djship runs it; else a second nginx with this worker_processes."""


def variants(slots: int) -> list[Variant]:
    """SLOTS: requests one app server works on at once (workers x threads)."""
    return [
        Variant("roundrobin, no limit (before)"),
        Variant("leastconn, no limit", balance="leastconn"),
        Variant(f"roundrobin, maxconn {slots}", maxconn=slots),
        Variant(f"leastconn, maxconn {slots}", balance="leastconn", maxconn=slots),
        Variant(f"leastconn, maxconn {slots + 1}", balance="leastconn", maxconn=slots + 1),
        Variant("leastconn, http-reuse never", balance="leastconn", http_reuse="never"),
        Variant("leastconn, http-reuse always", balance="leastconn", http_reuse="always"),
        Variant("leastconn, nginx worker_processes auto", balance="leastconn", nginx_workers="auto"),
    ]


def variant_cfg(rendered: str, variant: Variant, port: int, socket: Path, endpoints: dict[str, str]) -> str:
    """djship's haproxy.cfg with VARIANT's settings, its HTTPS frontend on PORT, no HTTP frontend, its own socket."""
    text = re.sub(r"stats socket \S+", f"stats socket {socket}", rendered)
    text = re.sub(r"\nfrontend http\n(?:    .*\n|\n)*?(?=frontend https)", "\n", text)
    text = text.replace(f":{HTTPS_PORT} ssl", f":{port} ssl")
    text = re.sub(r"    balance \w+\n", f"    balance {variant.balance}\n"
                  + (f"    http-reuse {variant.http_reuse}\n" if variant.http_reuse else ""), text)
    text = re.sub(r"    http-reuse \w+\n(?=    http-reuse)", "", text)
    text = re.sub(r"(    default-server .*?) maxconn \d+", r"\1", text)

    def server(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"    server {name} {endpoints[name]}" + (f" maxconn {variant.maxconn}" if variant.maxconn else "")

    return re.sub(r"    server (\S+) \S+(?: maxconn \d+)?", server, text)


def second_nginx(stack: ExitStack, deployment: Deployment, workdir: Path, workers: str, serving: set[int]
                 ) -> dict[str, str]:
    """Beside each app server's nginx, another on NGINX_PORT with WORKERS worker processes (their PIDs added to
    SERVING); their endpoints."""
    endpoints = {}
    for conf in sorted((deployment.project / ".djship" / "servers").glob("*/nginx.conf")):
        name = conf.parent.name
        run = workdir / f"nginx-{name}"
        run.mkdir()
        if deployment.user:
            shutil.chown(run, deployment.user)
        address = re.search(r"listen ([\d.]+):\d+;", conf.read_text()).group(1)
        text = re.sub(r"listen [\d.]+:\d+;", f"listen {address}:{NGINX_PORT};", conf.read_text())
        text = re.sub(r"worker_processes \w+;", f"worker_processes {workers};", text)
        text = re.sub(r"pid \S+;", f"pid {run}/nginx.pid;", text)
        (run / "nginx.conf").write_text(text)
        serving.add(stack.enter_context(process(
            ["nginx", "-c", str(run / "nginx.conf"), "-p", str(conf.parent), "-e", "stderr"], NGINX_PORT,
            user=deployment.user, host=address)).pid)
        endpoints[name] = f"{address}:{NGINX_PORT}"
    return endpoints


@dataclass
class Result:
    """A configuration's medians on the db page and the static file, and the medians of its ratios: on the db page
    to the bare-gunicorn load just before its own, on the static file (which bare gunicorn cannot serve) to the old
    configuration's (round-robin, no limit) in the same round."""

    db_page: Measurement
    static_file: Measurement
    rate_ratio: float
    p99_ratio: float
    capacity_ratio: float
    """Bare gunicorn's CPU time per request over this configuration's: its throughput ratio on an idle machine."""
    static_ratio: float


def measure_paired(baseline: Target, targets: dict[str, Target], repeat: int, duration: int, connections: int,
                   ca: Path, serving: set[int]) -> dict[str, Result]:
    expect_200(baseline.base + DB_PAGE, baseline.headers, ca)
    for target in targets.values():
        expect_200(target.base + DB_PAGE, target.headers, ca)
        expect_200(target.base + STATIC_FILE, target.headers, ca)
    pairs: dict[str, list[tuple[Measurement, Measurement]]] = {}
    static: dict[str, list[Measurement]] = {}
    for round_number in range(1, repeat + 1):
        print(f"Round {round_number} of {repeat}: {len(targets)} x 3 loads of {duration}s", flush=True)
        for name, target in targets.items():
            before = wrk(baseline.base + DB_PAGE, duration, connections, baseline.headers, serving)
            pairs.setdefault(name, []).append(
                (before, wrk(target.base + DB_PAGE, duration, connections, target.headers, serving)))
            static.setdefault(name, []).append(
                wrk(target.base + STATIC_FILE, duration, connections, target.headers, serving))
    return {
        name: Result(
            median([m for _, m in runs]),
            median(static[name]),
            statistics.median(m.requests_per_second / b.requests_per_second for b, m in runs),
            statistics.median(m.p99_ms / b.p99_ms for b, m in runs),
            statistics.median(b.cpu_ms / m.cpu_ms for b, m in runs),
            statistics.median(m.requests_per_second / b.requests_per_second
                              for m, b in zip(static[name], static[BEFORE])),
        )
        for name, runs in pairs.items()
    }


def table(results: dict[str, Result]) -> str:
    lines = [
        "| configuration | db page req/s | p50 ms | p99 ms | CPU ms/req | req/s ÷ gunicorn's | p99 ÷ gunicorn's "
        "| capacity ÷ gunicorn's | static req/s | static ÷ before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        db = result.db_page
        lines.append(
            f"| {name} | {db.requests_per_second:,.0f} | {db.p50_ms:.1f} | {db.p99_ms:.1f} | {db.cpu_ms:.2f} "
            f"| {result.rate_ratio:.2f}x | {result.p99_ratio:.2f}x | {result.capacity_ratio:.2f}x "
            f"| {result.static_file.requests_per_second:,.0f} | {result.static_ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    options = load_options(__doc__.split("\n\n")[0])
    require_wrk()
    context = machine(options.connections, options.duration, options.repeat)

    workdir = Path(tempfile.mkdtemp(prefix="djship-balancer-"))
    deployment = copy_example(workdir, SETTINGS)
    try:
        print("djship up ...", flush=True)
        djship(deployment.project, "up")
        seed(deployment)
        balancer = deployment.project / ".djship" / "balancer"
        rendered = (balancer / "haproxy.cfg").read_text()
        own = dict(re.findall(r"    server (\S+) (\S+)", rendered))
        gunicorn_conf = (balancer.parent / "servers" / "app1" / "gunicorn.conf.py").read_text()
        slots = int(re.search(r"^workers = (\d+)", gunicorn_conf, re.M).group(1)) * int(
            re.search(r"^threads = (\d+)", gunicorn_conf, re.M).group(1))
        baseline = Target(f"http://127.0.0.1:{GUNICORN_PORT}", FORWARDED)
        targets = {"djship as deployed": Target(f"https://localhost:{HTTPS_PORT}", {})}
        with ExitStack() as stack:
            serving = {deployment.supervisord, stack.enter_context(process(
                bare_gunicorn(deployment, GUNICORN_PORT), GUNICORN_PORT, deployment.env(), deployment.release / "app",
                deployment.user)).pid}
            nginx: dict[str, dict[str, str]] = {}
            for number, variant in enumerate(variants(slots)):
                port = FIRST_VARIANT_PORT + number
                if variant.nginx_workers and variant.nginx_workers not in nginx:
                    nginx[variant.nginx_workers] = second_nginx(
                        stack, deployment, workdir, variant.nginx_workers, serving)
                endpoints = nginx[variant.nginx_workers] if variant.nginx_workers else own
                cfg = workdir / f"haproxy-{number}.cfg"
                cfg.write_text(variant_cfg(rendered, variant, port, workdir / f"haproxy-{number}.sock", endpoints))
                serving.add(stack.enter_context(process(["haproxy", "-db", "-f", str(cfg)], port)).pid)
                targets[variant.name] = Target(f"https://localhost:{port}", {})
            results = measure_paired(baseline, targets, options.repeat, options.duration, options.connections,
                                     deployment.ca, serving)
    finally:
        destroy(deployment)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(context)
    print(table(results))


if __name__ == "__main__":
    main()
