"""How `djship up` (from nothing), `djship deploy` (a one-line change; then another with deploy.batch_size =
"25%"), an unchanged `djship up` and `djship up` adding one more app host grow with the number of app hosts:
1 lb + N app + 1 db for each N asked, beside the same commands on one machine, all measured in the same run. Each
row's ratio is to the smallest N of the run.

    python benchmarks/hosts.py [--apps 1,2,4,8] [--runs 1]

The hosts are network namespaces on this machine (tests/e2e/hosts.py: their own sshd and address on a test range
that never leaves it); djship reaches them over SSH as it would reach rented servers, so what the figures show is
the price of the topology (SSH round trips, the wheels built and shipped, the hosts working at once), not of a
network. Beside each time: the CPU seconds djship itself used on the control machine (its SSH sessions, rendering,
waiting loops), the part that grows with the hosts wherever they run; and how busy this machine's cores were
meanwhile (every process: djship and all the hosts), which says how much of a time is the hosts queueing for the
same cores, where real servers would each have their own. Run as root on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DJSHIP, EXAMPLE, copy_example, destroy  # noqa: E402
from djship.config import with_values  # noqa: E402
from tests.e2e.hosts import netns_hosts  # noqa: E402
from tests.e2e.test_remote_system import write_config  # noqa: E402

STEPS = ("up from nothing", "deploy", "deploy, batch_size 25%", "up, unchanged", "up adding a host")
Figures = dict[str, tuple[float, float, float]]
"""Each step: (seconds, djship's CPU seconds, the share of the machine's cores busy meanwhile)."""


def _busy() -> tuple[int, int]:
    """This machine's CPU time so far, in clock ticks: (busy, all), from the first line of /proc/stat."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def _timed(project: Path, *args: str) -> tuple[float, float, float]:
    before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), _busy()
    started = time.monotonic()
    result = subprocess.run([*DJSHIP, *args], cwd=project, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"djship {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    after, machine_after = resource.getrusage(resource.RUSAGE_CHILDREN), _busy()
    busy = (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), busy


def _steps(project: Path, grow) -> Figures:
    """The commands on a project never brought up (the second deploy with deploy.batch_size = "25%"); grow() then
    changes djship.toml to one more app server."""
    views = project / "posts" / "views.py"
    figures = {"up from nothing": _timed(project, "up")}
    views.write_text(views.read_text() + "\n# a one-line change for the deploy benchmark\n")
    figures["deploy"] = _timed(project, "deploy")
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"deploy.batch_size": "25%"}))
    views.write_text(views.read_text() + "\n# another, deployed a quarter of the app servers at a time\n")
    figures["deploy, batch_size 25%"] = _timed(project, "deploy")
    figures["up, unchanged"] = _timed(project, "up")
    grow()
    figures["up adding a host"] = _timed(project, "up")
    return figures


def one_machine(workdir: Path) -> Figures:
    deployment = copy_example(workdir, {"balancer.https_port": 25443, "balancer.http_port": 25080,
                                        "database.port": 29432, "app.address_prefix": "127.0.81",
                                        "database.address": "127.0.82.1"})
    config = deployment.project / "djship.toml"

    def grow() -> None:  # one machine has no host to add: one more app server instead
        config.write_text(with_values(config.read_text(), {"app.servers": 3}))

    try:
        return _steps(deployment.project, grow)
    finally:
        destroy(deployment)


def on_hosts(workdir: Path, apps: int) -> Figures:
    names = [f"app{number}" for number in range(1, apps + 2)]  # the last one joins in "up adding a host"
    with netns_hosts(["lb1", *names, "db1"]) as hosts:
        project = workdir / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, names[:-1])
        try:
            return _steps(project, lambda: write_config(project, hosts, names))
        finally:
            subprocess.run([*DJSHIP, "down"], cwd=project, capture_output=True, timeout=600)


def _median(runs: list[Figures], step: str) -> tuple[float, float, float]:
    return tuple(statistics.median(run[step][index] for run in runs) for index in range(3))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="1,2,4,8", help="numbers of app hosts, comma-separated (default 1,2,4,8)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each topology, medians reported (default 1)")
    args = parser.parse_args()
    counts = sorted({int(count) for count in args.apps.split(",")})
    if os.geteuid() != 0:
        sys.exit("run as root: the hosts are network namespaces")
    local: list[Figures] = []
    remote: dict[int, list[Figures]] = {count: [] for count in counts}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="djship-bench-") as directory:
            local.append(one_machine(Path(directory)))
        for count in counts:
            with tempfile.TemporaryDirectory(prefix="djship-bench-", dir="/run") as directory:
                remote[count].append(on_hosts(Path(directory), count))
    print(f"| step | topology | s | djship CPU s | cores busy | vs {counts[0]} app host{'s' if counts[0] > 1 else ''} |")
    print("|---|---|---:|---:|---:|---:|")
    for step in STEPS:
        seconds, cpu, busy = _median(local, step)
        print(f"| {step} | one machine{' (a 3rd app server)' if step == 'up adding a host' else ''} | {seconds:.1f} | "
              f"{cpu:.1f} | {busy:.0%} | |")
        smallest = _median(remote[counts[0]], step)[0]
        for count in counts:
            seconds, cpu, busy = _median(remote[count], step)
            print(f"| {step} | 1 lb + {count} app + 1 db | {seconds:.1f} | {cpu:.1f} | {busy:.0%} | "
                  f"{seconds / smallest:.2f}x |")
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; "
          f"{args.runs} run(s) each")


if __name__ == "__main__":
    main()
