"""The supervisor dies (kill -9, as the OOM killer would) and the host reboots: djship's processes come back under a
supervisor, with no failed request where the balancer allows it, and with no djship command at boot."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Ports, RequestLoop, alive, running_site

SUPERVISION_PORTS = Ports.of(https=24443, http=24080, database=31432, app_prefix="127.0.71", database_address="127.0.72.1")


@pytest.fixture(scope="module")
def site():
    with running_site(SUPERVISION_PORTS) as running:
        yield running


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


def _postmaster(site) -> int:
    return int((site.project / ".djship" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])


def _system_processes(state: Path) -> set[int]:
    """Every process of the system, found independently of djship: whatever names the state root in its command line
    (supervisord, nginx's title) or carries a supervisor of it in its environment."""
    marker = f"SUPERVISOR_SERVER_URL=unix://{state}/supervisor/supervisor.sock".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in environ or str(state) in argv:
            found.add(int(entry.name))
    return found


def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


def test_up_takes_back_what_a_killed_supervisor_left_running_without_a_failed_request(site):
    before = site.status()
    pids = {component["name"]: component["pid"] for component in before["components"]}
    postmaster = _postmaster(site)

    with RequestLoop(site) as load:
        os.kill(before["supervisor_pid"], signal.SIGKILL)
        _wait_gone(before["supervisor_pid"])
        load.wait_for(load.served + 100)  # the orphans keep serving

        orphaned = site.status()
        assert orphaned["running"] is False and orphaned["supervisor_pid"] is None
        assert {c["name"]: (c["state"], c["pid"]) for c in orphaned["components"]} == {
            name: ("UNSUPERVISED", pid) for name, pid in pids.items()
        }
        assert {c["name"]: c["health"] for c in orphaned["components"]} == {
            "haproxy": "up", "app1-nginx": "up", "app1-gunicorn": "up", "app2-nginx": "up", "app2-gunicorn": "up",
            "postgres": "accepting",
        }
        assert "unsupervised" in orphaned["hosts"][0]["boot"]["note"]
        said = site.djship("status").stderr
        assert "the supervisor is not running" in said and "no init system" in said

        up = site.djship("up")
        after = site.status()
        load.wait_for(load.served + 100)

    assert load.failures == [], f"{len(load.failures)} of {load.served + len(load.failures)} failed: {load.failures[:5]}"
    assert "already in use" not in up.stdout + up.stderr
    assert "predecessor left running" in up.stdout and "unchanged" not in up.stdout
    assert after["running"] is True and after["supervisor_pid"] not in (None, before["supervisor_pid"])
    assert {c["name"]: c["state"] for c in after["components"]} == dict.fromkeys(pids, "RUNNING")
    assert all(not alive(pids[name]) for name in pids if name != "postgres"), "an orphan was left running"
    assert _postmaster(site) == postmaster, "PostgreSQL was restarted"
    print(f"supervisor killed and taken back under load: {load.served} served, {len(load.failures)} failed")


def test_a_second_kill_after_an_adoption_keeps_the_same_postmaster(site):
    postmaster = _postmaster(site)
    before = site.status()
    assert next(c for c in before["components"] if c["name"] == "postgres")["pid"] != postmaster  # its waiter

    with RequestLoop(site) as load:
        os.kill(before["supervisor_pid"], signal.SIGKILL)
        _wait_gone(before["supervisor_pid"])
        orphaned = {c["name"]: (c["state"], c["pid"]) for c in site.status()["components"]}
        assert orphaned["postgres"] == ("UNSUPERVISED", postmaster)
        site.djship("up")
        load.wait_for(load.served + 100)

    assert load.failures == [], f"{len(load.failures)} of {load.served + len(load.failures)} failed: {load.failures[:5]}"
    assert {c["name"]: c["state"] for c in site.status()["components"]} == dict.fromkeys(orphaned, "RUNNING")
    assert _postmaster(site) == postmaster
    print(f"second kill, taken back under load: {load.served} served, {len(load.failures)} failed")


def test_the_registered_boot_command_brings_the_system_back_with_no_djship_command(site):
    state = site.project / ".djship"
    registration = site.status()["hosts"][0]["boot"]
    assert registration["init"] is None and registration["starts_at_boot"] is True
    assert registration["note"].startswith("no init system")
    boot_script = Path(registration["command"])
    assert boot_script == state / "supervisor" / "boot.sh"

    # A reboot: every process of the system dies at once; only what djship installed is left.
    for _ in range(5):
        processes = _system_processes(state)
        for pid in processes:
            site.pids.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pid in processes:
            _wait_gone(pid)
    assert not _system_processes(state)
    assert not _listening("127.0.0.1", site.ports.https) and not _listening(site.ports.database_address, site.ports.database)

    # As init runs it: its own session, no terminal, no environment but PATH, from /.
    init = subprocess.Popen(
        ["/bin/sh", str(boot_script)], cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    site.pids.add(init.pid)  # stopped by `djship down` or, failing that, killed by PID at the end of the module
    threading.Thread(target=init.wait, daemon=True).start()  # init reaps what it started
    session = site.session()
    deadline = time.monotonic() + 90
    while True:
        try:
            if session.get(site.url + "/api/posts/", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the site did not come back after the boot command"
        time.sleep(0.5)
    expected = dict.fromkeys(["haproxy", "app1-nginx", "app1-gunicorn", "app2-nginx", "app2-gunicorn", "postgres"],
                             "RUNNING")
    report = site.status()
    while {c["name"]: c["state"] for c in report["components"]} != expected:
        # A program the supervisor just started is STARTING for its first second, while it already answers.
        assert time.monotonic() < deadline, f"not every program RUNNING after boot: {report['components']}"
        time.sleep(0.5)
        report = site.status()
    assert report["supervisor_pid"] == init.pid  # boot.sh execs supervisord in the foreground, as init expects
    with RequestLoop(site) as load:
        load.wait_for(200)
    assert load.failures == []
    assert "unchanged" in site.djship("up").stdout  # djship takes the booted system as its own


def test_down_stops_what_a_killed_supervisor_left_running(site):
    state = site.project / ".djship"
    os.kill(site.status()["supervisor_pid"], signal.SIGKILL)

    site.djship("down")

    assert not _system_processes(state)
    assert site.status()["hosts"][0]["boot"]["starts_at_boot"] is False
