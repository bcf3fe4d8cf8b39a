"""The remote target's hosts: SSH targets from the config, the probe, its parser, and preparing hosts."""

from __future__ import annotations

import subprocess
from contextlib import nullcontext
from pathlib import Path, PurePosixPath

import pytest

from djship.config import parse_config
from djship.connectors import Result
from djship.errors import DjshipError
from djship.hosts import (
    SSHHost,
    install_command,
    parse_probe,
    prepare_hosts,
    probe_script,
    remote_hosts,
    require_ready,
)
from tests.unit.test_config import MINIMAL, REMOTE


def test_remote_hosts_take_ssh_defaults_and_per_host_overrides(tmp_path):
    config = parse_config(REMOTE + '\n[ssh]\nkey = "keys/deploy"\nknown_hosts = "/etc/djship/known_hosts"\n')
    hosts = {host.name: host for host in remote_hosts(config, tmp_path)}
    assert [(host.name, host.roles) for host in hosts.values()] == [
        ("lb1", ("lb",)), ("app1", ("app",)), ("app2", ("app",)), ("db1", ("db", "media"))
    ]
    assert all("mounts" in host.features for host in hosts.values())
    app1, app2 = hosts["app1"].target, hosts["app2"].target
    assert (app1.address, app1.port, app1.user, app1.key_file) == ("10.0.0.11", 22, "root", tmp_path / "keys/deploy")
    assert app1.known_hosts == Path("/etc/djship/known_hosts")
    assert (app2.address, app2.port, app2.user) == ("app2.internal.example", 2222, "deploy")
    assert hosts["app2"].root == PurePosixPath("/opt/djship") and hosts["db1"].root == PurePosixPath("/srv/djship")


def test_one_host_can_hold_every_role(tmp_path):
    config = parse_config(MINIMAL + '[servers]\nlb = ["one"]\napp = ["one"]\ndb = "one"\n[hosts.one]\naddress = "10.0.0.1"\n')
    [host] = remote_hosts(config, tmp_path)
    assert host.roles == ("lb", "app", "db") and host.features == frozenset()
    assert host.target.key_file is None  # the SSH agent and ~/.ssh keys, as ssh itself


def test_remote_hosts_refuse_a_local_project(tmp_path):
    with pytest.raises(DjshipError, match="lists no remote hosts"):
        remote_hosts(parse_config(MINIMAL), tmp_path)


def test_probe_checks_only_what_the_roles_need():
    lb = probe_script(("lb",))
    verdicts = "\n".join(line for line in lb.splitlines() if "echo present" in line)
    assert "present haproxy" in verdicts and "nginx" not in verdicts and "postgresql" not in verdicts
    assert "python3-venv" in lb
    everything = probe_script(("lb", "app", "db"))
    assert all(f"missing {package}" in everything for package in ("haproxy", "nginx", "postgresql", "python3"))


def test_app_hosts_need_sshfs_only_when_a_media_host_holds_the_uploads():
    assert "sshfs" not in probe_script(("app",))
    assert "missing sshfs" in probe_script(("app",), frozenset({"mounts"}))
    assert "sshfs" not in probe_script(("db", "media"), frozenset({"mounts"}))
    assert "missing sshfs" in probe_script(("worker",), frozenset({"mounts"}))


def test_the_db_host_needs_redis_cli_only_when_backups_hold_redis():
    assert "redis-tools" not in probe_script(("db",))
    assert "missing redis-tools" in probe_script(("db",), frozenset({"snapshots"}))
    assert "redis-tools" not in probe_script(("app",), frozenset({"snapshots"}))


def test_probe_runs_in_a_real_shell():
    """The script itself, on this machine: it must print one verdict per requirement and parse cleanly."""
    output = subprocess.run(["sh", "-c", probe_script(("lb", "app", "db"))], capture_output=True, text=True).stdout
    verdicts = [line.split()[1] for line in output.splitlines() if line.startswith(("present ", "missing "))]
    assert verdicts == ["python3", "python3-venv", "haproxy", "openssl", "nginx", "postgresql"]
    facts = parse_probe(output)
    assert facts.python is not None
    assert set(facts.tools) == {"nginx", "haproxy", "pg_bindir", "mime_types", "redis_server", "pgbouncer", "pgbackrest", "python3"}
    assert facts.tools["pg_bindir"].startswith("/usr/lib/postgresql/") and facts.tools["pg_bindir"].endswith("/bin")


