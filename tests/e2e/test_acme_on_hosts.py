"""ACME with two lb hosts: the first (the renewer) orders and renews the certificate, the second follows it. The test
domain resolves (for Pebble only) to the follower, so every HTTP-01 challenge reaches the renewer through the
follower's HAProxy; both serve the same certificate, a forced renewal reaches both with no failed request, and the
renewer's timer renews by itself and the follower installs that certificate by itself.

Hosts are network namespaces (10.247.x.y) the fixture makes and deletes: lb1, lb2, app1 (two app servers), db1;
Pebble listens on this machine's address on that test network.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from djship.components.probe import Response, request
from tests.e2e.conftest import EXAMPLE, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_remote_system import FleetLoop, write_config
from tests.e2e.test_tls import CERTIFICATE_LIFETIME, DOMAIN, pebble, served_certificate

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "lb2", "app1", "db1"]


class TwoBalancers:
    """The system, reached through the follower lb2 (where the test domain points)."""

    def __init__(self, project: Path, hosts: NetnsHosts, root: Path):
        self.project, self.hosts, self.root = project, hosts, root
        self.address = hosts["lb2"].address
        self.url = f"https://{self.address}"

    def djship(self, *args: str, check: bool = True):
        return run_djship(self.project, *args, check=check, timeout=900)

    def get(self, path: str = "/api/posts/") -> Response | str:
        """Through lb2's port 443, verified against Pebble's root for the test domain."""
        return request(self.address, 443, DOMAIN, "GET", path, tls_name=DOMAIN, ca_file=self.root, timeout=30)

    def session(self) -> None:
        """The request loop's session: none, as the loop connects to lb2 itself."""

    def serials(self) -> dict[str, int]:
        return {name: served_certificate(self.hosts[name].address, 443).serial_number for name in ("lb1", "lb2")}

    def state(self, name: str) -> Path:
        return self.hosts[name].root


def _acme_config(project: Path, hosts: NetnsHosts, directory_url: str, api_ca: Path) -> None:
    write_config(project, hosts, ["app1"])
    config = project / "djship.toml"
    text = config.read_text().replace('lb = ["lb1"]', 'lb = ["lb1", "lb2"]')
    text += "\n".join([
        "", "[hosts.lb2]", f'address = "{hosts["lb2"].address}"', f'root = "{hosts["lb2"].root}"', "",
        "[site]", f'domains = ["{DOMAIN}"]', "",
        "[tls]", 'mode = "acme"', f'acme_directory = "{directory_url}"', f'acme_ca_bundle = "{api_ca}"',
        'acme_email = "admin@djship.test"', "",
    ])
    config.write_text(text)


@pytest.fixture(scope="module")
def system():
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory, \
            pebble(directory, listen=hosts.gateway, balancer=hosts["lb2"].address, http_port=80) as ca:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        _acme_config(project, hosts, ca.directory_url, ca.api_ca)
        made = TwoBalancers(project, hosts, ca.root)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_both_lb_hosts_serve_the_certificate_the_renewer_obtained_through_the_follower(system: TwoBalancers):
    answer = system.get()
    assert isinstance(answer, Response) and answer.status == 200, answer
    tls = json.loads(system.djship("status", "--json").stdout)["tls"]
    assert tls["mode"] == "acme" and tls["certificate"]["names"] == [DOMAIN]
    serials = system.serials()
    assert serials["lb1"] == serials["lb2"] == int(tls["certificate"]["serial"], 16)
    # One key on both (0600), the account only on the renewer, nothing of ACME on the control machine.
    keys = [(system.state(name) / "tls" / "acme-site.key") for name in ("lb1", "lb2")]
    assert keys[0].read_bytes() == keys[1].read_bytes() and {k.stat().st_mode & 0o777 for k in keys} == {0o600}
    assert (system.state("lb1") / "tls" / "acme-account.key").exists()
    assert not (system.state("lb2") / "tls" / "acme-account.key").exists()
    assert not (system.project / ".djship" / "tls" / "acme-account.key").exists()
    assert "Already up and unchanged" in system.djship("up").stdout


def test_a_forced_renewal_reaches_both_lb_hosts_and_fails_no_request(system: TwoBalancers):
    before = system.serials()
    with FleetLoop(system) as load:  # type: ignore[arg-type]
        result = system.djship("certs", "renew", "--force")
        load.wait_for(load.served + 20)
    assert load.failures == [] and load.served > 0
    assert "Installing it on lb2" in result.stdout
    after = system.serials()
    assert after["lb1"] == after["lb2"] != before["lb1"]


def test_the_follower_installs_what_the_renewer_renews_by_itself(system: TwoBalancers):
    """Last: the forced renewal's certificate falls due at two thirds of its 150 s."""
    before = system.serials()["lb1"]
    deadline = time.monotonic() + CERTIFICATE_LIFETIME + 60
    while True:
        serials = system.serials()
        if serials["lb1"] != before and serials["lb2"] == serials["lb1"]:
            break
        assert time.monotonic() < deadline, (serials, (system.state("lb2") / "logs" / "renewal.log").read_text())
        time.sleep(5)
    assert "installed the renewer's certificate" in (system.state("lb2") / "logs" / "renewal.log").read_text()
