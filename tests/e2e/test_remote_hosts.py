"""`djship hosts` against real hosts: 1 lb + 3 app + 1 db, each a network namespace with its own sshd.

Only those hosts' addresses (10.247.x.y, in namespaces the fixture makes and deletes) are contacted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts

pytestmark = pytest.mark.e2e

ROLES = {"lb1": "lb", "app1": "app", "app2": "app", "app3": "app", "db1": "db"}


@pytest.fixture(scope="module")
def hosts() -> NetnsHosts:
    with netns_hosts(list(ROLES)) as made:
        yield made


def project_for(directory: Path, hosts: NetnsHosts, known_hosts: Path | None = None) -> Path:
    lines = [
        "[project]",
        'settings_module = "board.settings"',
        'wsgi_application = "board.wsgi.application"',
        "",
        "[servers]",
        'lb = ["lb1"]',
        'app = ["app1", "app2", "app3"]',
        'db = "db1"',
        "",
        "[ssh]",
        f'key = "{hosts.client_key}"',
        f'known_hosts = "{known_hosts or hosts.known_hosts}"',
        "",
        *hosts.users_toml,
    ]
    for name, host in hosts.hosts.items():
        lines += ["", f"[hosts.{name}]", f'address = "{host.address}"', f'root = "{host.root}"']
    (directory / "djship.toml").write_text("\n".join(lines) + "\n")
    return directory


def test_every_host_is_reached_and_checked_for_its_roles(hosts):
    with searchable_directory() as directory:
        result = run_djship(project_for(directory, hosts), "hosts", "--json")
    reports = {report["name"]: report for report in json.loads(result.stdout)}
    assert list(reports) == list(ROLES)
    for name, role in ROLES.items():
        assert reports[name]["address"] == hosts[name].address
        assert reports[name]["roles"] == ([role, "media"] if name == "db1" else [role])  # the db host holds the uploads
        assert reports[name]["python"].startswith("3.")
        assert (reports[name]["missing"], reports[name]["ready"]) == ([], True)


def test_table_output(hosts):
    with searchable_directory() as directory:
        result = run_djship(project_for(directory, hosts), "hosts")
    assert "All 5 hosts are reachable and ready." in result.stdout
    assert all(hosts[name].address in result.stdout for name in ROLES)


def test_a_host_that_is_down_is_named(hosts):
    hosts["app2"].kill()
    try:
        with searchable_directory() as directory:
            result = run_djship(project_for(directory, hosts), "hosts", check=False)
    finally:
        hosts.start_sshd(hosts["app2"])
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: app2: cannot reach {hosts['app2'].address}:22 over SSH")
    assert "\n" not in result.stderr.strip() and "Traceback" not in result.stderr


def test_an_unknown_host_key_is_refused_for_every_host(hosts):
    with searchable_directory() as directory:
        partial = directory / "known_hosts"
        partial.write_text(f"{hosts['lb1'].address} {hosts['lb1'].host_key}\n")
        result = run_djship(project_for(directory, hosts, known_hosts=partial), "hosts", check=False)
    message = result.stderr.strip()
    assert result.returncode == 1 and "\n" not in message
    assert "lb1" not in message
    for name in ("app1", "app2", "app3", "db1"):
        assert f"{name}: the SSH host key of {hosts[name].address}:22 is unknown" in message
