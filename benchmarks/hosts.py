"""How long `djship up` (from nothing), `djship deploy` (a one-line change) and an unchanged `djship up` take on
1 lb + N app + 1 db hosts, against the same commands on one machine measured in the same run (the baseline).

    python benchmarks/hosts.py [--apps 3] [--runs 1]

The hosts are network namespaces on this machine (tests/e2e/hosts.py: their own sshd and address on a test range
that never leaves it); djship reaches them over SSH as it would reach rented servers, so what the ratio shows is
the price of the topology (SSH round trips, the wheels built and shipped, the hosts working at once), not of a
network. Run as root on an idle machine: every host shares its cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DJSHIP, EXAMPLE, copy_example, destroy  # noqa: E402
from tests.e2e.hosts import netns_hosts  # noqa: E402
from tests.e2e.test_remote_system import write_config  # noqa: E402

STEPS = ("up from nothing", "deploy", "up, unchanged")


def _timed(project: Path, *args: str) -> float:
    started = time.monotonic()
    result = subprocess.run([*DJSHIP, *args], cwd=project, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"djship {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return time.monotonic() - started


def _steps(project: Path) -> dict[str, float]:
    """The three commands on a project never brought up; then everything it made is stopped."""
    views = project / "posts" / "views.py"
    figures = {"up from nothing": _timed(project, "up")}
    views.write_text(views.read_text() + "\n# a one-line change for the deploy benchmark\n")
    figures["deploy"] = _timed(project, "deploy")
    figures["up, unchanged"] = _timed(project, "up")
    return figures


def one_machine(workdir: Path) -> dict[str, float]:
    deployment = copy_example(workdir, {"balancer.https_port": 25443, "balancer.http_port": 25080,
                                        "database.port": 29432, "app.address_prefix": "127.0.81",
                                        "database.address": "127.0.82.1"})
    try:
        return _steps(deployment.project)
    finally:
        destroy(deployment)


def on_hosts(workdir: Path, apps: int) -> dict[str, float]:
    names = [f"app{number}" for number in range(1, apps + 1)]
    with netns_hosts(["lb1", *names, "db1"]) as hosts:
        project = workdir / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, names)
        try:
            return _steps(project)
        finally:
            subprocess.run([*DJSHIP, "down"], cwd=project, capture_output=True, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=3, help="app hosts (default 3)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each topology, medians reported (default 1)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the hosts are network namespaces")
    local: list[dict[str, float]] = []
    remote: list[dict[str, float]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="djship-bench-") as directory:
            local.append(one_machine(Path(directory)))
        with tempfile.TemporaryDirectory(prefix="djship-bench-", dir="/run") as directory:
            remote.append(on_hosts(Path(directory), args.apps))
    print(f"{'step':<16} {'one machine (s)':>16} {f'1 lb + {args.apps} app + 1 db (s)':>26} {'ratio':>7}")
    for step in STEPS:
        base, hosts = (statistics.median(run[step] for run in runs) for runs in (local, remote))
        print(f"{step:<16} {base:>16.1f} {hosts:>26.1f} {hosts / base:>6.2f}x")
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; "
          f"{args.runs} run(s) each")


if __name__ == "__main__":
    main()
