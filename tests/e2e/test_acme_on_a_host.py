"""ACME on one rented server holding every role, over SSH: the certificate comes from Pebble through the host's own
ports 80 and 443, djship's ACME client runs on the host (djship.agent, shipped into the host's virtualenv), and the
renewal timer there renews with no control machine involved; a forced renewal and a deploy fail no request.

The host is a network namespace (10.247.x.y) the fixture makes and deletes; Pebble and its DNS server listen on this
machine's address on that test network, and the test domain resolves (for Pebble only) to the host.
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
from tests.e2e.test_remote_system import FleetLoop, deploy_under_load
from tests.e2e.test_single_server import write_config
from tests.e2e.test_tls import CERTIFICATE_LIFETIME, DOMAIN, pebble, served_certificate

pytestmark = pytest.mark.e2e


class AcmeServer:
    def __init__(self, project: Path, hosts: NetnsHosts, root: Path):
        self.project, self.hosts, self.root = project, hosts, root
        self.address = hosts["web1"].address
        self.state = hosts["web1"].root
        self.url = f"https://{self.address}"

    def djship(self, *args: str, check: bool = True):
        return run_djship(self.project, *args, check=check, timeout=900)

    def get(self, path: str = "/api/posts/") -> Response | str:
        """Through the host's port 443, verified against Pebble's root for the test domain."""
        return request(self.address, 443, DOMAIN, "GET", path, tls_name=DOMAIN, ca_file=self.root, timeout=30)

    def session(self) -> None:
        """The request loop's session: none, as the loop connects to the host itself."""

    def served(self):
        return served_certificate(self.address, 443)

    def status(self) -> dict:
        return json.loads(self.djship("status", "--json").stdout)


@pytest.fixture(scope="module")
def server():
    with netns_hosts(["web1"]) as hosts, searchable_directory() as directory, \
            pebble(directory, listen=hosts.gateway, balancer=hosts["web1"].address, http_port=80) as ca:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts)
        with (project / "djship.toml").open("a") as config:
            config.write("\n".join([
                "", "[site]", f'domains = ["{DOMAIN}"]', "",
                "[tls]", 'mode = "acme"', f'acme_directory = "{ca.directory_url}"',
                f'acme_ca_bundle = "{ca.api_ca}"', 'acme_email = "admin@djship.test"', "",
            ]))
        made = AcmeServer(project, hosts, ca.root)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_the_host_serves_a_certificate_obtained_by_its_own_acme_client(server: AcmeServer):
    answer = server.get()
    assert isinstance(answer, Response) and answer.status == 200, answer
    tls = server.status()["tls"]
    assert tls["mode"] == "acme" and tls["certificate"]["names"] == [DOMAIN]
    assert tls["renewal"]["state"] == "RUNNING" and tls["renewal"]["last_error"] is None
    assert served_certificate(server.address, 443).serial_number == int(tls["certificate"]["serial"], 16)
    # The account key and the renewal record are the host's; the control machine keeps no ACME state.
    assert (server.state / "tls" / "acme-account.key").stat().st_mode & 0o777 == 0o600
    assert json.loads((server.state / "tls" / "renewal.json").read_text())["serial"] == tls["certificate"]["serial"]
    assert not (server.project / ".djship" / "tls" / "acme-account.key").exists()
    assert "Already up and unchanged" in server.djship("up").stdout


def test_a_forced_renewal_on_the_host_fails_no_request(server: AcmeServer):
    before = server.served()
    with FleetLoop(server) as load:  # type: ignore[arg-type]
        server.djship("certs", "renew", "--force")
        load.wait_for(load.served + 20)
    assert load.failures == [] and load.served > 0
    assert server.served().serial_number != before.serial_number


def test_a_deploy_on_the_acme_host_fails_no_request(server: AcmeServer):
    load = deploy_under_load(server, "deployed by the ACME host e2e test")
    assert load.failures == []
    assert len(load.releases) == 2


def test_the_renewal_timer_on_the_host_renews_by_itself(server: AcmeServer):
    """Last: the forced renewal's certificate falls due while the deploy runs (at two thirds of 150 s)."""
    before = server.served()
    deadline = time.monotonic() + CERTIFICATE_LIFETIME + 60
    while server.served().serial_number == before.serial_number:
        assert time.monotonic() < deadline, (server.state / "logs" / "renewal.log").read_text()
        time.sleep(5)
    log = (server.state / "logs" / "renewal.log").read_text()
    assert "renewed and installed" in log
    assert server.status()["tls"]["renewal"]["last_error"] is None