def test_a_missing_tool_is_absent_from_the_facts():
    facts = parse_probe("uid 0\npython 3 11\ntool nginx /usr/sbin/nginx\ntool haproxy \nmissing haproxy\n")
    assert facts.tools == {"nginx": "/usr/sbin/nginx"} and facts.missing == ("haproxy",) and facts.root


def test_parse_probe():
    facts = parse_probe("uid 0\npython 3 11\npresent python3\nmissing nginx\nmissing python3-venv\n")
    assert (facts.root, facts.python, facts.missing) == (True, (3, 11), ("nginx", "python3-venv"))
    assert parse_probe("uid 1000\nmissing python3\n").python is None


def test_install_command_disables_the_services_debian_starts_for_the_packages_it_installed():
    script = install_command(("nginx", "python3-venv", "postgresql"), as_root=True)[2]
    assert script.endswith("systemctl disable --now nginx postgresql >/dev/null 2>&1 || true; }")
    assert "systemctl" not in install_command(("python3-venv",), as_root=True)[2]
    subprocess.run(["sh", "-n", "-c", script], check=True)  # the shell accepts it


def test_install_command_uses_sudo_without_a_prompt_unless_root():
    assert install_command(("nginx",), as_root=True)[:2] == ["sh", "-c"]
    command = install_command(("nginx", "python3-venv"), as_root=False)
    assert command[:4] == ["sudo", "-n", "sh", "-c"]
    assert "apt-get install -y -qq --no-install-recommends nginx python3-venv && " in command[4]


class FakeHost:
    """A host whose packages are a set; apt-get adds to it (or fails)."""

    def __init__(self, installed: set[str], apt_works: bool = True, python: str = "3 11"):
        self.installed, self.apt_works, self.python, self.commands = installed, apt_works, python, []

    def run(self, argv, **_) -> Result:
        self.commands.append(list(argv))
        if "apt-get" in argv[-1]:
            if not self.apt_works:
                return Result(tuple(argv), 100, "", "E: Unable to locate package nginx\n")
            self.installed |= set(argv[-1].split("--no-install-recommends ")[1].split())
            return Result(tuple(argv), 0, "", "")
        lines = ["uid 0", f"python {self.python}"]
        lines += [
            ("present " if package in self.installed else "missing ") + package
            for package in ("python3", "python3-venv", "nginx")
        ]
        return Result(tuple(argv), 0, "\n".join(lines) + "\n", "")


def app_host(name: str = "app1") -> SSHHost:
    return remote_hosts(parse_config(REMOTE), Path("/tmp"))[1 if name == "app1" else 2]


def test_prepare_reports_what_is_missing_and_require_ready_names_the_command():
    fake = FakeHost({"python3", "python3-venv"})
    [report] = prepare_hosts([app_host()], install=False, connect=lambda host: nullcontext(fake))
    assert (report.missing, report.installed, report.ready) == (("nginx",), (), False)
    assert not any("apt-get" in command[-1] for command in fake.commands)
    with pytest.raises(DjshipError) as raised:
        require_ready([report])
    assert str(raised.value) == (
        "hosts are missing what their roles need: app1: apt-get install -y nginx "
        "(or run `djship hosts --install` to let djship install the packages)"
    )


def test_prepare_with_install_installs_and_checks_again():
    fake = FakeHost({"python3"})
    [report] = prepare_hosts([app_host()], install=True, connect=lambda host: nullcontext(fake))
    assert (report.installed, report.missing, report.ready) == (("python3-venv", "nginx"), (), True)
    require_ready([report])


def test_failed_install_names_the_host_and_apt_gets_reason():
    hosts = [app_host("app1"), app_host("app2")]
    fakes = {"app1": FakeHost({"python3", "python3-venv", "nginx"}), "app2": FakeHost(set(), apt_works=False)}
    with pytest.raises(DjshipError) as raised:
        prepare_hosts(hosts, install=True, connect=lambda host: nullcontext(fakes[host.name]))
    assert str(raised.value) == (
        "app2: apt-get install python3 python3-venv nginx failed: E: Unable to locate package nginx"
    )


def test_too_old_python_is_a_problem_packages_cannot_fix():
    fake = FakeHost({"python3", "python3-venv", "nginx"}, python="3 8")
    [report] = prepare_hosts([app_host()], install=False, connect=lambda host: nullcontext(fake))
    assert report.python == "3.8" and not report.ready
    with pytest.raises(DjshipError, match="app1: python3 is 3.8; djship needs 3.10 or newer"):
        require_ready([report])
