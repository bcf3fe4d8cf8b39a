"""The SSH connector against real hosts: network namespaces of the test's own, each with its own sshd.

Only the test hosts' addresses (10.247.x.y, inside namespaces this test makes and deletes) are contacted.
"""

from __future__ import annotations

import shutil
import socket
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from djship.connectors import on_each
from djship.connectors.ssh import SSHConnector, SSHTarget
from djship.errors import DjshipError
from tests.e2e.hosts import NetnsHosts, netns_hosts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hosts() -> NetnsHosts:
    with netns_hosts(["app1", "app2"]) as made:
        yield made


def connect(hosts: NetnsHosts, name: str, **overrides) -> SSHConnector:
    values = {"key_file": hosts.client_key, "known_hosts": hosts.known_hosts, **overrides}
    return SSHConnector(SSHTarget(hosts[name].address, **values))


def test_run_captures_output_exit_code_env_cwd_and_input(hosts):
    with connect(hosts, "app1") as host:
        result = host.run(
            ["sh", "-c", 'echo "$GREETING from $(pwd)"; cat; echo oops >&2; exit 3'],
            env={"GREETING": "hello world"}, cwd=hosts["app1"].root, input="piped in\n",
        )
    assert (result.returncode, result.stdout, result.stderr) == (
        3, f"hello world from {hosts['app1'].root}\npiped in\n", "oops\n"
    )


def test_commands_run_inside_the_host_namespace(hosts):
    with connect(hosts, "app2") as host:
        addresses = host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"inet {hosts['app2'].address}/24" in addresses


def test_the_connection_sends_small_packets_at_once(hosts):
    """Nagle's algorithm held each command's channel-open until the server's delayed ACK: ~44 ms a command."""
    with connect(hosts, "app1") as host:
        assert host.run(["true"]).ok
        sock = host._connection().get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_run_as_another_user(hosts):
    with connect(hosts, "app1") as host:
        assert host.run(["id", "-un"], user="nobody").stdout.strip() == "nobody"


def test_large_output_on_both_streams_does_not_stall(hosts):
    with connect(hosts, "app1") as host:
        result = host.run(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' o; head -c 3000000 /dev/zero >&2"],
                          timeout=60)
    assert (len(result.stdout), len(result.stderr)) == (3000000, 3000000)


def test_timeout_is_a_one_line_error(hosts):
    with connect(hosts, "app1") as host, pytest.raises(DjshipError, match="did not finish within 1s"):
        host.run(["sleep", "30"], timeout=1)


def test_put_is_atomic_private_from_the_first_byte_and_reports_changes(hosts):
    path = hosts["app1"].root / "secrets" / "app.json"
    with connect(hosts, "app1") as host:
        assert host.get(path) is None
        assert host.put(path, '{"secret": 1}\n', mode=0o600, owner="nobody") is True
        assert host.put(path, '{"secret": 1}\n', mode=0o600, owner="nobody") is False
        assert host.get(path) == b'{"secret": 1}\n'
        assert host.put(path, b"changed\n", mode=0o600) is True
    info = path.stat()  # the test hosts share this machine's file system
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert path.read_bytes() == b"changed\n"
    assert not list(path.parent.glob(".*djship-tmp"))


def test_files_read_from_many_threads_at_once_all_arrive(hosts):
    """paramiko's SFTP client may hand one thread's response to another: the connector does one operation at a time."""
    directory = hosts["app1"].root / "many"
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(16):
        (directory / f"{number}.txt").write_text(f"file {number}\n" * 2000)
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        with connect(hosts, "app1") as host:
            read = list(pool.map(lambda number: host.get(directory / f"{number}.txt"), [*range(16)] * 4, timeout=60))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert read == [f"file {number}\n".encode() * 2000 for number in [*range(16)] * 4]


def test_makedirs_sets_mode_and_owner(hosts):
    path = hosts["app2"].root / "a" / "b"
    with connect(hosts, "app2") as host:
        host.makedirs(path, mode=0o700, owner="nobody")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert (path.owner(), path.group()) == ("nobody", "nogroup")  # the owner's own group
    with connect(hosts, "app2") as host:
        host.makedirs(path, mode=0o750, owner="nobody", group="www-data")  # gunicorn's socket directory: nginx's too
    assert (stat.S_IMODE(path.stat().st_mode), path.owner(), path.group()) == (0o750, "nobody", "www-data")


