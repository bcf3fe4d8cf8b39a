"""Shipping code once: the install commands, the code archive, the wheelhouse cache, and what is done on a host."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.connectors import Result
from djship.connectors.local import LocalConnector
from djship.deploy.shipping import (
    COMPLETE_MARKER,
    HostWheels,
    Wheelhouse,
    build_wheelhouse,
    ensure_venv,
    offline_install_command,
    pack_code,
    require_python,
    unpack_code,
    upload_wheelhouse,
    wheelhouse_key,
)
from djship.errors import DjshipError

PACKAGES = ("gunicorn>=23", "psycopg[binary]>=3.1", "supervisor>=4.2")
PIP_WHEEL = "pip-26.3-py3-none-any.whl"
WHEELS = HostWheels(Path("/srv/wheels/k1"), Path("/srv/wheels/pip-26.3-py3-none-any/pip"), 0)


def ok(argv, stdout: str = "") -> Result:
    return Result(tuple(str(part) for part in argv), 0, stdout, "")


def failed(argv, stderr: str, code: int = 1) -> Result:
    return Result(tuple(str(part) for part in argv), code, "", stderr)


# ---- the install commands ---------------------------------------------------------------------------------------


def test_offline_install_command_makes_the_venv_then_installs_from_the_wheels_alone_with_their_pip():
    commands = offline_install_command(
        "/usr/bin/python3", Path("/srv/v/abc"), WHEELS, Path("/srv/app/requirements.txt"), PACKAGES
    )
    assert commands == [
        ["/usr/bin/python3", "-m", "venv", "--without-pip", "/srv/v/abc"],
        [
            "env", "PIP_CONFIG_FILE=/dev/null", "/srv/v/abc/bin/python", "/srv/wheels/pip-26.3-py3-none-any/pip",
            "install", "--isolated", "--quiet", "--no-index", "--find-links", "/srv/wheels/k1", "-r", "/srv/app/requirements.txt",
            "gunicorn>=23", "psycopg[binary]>=3.1", "supervisor>=4.2",
        ],
    ]


def test_offline_install_command_without_a_requirements_file():
    _, install = offline_install_command("python3", Path("/v"), WHEELS, None, ("gunicorn>=23",))
    assert "-r" not in install
    assert install[-4:] == ["--no-index", "--find-links", "/srv/wheels/k1", "gunicorn>=23"]


# ---- the code archive -------------------------------------------------------------------------------------------


def make_project(root: Path) -> Path:
    project = root / "project"
    (project / "board" / "__pycache__").mkdir(parents=True)
    (project / "board" / "nested").mkdir()
    (project / ".git").mkdir()
    (project / ".djship" / "releases").mkdir(parents=True)
    (project / "manage.py").write_text("print('manage')\n")
    (project / "manage.py").chmod(0o755)
    (project / "board" / "settings.py").write_text("DEBUG = False\n")
    (project / "board" / "__pycache__" / "settings.cpython-311.pyc").write_bytes(b"\0compiled")
    (project / "board" / "stale.pyc").write_bytes(b"\0compiled")
    (project / "board" / "nested" / ".djship").write_text("a file of the project, not the state dir\n")
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / ".djship" / "releases" / "secret").write_text("never shipped\n")
    (project / "settings_link.py").symlink_to("board/settings.py")
    (project / "board_link").symlink_to("board")
    return project


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def test_pack_code_leaves_out_excluded_names_at_any_depth_and_only_the_state_dir_itself(tmp_path):
    project = make_project(tmp_path)
    archive = pack_code(project, ("__pycache__", "*.pyc", ".git"), project / ".djship")
    assert sorted(members(archive)) == [
        "board", "board/nested", "board/nested/.djship", "board/settings.py", "board_link", "manage.py",
        "settings_link.py",
    ]


def test_pack_code_keeps_symlinks_as_links_modes_and_content_with_no_owner(tmp_path):
    project = make_project(tmp_path)
    if os.getuid() == 0:
        os.chown(project / "manage.py", 65534, 65534)  # an owner other than root, to see that none is recorded
    archive = pack_code(project, (), project / ".djship")
    entries = members(archive)
    assert entries["board_link"].issym() and entries["board_link"].linkname == "board"
    assert entries["settings_link.py"].issym() and entries["settings_link.py"].linkname == "board/settings.py"
    assert "board_link/settings.py" not in entries  # a linked directory is not followed
    assert entries["manage.py"].mode & 0o777 == 0o755
    assert {(info.uid, info.gid, info.uname, info.gname) for info in entries.values()} == {(0, 0, "", "")}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.extractfile("board/settings.py").read() == b"DEBUG = False\n"


def test_pack_code_is_deterministic(tmp_path):
    project = make_project(tmp_path)
    first = pack_code(project, ("__pycache__",), project / ".djship")
    second = pack_code(project, ("__pycache__",), project / ".djship")
    assert first == second
    (project / "board" / "settings.py").write_text("DEBUG = True\n")
    assert pack_code(project, ("__pycache__",), project / ".djship") != first


def test_pack_code_names_an_unreadable_file_and_the_fix(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    unreadable = project / "board" / "settings.py"
    real_open = Path.open

    def refusing_open(path, *args, **kwargs):  # what chmod 0 does, also when the tests run as root
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    with pytest.raises(DjshipError, match=r"^cannot read .*settings.py: Permission denied; make it readable or add"):
        pack_code(project, (), project / ".djship")


# ---- the wheelhouse ---------------------------------------------------------------------------------------------


class FakeBuilder:
    """This machine as build_wheelhouse sees it: a Python of some version whose `pip wheel` writes wheel files."""

    def __init__(self, version: str = "3 11", wheels: tuple[str, ...] = ("django-5.2-py3-none-any.whl",)):
        self.version, self.wheels = version, wheels
        self.builds: list[list[str]] = []
        self.outcome = "ok"

    def run(self, argv, **_) -> Result:
        argv = [str(part) for part in argv]
        if argv[1] == "-c":
            return ok(argv, self.version + "\n")
        assert argv[1:4] == ["-m", "pip", "wheel"]
        self.builds.append(argv)
        target = Path(argv[argv.index("-w") + 1])
        assert target.is_dir()
        for wheel in self.wheels:
            (target / wheel).write_bytes(b"wheel " + wheel.encode())
            if self.outcome == "interrupted":
                raise KeyboardInterrupt
        if self.outcome == "fails":
            return Result(tuple(argv), 1, "Collecting nosuchpkg\n", "ERROR: Could not find a version\n"
                          "ERROR: No matching distribution found for nosuchpkg\n")
        return ok(argv)


@pytest.fixture
def requirements(tmp_path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("Django>=5.2,<6.0\n")
    return path


def build(requirements: Path, builder: FakeBuilder, packages=PACKAGES) -> Wheelhouse:
    cache = requirements.parent / "cache"
    return build_wheelhouse(requirements, packages, "/venv/bin/python", cache, builder, requirements.parent / "log")


def test_the_wheelhouse_is_built_once_and_then_reused(requirements):
    builder = FakeBuilder(wheels=("django-5.2-py3-none-any.whl", "gunicorn-23.0-py3-none-any.whl"))
    first = build(requirements, builder)
    assert first.python == (3, 11)
    assert first.key == wheelhouse_key(requirements.read_bytes(), PACKAGES, (3, 11))
    assert first.dir == requirements.parent / "cache" / first.key
    assert [wheel.name for wheel in first.wheels] == ["django-5.2-py3-none-any.whl", "gunicorn-23.0-py3-none-any.whl"]
    assert builder.builds[0][4:] == ["--quiet", "-w", builder.builds[0][6], "-r", str(requirements), *PACKAGES, "pip"]
    assert build(requirements, builder) == first
    assert len(builder.builds) == 1
    assert sorted(path.name for path in first.dir.parent.iterdir()) == [first.key]  # nothing left beside it


def test_the_wheelhouse_key_follows_requirements_packages_and_python(requirements):
    key = wheelhouse_key(b"Django\n", PACKAGES, (3, 11))
    assert len(key) == 16
    assert wheelhouse_key(b"Django\n", PACKAGES, (3, 11)) == key
    assert len({
        key,
        wheelhouse_key(b"Django==5.2\n", PACKAGES, (3, 11)),
        wheelhouse_key(b"Django\n", PACKAGES[:2], (3, 11)),
        wheelhouse_key(b"Django\n", PACKAGES, (3, 12)),
    }) == 4
    builder = FakeBuilder()
    first = build(requirements, builder)
    requirements.write_text("Django>=5.2,<6.0\nPillow\n")
    assert build(requirements, builder).key != first.key
    assert len(builder.builds) == 2


def test_an_interrupted_build_never_looks_complete(requirements):
    builder = FakeBuilder(wheels=("a-1-py3-none-any.whl", "b-1-py3-none-any.whl"))
    builder.outcome = "interrupted"
    with pytest.raises(KeyboardInterrupt):
        build(requirements, builder)
    cache = requirements.parent / "cache"
    assert list(cache.iterdir()) == []
    builder.outcome = "ok"
    wheelhouse = build(requirements, builder)
    assert len(builder.builds) == 2
    assert [wheel.name for wheel in wheelhouse.wheels] == ["a-1-py3-none-any.whl", "b-1-py3-none-any.whl"]


def test_a_build_killed_outright_leaves_only_a_hidden_partial_that_is_never_used(requirements):
    key = wheelhouse_key(requirements.read_bytes(), PACKAGES, (3, 11))
    leftover = requirements.parent / "cache" / f".{key}.partial-x1y2"
    leftover.mkdir(parents=True)
    (leftover / "a-1-py3-none-any.whl").write_bytes(b"half")
    builder = FakeBuilder()
    wheelhouse = build(requirements, builder)
    assert len(builder.builds) == 1
    assert wheelhouse.dir.name == key and wheelhouse.dir != leftover


def test_a_failed_build_names_the_requirements_pip_last_line_and_the_log(requirements):
    builder = FakeBuilder()
    builder.outcome = "fails"
    log = requirements.parent / "log"
    with pytest.raises(DjshipError) as caught:
        build(requirements, builder)
    assert str(caught.value) == (
        f"building wheels for {requirements} failed: ERROR: No matching distribution found for nosuchpkg "
        f"(full output in {log})"
    )
    assert "\n" not in str(caught.value)
    assert list((requirements.parent / "cache").iterdir()) == []
    text = log.read_text()
    assert text.startswith("$ /venv/bin/python -m pip wheel --quiet -w ")
    assert "Collecting nosuchpkg" in text and "[exit 1]" in text


def test_a_missing_requirements_file_and_a_broken_python_are_one_line_errors(tmp_path, requirements):
    with pytest.raises(DjshipError, match=r"^cannot read requirements file .*nope.txt: No such file or directory; fix"):
        build(tmp_path / "nope.txt", FakeBuilder())

    class NoPython:
        def run(self, argv, **_):
            return failed(argv, "sh: 1: /venv/bin/python: not found\n", 127)

    with pytest.raises(DjshipError) as caught:
        build_wheelhouse(requirements, PACKAGES, "/venv/bin/python", tmp_path / "c", NoPython(), tmp_path / "log")
    assert str(caught.value) == (
        "cannot run /venv/bin/python: sh: 1: /venv/bin/python: not found; point djship at a working Python 3"
    )


# ---- on a host --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    address: str


class FakeHost:
    """A host with a dict for a file system; records every command; some commands can be made to fail."""

    def __init__(self, python: str = "3 11"):
        self.target = Target("10.0.0.5")
        self.files: dict[Path, tuple[bytes, int]] = {}
        self.dirs: set[Path] = set()
        self.commands: list[list[str]] = []
        self.python = python
        self.fail: dict[str, Result] = {}

    def run(self, argv, **_) -> Result:
        argv = [str(part) for part in argv]
        self.commands.append(argv)
        for word, result in self.fail.items():
            if word in argv:
                return result
        if argv[:2] == ["ls", "-1"]:
            directory = Path(argv[-1])
            return ok(argv, "".join(f"{path.name}\n" for path in sorted(self.files) if path.parent == directory))
        if argv[:2] == ["test", "-f"]:
            return Result(tuple(argv), 0 if Path(argv[2]) in self.files else 1, "", "")
        if argv[:2] == ["test", "-d"]:
            return Result(tuple(argv), 0 if Path(argv[2]) in self.dirs else 1, "", "")
        if argv[:3] == ["mv", "-T", "--"]:
            self.dirs.add(Path(argv[4]))
        if argv[1:2] == ["-c"]:
            return ok(argv, self.python + "\n")
        return ok(argv)

    def put(self, path: Path, content, *, mode: int = 0o644, owner: str | None = None) -> bool:
        self.commands.append(["put", str(path)])
        self.files[path] = (content.encode() if isinstance(content, str) else content, mode)
        return True

    def get(self, path: Path) -> bytes | None:
        return self.files.get(path, (None,))[0]

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None) -> None:
        self.dirs.add(path)


def wheelhouse_of(tmp_path: Path, names: list[str]) -> Wheelhouse:
    directory = tmp_path / "wheels" / "k1"
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_bytes(name.encode())
    return Wheelhouse(directory, "k1", (3, 11))


def test_upload_copies_only_the_wheels_the_host_lacks_and_unpacks_their_pip_once(tmp_path):
    wheelhouse = wheelhouse_of(tmp_path, ["a-1-py3-none-any.whl", "b-1-py3-none-any.whl", PIP_WHEEL])
    host = FakeHost()
    remote = Path("/srv/djship/wheels")
    host.files[remote / "k1" / "b-1-py3-none-any.whl"] = (b"b-1-py3-none-any.whl", 0o644)
    unpacked, partial = remote / "pip-26.3-py3-none-any", remote / ".pip-26.3-py3-none-any.partial"
    assert upload_wheelhouse(host, wheelhouse, remote, "/usr/bin/python3") == HostWheels(
        remote / "k1", unpacked / "pip", 2
    )
    assert remote / "k1" in host.dirs
    assert wheelhouse.on_host(remote) == remote / "k1"
    assert host.files[remote / "k1" / "a-1-py3-none-any.whl"] == (b"a-1-py3-none-any.whl", 0o644)
    assert sorted(path.name for path in host.files) == [wheel.name for wheel in wheelhouse.wheels]
    assert host.commands[-3:] == [
        ["rm", "-rf", "--", str(partial)],
        ["/usr/bin/python3", "-m", "zipfile", "-e", str(remote / "k1" / PIP_WHEEL), str(partial)],
        ["mv", "-T", "--", str(partial), str(unpacked)],
    ]
    host.commands.clear()
    assert upload_wheelhouse(host, wheelhouse, remote, "/usr/bin/python3").copied == 0
    assert host.commands[-1] == ["test", "-d", str(unpacked)]


def test_a_host_that_runs_no_code_gets_only_the_wheels_it_installs_and_pip(tmp_path):
    wheelhouse = wheelhouse_of(tmp_path, ["django-5.2-py3-none-any.whl", PIP_WHEEL, "supervisor-4.3.0-py3-none-any.whl"])
    host = FakeHost()
    remote = Path("/srv/w")
    assert upload_wheelhouse(host, wheelhouse, remote, "python3", frozenset({"supervisor"})).copied == 2
    assert sorted(path.name for path in host.files) == [PIP_WHEEL, "supervisor-4.3.0-py3-none-any.whl"]
    assert upload_wheelhouse(host, wheelhouse, remote, "python3").copied == 1  # it becomes an app host: Django too


def test_a_wheelhouse_without_pip_is_named_with_the_fix(tmp_path):
    wheelhouse = wheelhouse_of(tmp_path, ["a-1-py3-none-any.whl"])
    with pytest.raises(DjshipError) as caught:
        upload_wheelhouse(FakeHost(), wheelhouse, Path("/srv/w"), "python3")
    assert str(caught.value) == (
        f"the wheelhouse {wheelhouse.dir} has no pip wheel; delete that directory so that djship builds it again"
    )


def test_upload_names_the_host_when_it_cannot_list_the_directory(tmp_path):
    host = FakeHost()
    host.fail["ls"] = failed(["ls"], "ls: cannot open directory '/srv/w/k1': Permission denied\n", 2)
    with pytest.raises(DjshipError) as caught:
        upload_wheelhouse(host, wheelhouse_of(tmp_path, ["a-1-py3-none-any.whl"]), Path("/srv/w"), "python3")
    assert str(caught.value) == (
        "cannot list /srv/w/k1 on 10.0.0.5: ls: cannot open directory '/srv/w/k1': Permission denied; "
        "check that directory"
    )


def test_ensure_venv_installs_offline_chowns_and_writes_the_marker_last():
    host = FakeHost()
    venv, requirements = Path("/srv/venvs/v1"), Path("/srv/app/requirements.txt")
    assert ensure_venv(host, "/usr/bin/python3", venv, WHEELS, requirements, PACKAGES, owner="djship") is True
    create, install = offline_install_command("/usr/bin/python3", venv, WHEELS, requirements, PACKAGES)
    assert host.commands == [
        ["test", "-f", str(venv / COMPLETE_MARKER)],
        ["rm", "-rf", "--", str(venv)],
        create,
        install,
        ["chown", "-R", "-h", "--", "djship:", str(venv)],
        ["put", str(venv / COMPLETE_MARKER)],
    ]
    host.commands.clear()
    assert ensure_venv(host, "/usr/bin/python3", venv, WHEELS, requirements, PACKAGES) is False
    assert host.commands == [["test", "-f", str(venv / COMPLETE_MARKER)]]


def test_a_failed_install_removes_the_half_made_venv_and_names_the_host_and_pip_last_line():
    host = FakeHost()
    host.fail["install"] = failed(
        ["pip"], "ERROR: Could not find a version that satisfies the requirement Pillow>=10\n"
        "ERROR: No matching distribution found for Pillow>=10\n",
    )
    venv = Path("/srv/venvs/v1")
    with pytest.raises(DjshipError) as caught:
        ensure_venv(host, "python3", venv, WHEELS, None, PACKAGES)
    assert str(caught.value) == (
        f"installing the requirements from /srv/wheels/k1 into {venv} on 10.0.0.5 failed: "
        "ERROR: No matching distribution found for Pillow>=10"
    )
    assert host.commands[-1] == ["rm", "-rf", "--", str(venv)]
    assert venv / COMPLETE_MARKER not in host.files


def test_require_python_refuses_a_host_with_another_minor_version():
    wheelhouse = Wheelhouse(Path("/w/k1"), "k1", (3, 11))
    require_python(FakeHost("3 11"), "/usr/bin/python3", wheelhouse)
    with pytest.raises(DjshipError) as caught:
        require_python(FakeHost("3 12"), "/usr/bin/python3", wheelhouse)
    assert str(caught.value) == (
        "/usr/bin/python3 on 10.0.0.5 is Python 3.12 but the release's wheels were built for 3.11; "
        "give every app host the same Python 3.11 (the same distribution release)"
    )


def test_unpack_code_recreates_the_tree_and_refuses_an_existing_destination(tmp_path):
    project = make_project(tmp_path)
    archive = pack_code(project, ("__pycache__", "*.pyc", ".git"), project / ".djship")
    destination = tmp_path / "host" / "releases" / "r1" / "app"
    host = LocalConnector()
    unpack_code(host, archive, destination)
    assert (destination / "board" / "settings.py").read_text() == "DEBUG = False\n"
    assert os.readlink(destination / "board_link") == "board"
    assert (destination / "manage.py").stat().st_mode & 0o777 == 0o755
    assert not (destination / ".djship").exists() and not (destination / ".git").exists()
    assert sorted(path.name for path in destination.parent.iterdir()) == ["app"]  # the archive file is gone
    with pytest.raises(DjshipError) as caught:
        unpack_code(host, archive, destination)
    assert str(caught.value) == (
        f"{destination} already exists; code is only unpacked into a new directory, so remove it or unpack "
        "into another one"
    )
    assert (destination / "manage.py").exists()  # the refusal touched nothing


def test_a_broken_archive_leaves_no_destination_behind(tmp_path):
    destination = tmp_path / "releases" / "r1" / "app"
    with pytest.raises(DjshipError, match=rf"^unpacking the code into {destination} failed: .*"):
        unpack_code(LocalConnector(), b"not a tar file", destination)
    assert list(destination.parent.iterdir()) == []


def test_a_package_is_shipped_into_the_venv_once_and_again_when_it_changed(tmp_path):
    """djship itself reaches a host's virtualenv as files (it may run from a checkout): copied when its files
    differ from the copy there, left alone when they are the same."""
    from djship.deploy.shipping import ship_package

    package = tmp_path / "source" / "tool"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    venv, connector = tmp_path / "venv", LocalConnector()
    installed = venv / "lib" / "python3.11" / "site-packages" / "tool"

    assert ship_package(connector, venv, (3, 11), package) is True
    assert (installed / "__init__.py").read_text() == "VERSION = 1\n"
    assert not (installed / "__pycache__").exists()
    assert ship_package(connector, venv, (3, 11), package) is False

    (package / "__init__.py").write_text("VERSION = 2\n")
    (installed / "stale.py").write_text("left from the old copy\n")
    assert ship_package(connector, venv, (3, 11), package) is True
    assert (installed / "__init__.py").read_text() == "VERSION = 2\n" and not (installed / "stale.py").exists()


def test_the_agent_runs_on_a_host_with_only_its_own_dependencies():
    """On a host, djship's venv holds AGENT_DEPENDENCIES only: every command of the agent must import without the
    control machine's libraries (the daily backup once pulled in jinja2 through the topology)."""
    from djship.deploy.pipeline import AGENT_DEPENDENCIES

    control_only = sorted({"click", "rich", "jinja2", "supervisor", "uv", "paramiko", "dotenv"})
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in control_only)
    script = (f"import sys; {blocked}; import djship.agent, djship.ops.store, djship.components.pgbackrest, "
              "djship.tls.site, djship.tls.renewal; print('imported')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr
    assert set(AGENT_DEPENDENCIES).isdisjoint(control_only)
