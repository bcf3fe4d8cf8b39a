"""Test hosts: each one a network namespace with its own address, its own sshd and its own state root.

    with netns_hosts(["lb1", "app1", "db1"]) as hosts:
        hosts["app1"].address   # e.g. 10.247.13.11, reachable from this machine and from the other hosts

The hosts hang off a bridge in this machine's namespace. They have no default route, and the whole test range
gets an `unreachable` route here, so a packet for a test address never leaves this machine, not even after a
host is gone. The hosts share this machine's file system (a network namespace isolates the network only), so
each gets its own directory as its state root, and the system users djship makes with their homes in a root (the
media and backup hosts' SFTP users) are named after the test process's offset (`users_toml`): fleets of two test
processes run side by side. Everything made here is deleted on exit, also on failure:
every process in each namespace is killed by PID, then the namespaces, the bridge and the route go.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import OFFSET

# 10.247.0.0/16 is this project's test range; each test process takes one /24 of it, chosen by its offset and PID.
TEST_RANGE = "10.247.0.0/16"
SSHD = "/usr/sbin/sshd"
# sshd (StrictModes) refuses an authorized_keys file with a group- or world-writable directory above it, such as /tmp.
PARENT = Path("/run/djship-test-hosts")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class NetnsHost:
    name: str
    namespace: str
    address: str
    root: Path
    """The host's own state root (djship's `root` for this host)."""
    host_key: str
    """The sshd's public host key, "ssh-ed25519 AAAA..." (what a known_hosts line or a pinned key holds)."""

    def pids(self) -> list[int]:
        result = _ip("netns", "pids", self.namespace, check=False)
        return [int(pid) for pid in result.stdout.split()]

    def kill(self) -> None:
        """Take the host off the network the hard way: SIGKILL every process in its namespace, sshd included."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"processes in {self.namespace} survived SIGKILL: {self.pids()}")


@dataclass(frozen=True)
class NetnsHosts:
    hosts: dict[str, NetnsHost]
    directory: Path
    client_key: Path
    known_hosts: Path
    gateway: str
    """This machine's address on the test network (what the hosts see djship connect from)."""

    def __getitem__(self, name: str) -> NetnsHost:
        return self.hosts[name]

    @property
    def users_toml(self) -> list[str]:
        """The [users] of a fleet's djship.toml: SFTP users of this test process's own (see the module's doc)."""
        return ["[users]", f'media = "djship-media-t{OFFSET}"', f'backup = "djship-backup-t{OFFSET}"']

    def start_sshd(self, host: NetnsHost) -> int:
        """Start (or start again) the host's sshd in its namespace; returns its PID once it accepts connections."""
        config = self.directory / host.name / "sshd_config"
        process = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / host.name / "sshd.log", "ab"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (self.directory / host.name / "sshd.log").read_text()
                raise AssertionError(f"sshd on {host.name} exited {process.returncode}:\n{log}")
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((host.address, 22)) == 0:
                    return process.pid
            time.sleep(0.05)
        raise AssertionError(f"sshd on {host.name} ({host.address}) did not accept connections within 15s")


def _subnet() -> str:
    """Two test processes with different offsets (xdist workers, worktrees) never share one."""
    return f"10.247.{os.getpid() % 25 * 10 + OFFSET % 10 + 1}"


def _sshd_config(directory: Path, address: str, authorized_keys: Path, root: Path) -> str:
    return "\n".join([
        f"ListenAddress {address}",
        "Port 22",
        f"HostKey {directory / 'ssh_host_ed25519_key'}",
        f"PidFile {directory / 'sshd.pid'}",
        # The harness's key for root; for the media host's and the backup host's SFTP users, the key djship puts in
        # that user's home on this host. Named by path, not by the home in /etc/passwd: the hosts share that file, so
        # while several fleets run, the home it names is only one of them.
        f"AuthorizedKeysFile {authorized_keys} {root / 'media-access/.ssh/authorized_keys'} "
        f"{root / 'backup-access/.ssh/authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes yes",
        "MaxStartups 100",
        "Subsystem sftp internal-sftp",
        # bash sources ~/.bashrc for a command sshd runs unless it is nested (SHLVL >= 2). The hosts share this
        # machine's root home, whose .bashrc may do slow work (here: `pyenv init`, a rehash under a lock, 1-5 s per
        # command); a rented server's root runs its commands without it, and so do these hosts.
        "SetEnv SHLVL=1",
        "",
    ])


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    kind, key, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {key}"


_FLEETS = itertools.count()


@contextmanager
def netns_hosts(names: list[str]) -> Iterator[NetnsHosts]:
    if not Path(SSHD).exists():
        raise AssertionError(f"{SSHD} is missing; install it with: apt-get install openssh-server")
    subnet = _subnet()
    # One tag per fleet, not per process: the kernel frees a deleted namespace (and the veth in it) in the
    # background, so the next fleet of the same test process could find its names still taken.
    tag = f"djs{os.getpid() % 10000}{next(_FLEETS) % 100:02d}"
    bridge = f"{tag}br"
    with ExitStack() as cleanup:
        PARENT.mkdir(mode=0o755, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="hosts-", dir=PARENT))
        directory.chmod(0o755)
        cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory

        # A route of this fleet's own (its metric): another fleet's, deleted while this one runs, leaves this one.
        metric = str(int.from_bytes(tag.encode()) % 2**31)
        _ip("route", "add", "unreachable", TEST_RANGE, "metric", metric)
        cleanup.callback(_ip, "route", "del", "unreachable", TEST_RANGE, "metric", metric, check=False)
        _ip("link", "add", bridge, "type", "bridge")
        cleanup.callback(_ip, "link", "del", bridge, check=False)
        gateway = f"{subnet}.1"
        _ip("addr", "add", f"{gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")

        client_key = directory / "client_ed25519"
        client_public = _keygen(client_key)
        authorized_keys = directory / "authorized_keys"
        authorized_keys.write_text(client_public + "\n")
        authorized_keys.chmod(0o600)

        hosts: dict[str, NetnsHost] = {}
        for number, name in enumerate(names, start=1):
            namespace = f"{tag}-{name}"
            address = f"{subnet}.{10 + number}"
            host_dir = directory / name
            host_dir.mkdir(mode=0o755)
            root = host_dir / "root"
            root.mkdir(mode=0o755)
            _ip("netns", "add", namespace)
            host = NetnsHost(name, namespace, address, root, _keygen(host_dir / "ssh_host_ed25519_key"))
            cleanup.callback(_ip, "netns", "del", namespace, check=False)
            cleanup.callback(host.kill)
            veth = f"{tag}v{number}"
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", veth, "master", bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            (host_dir / "sshd_config").write_text(_sshd_config(host_dir, address, authorized_keys, root))
            hosts[name] = host

        known_hosts = directory / "known_hosts"
        known_hosts.write_text("".join(f"{host.address} {host.host_key}\n" for host in hosts.values()))
        made = NetnsHosts(hosts, directory, client_key, known_hosts, gateway)
        for host in hosts.values():
            made.start_sshd(host)
        yield made