def test_a_directory_already_as_asked_costs_no_command_on_the_host(hosts, monkeypatch):
    path = hosts["app2"].root / "c" / "d"
    with connect(hosts, "app2") as host:
        host.makedirs(path, mode=0o700, owner="nobody")
        host.put(path / "f", "x", mode=0o600)
        commands = []
        real_run = host.run
        monkeypatch.setattr(host, "run", lambda argv, **kwargs: commands.append(list(argv)) or real_run(argv, **kwargs))
        host.makedirs(path, mode=0o700, owner="nobody")
        host.put(path / "f", "y", mode=0o600)
        assert commands == [] and (path / "f").read_text() == "y"
        host.makedirs(path, mode=0o750, owner="nobody")  # a different mode is set by the host, without a link followed
        assert [argv[:2] for argv in commands] == [["python3", "-c"]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


@pytest.fixture
def outside(hosts):
    """A root-only file outside the directories djship writes into, the target of every planted link."""
    path = hosts["app1"].root / "outside" / "shadow"
    path.parent.mkdir(exist_ok=True)
    path.write_text("root's secret\n")
    path.chmod(0o600)
    yield path
    shutil.rmtree(path.parent)


def unchanged(path, before, content) -> bool:
    after = path.lstat()
    return (path.read_bytes(), after.st_mode, after.st_uid) == (content, before.st_mode, before.st_uid)


def test_put_never_writes_through_a_link_planted_as_its_temporary_file(hosts, outside):
    before, content = outside.stat(), outside.read_bytes()
    target = hosts["app1"].root / "servers" / "app1" / "gunicorn.conf.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / ".gunicorn.conf.py.djship-tmp").symlink_to(outside)
    with connect(hosts, "app1") as host:
        assert host.put(target, "workers = 3\n", mode=0o644, owner="nobody") is True
    assert unchanged(outside, before, content)
    assert target.read_text() == "workers = 3\n" and not target.is_symlink()
    assert (stat.S_IMODE(target.stat().st_mode), target.owner()) == (0o644, "nobody")
    assert sorted(path.name for path in target.parent.iterdir()) == ["gunicorn.conf.py"]


def test_put_creates_its_temporary_file_private_from_the_first_moment(hosts):
    """A reader that opens the temporary file while it is being written finds nothing: it is 0600 from creation."""
    target = hosts["app1"].root / "secrets" / "admin.json"
    with connect(hosts, "app1") as host:
        handle = host._create_private(str(target.with_name(".admin.json.djship-tmp")))
        try:
            assert stat.S_IMODE(target.with_name(".admin.json.djship-tmp").stat().st_mode) == 0o600
        finally:
            handle.close()
            target.with_name(".admin.json.djship-tmp").unlink()


def test_makedirs_never_chmods_or_chowns_through_a_link(hosts, outside):
    directory = outside.parent
    directory.chmod(0o700)
    before = directory.stat()
    planted = hosts["app1"].root / "nginx-temp"
    planted.symlink_to(directory)
    try:
        with connect(hosts, "app1") as host, pytest.raises(DjshipError, match=r"nginx-temp is a symlink or not a "
                                                                               r"directory, where djship keeps a directory"):
            host.makedirs(planted, mode=0o755, owner="nobody")
    finally:
        planted.unlink()
    after = directory.stat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)


def test_unknown_host_key_is_refused(hosts, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DjshipError, match=r"host key of .* is unknown.*ssh-keyscan"):
        connect(hosts, "app1", known_hosts=empty).run(["true"])


def test_pinned_host_key_is_used_and_a_wrong_one_refused(hosts, tmp_path):
    nowhere = tmp_path / "no_known_hosts"
    with connect(hosts, "app1", known_hosts=nowhere, host_key=hosts["app1"].host_key) as host:
        assert host.run(["true"]).ok
    with pytest.raises(DjshipError, match="does not match"):
        connect(hosts, "app1", known_hosts=nowhere, host_key=hosts["app2"].host_key).run(["true"])


def test_key_not_authorized_is_a_one_line_login_error(hosts):
    (hosts.directory / "authorized_keys").write_text("")
    try:
        with pytest.raises(DjshipError, match="as root was refused; add the public key"):
            connect(hosts, "app2").run(["true"])
    finally:
        (hosts.directory / "authorized_keys").write_text(hosts.client_key.with_suffix(".pub").read_text())


def test_fan_out_names_the_host_that_is_down(hosts):
    hosts["app2"].kill()
    try:
        connectors = {name: connect(hosts, name, connect_timeout=3) for name in ("app1", "app2")}
        with pytest.raises(DjshipError) as raised:
            on_each(connectors, lambda host: host.run(["hostname"]).ok)
        message = str(raised.value)
        assert message.startswith(f"app2: cannot reach {hosts['app2'].address}:22 over SSH")
        assert "app1" not in message
    finally:
        hosts.start_sshd(hosts["app2"])
    with connect(hosts, "app2") as host:
        assert host.run(["true"]).ok
