"""One rented server holding every role, over SSH (the commonest first production): a network namespace with its
own sshd. It runs two app servers by default, so a deploy keeps one in rotation and fails no request.

Only that host's address (10.247.x.y, in a namespace the fixture makes and deletes) is contacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from djship.components.probe import Response, request
from tests.e2e.conftest import EXAMPLE, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_remote_system import FleetLoop, deploy_under_load
from tests.e2e.test_supervision import _system_processes, _wait_gone

pytestmark = pytest.mark.e2e


def write_config(project: Path, hosts: NetnsHosts) -> None:
    web = hosts["web1"]
    (project / "djship.toml").write_text("\n".join([
        "[project]", 'settings_module = "board.settings"', 'wsgi_application = "board.wsgi.application"', "",
        "[app]", "workers = 2", "",
        "[servers]", 'lb = ["web1"]', 'app = ["web1"]', 'db = "web1"', "",
        "[ssh]", f'key = "{hosts.client_key}"', f'known_hosts = "{hosts.known_hosts}"', "",
        *hosts.users_toml, "",
        "[hosts.web1]", f'address = "{web.address}"', f'root = "{web.root}"', "",
    ]))


class Server:
    def __init__(self, project: Path, hosts: NetnsHosts):
        self.project, self.hosts = project, hosts
        self.address = hosts["web1"].address
        self.url = f"https://{self.address}"

    def djship(self, *args: str, check: bool = True):
        return run_djship(self.project, *args, check=check, timeout=900)

    def get(self, path: str = "/api/posts/") -> Response | str:
        return request(self.address, 443, "localhost", "GET", path, tls_name="localhost",
                       ca_file=self.project / ".djship" / "tls" / "ca.crt", timeout=30)

    def session(self) -> None:
        """The request loop's session: none, as the loop connects to the host itself."""

    def status(self) -> dict:
        return json.loads(self.djship("status", "--json").stdout)

    def states(self) -> dict[str, str]:
        return {component["name"]: component["state"] for component in self.status()["components"]}


@pytest.fixture(scope="module")
def server():
    with netns_hosts(["web1"]) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts)
        made = Server(project, hosts)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_one_server_runs_two_app_servers_behind_its_own_balancer(server: Server):
    seen: Counter[str] = Counter()
    for _ in range(20):
        answer = server.get()
        assert isinstance(answer, Response) and answer.status == 200, answer
        seen[answer.header("X-Djship-Server")] += 1
    assert set(seen) == {"web1", "web1-2"}


def test_a_deploy_on_one_server_fails_no_request(server: Server):
    load = deploy_under_load(server, "deployed by the single-server e2e test")
    assert load.failures == []
    assert len(load.releases) == 2


def test_the_links_within_the_one_server_stay_plaintext(server: Server):
    root = server.hosts["web1"].root
    haproxy = (root / "balancer" / "haproxy.cfg").read_text()
    servers = [line.split() for line in haproxy.splitlines() if line.strip().startswith("server ")]
    assert [words[1:] for words in servers] == [["web1", f"{server.address}:8000"], ["web1-2", f"{server.address}:8001"]]
    assert "hostssl" not in (root / "postgres" / "data" / "pg_hba.conf").read_text()
    assert not (root / "tls" / "host.crt").exists()


def test_up_takes_back_what_a_killed_supervisor_left_running_on_the_server(server: Server):
    before = server.status()
    supervisor = before["hosts"][0]["supervisor"]
    programs = {component["name"] for component in before["components"]}
    with FleetLoop(server) as load:  # type: ignore[arg-type]
        os.kill(supervisor, signal.SIGKILL)
        _wait_gone(supervisor)
        load.wait_for(load.served + 50)  # the orphans keep serving
        assert server.states() == dict.fromkeys(programs, "UNSUPERVISED")
        up = server.djship("up")
        load.wait_for(load.served + 50)
    assert load.failures == [], load.failures[:5]
    assert "predecessor left running" in up.stdout and "already in use" not in up.stdout + up.stderr
    after = server.status()
    assert after["hosts"][0]["supervisor"] not in (None, supervisor)
    assert {component["name"]: component["state"] for component in after["components"]} == dict.fromkeys(
        programs, "RUNNING")


def test_the_servers_boot_command_brings_it_back_with_no_djship_command(server: Server):
    host = server.hosts["web1"]
    registration = server.status()["hosts"][0]["boot"]
    assert registration["starts_at_boot"] is True and registration["note"].startswith("no init system")
    programs = set(server.states())
    # A reboot: every process of the system on the host dies at once (sshd stays: it is how djship reaches it).
    for _ in range(5):
        for pid in (processes := _system_processes(host.root)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pid in processes:
            _wait_gone(pid)
    assert not _system_processes(host.root) and isinstance(server.get(), str)

    # As the host's init would run it: in the host's network, its own session, no environment but PATH, from /.
    init = subprocess.Popen(
        ["ip", "netns", "exec", host.namespace, "/bin/sh", registration["command"]], cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # stopped by `djship down` at the end of the module, else killed with the namespace's processes
    threading.Thread(target=init.wait, daemon=True).start()  # init reaps what it started
    deadline = time.monotonic() + 120
    while server.states() != dict.fromkeys(programs, "RUNNING"):
        assert time.monotonic() < deadline, f"not every program RUNNING after boot: {server.states()}"
        time.sleep(1)
    assert server.status()["hosts"][0]["supervisor"] == init.pid  # ip netns exec and boot.sh exec supervisord
    with FleetLoop(server) as load:  # type: ignore[arg-type]
        load.wait_for(100)
    assert load.failures == []
    assert "unchanged" in server.djship("up").stdout  # djship takes the booted host as its own
