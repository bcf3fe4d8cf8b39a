"""Shipping code once: built here, copied to every app host, installed there without any package registry.

    wheelhouse = build_wheelhouse(requirements, packages, sys.executable, cache, LocalConnector(), log)
    archive = pack_code(project_dir, exclude, state_dir)
    for each app host:
        wheels = upload_wheelhouse(host, wheelhouse, remote_wheels, python)   # only the wheels it lacks
        unpack_code(host, archive, release / "app")
        ensure_venv(host, python, venv, wheels, release / "app" / "requirements.txt", ...)

The wheels for the project's requirements are built (or downloaded) once, on this machine, with the Python djship
runs with (which must have pip, as every virtualenv's Python does); the hosts then install with `pip --no-index`
from those files alone, so they need no route to a registry and every host runs the same files. The wheels fit
the hosts only if they run the same Python major.minor on the same platform as this machine: `require_python`
checks the first.

pip itself is one of the wheels: unpacked once on each host, it installs into virtualenvs made without a pip of
their own. Making a virtualenv with its pip (ensurepip installs and byte-compiles pip into every one) took 3.4 s of
the 5.9 s a release's virtualenv cost on a host; without, 2.7 s in all.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from djship.connectors import Connector, Result
from djship.errors import DjshipError
from djship.logfile import append_result

COMPLETE_MARKER = ".djship-complete"
# On the host pip reads no configuration file (a pip.conf there could add sources or constraints), and with
# --isolated no PIP_* variable either: the wheelhouse is the only input, so every host installs the same files.
NO_PIP_CONFIG = ["env", f"PIP_CONFIG_FILE={os.devnull}"]
_VERSION_PROBE = "import sys; print(*sys.version_info[:2])"
PIP = "pip"
"""In every wheelhouse: what the hosts install with."""


@dataclass(frozen=True)
class Wheelhouse:
    """A complete directory of wheels for one requirements file, package list and Python major.minor."""

    dir: Path
    key: str
    python: tuple[int, int]

    @property
    def wheels(self) -> list[Path]:
        return sorted(self.dir.glob("*.whl"))

    def on_host(self, remote_dir: Path) -> Path:
        """Where upload_wheelhouse puts these wheels under remote_dir on a host."""
        return remote_dir / self.key

    @property
    def pip(self) -> Path:
        found = [wheel for wheel in self.wheels if wheel.name.startswith(f"{PIP}-")]
        if not found:
            raise DjshipError(f"the wheelhouse {self.dir} has no pip wheel; delete that directory so that djship "
                              "builds it again")
        return found[-1]


@dataclass(frozen=True)
class HostWheels:
    """A wheelhouse uploaded to a host: its directory there and the unpacked pip that installs from it."""

    dir: Path
    pip: Path
    copied: int
    """How many wheels this upload copied (the host had the others)."""


# ---- pure builders ------------------------------------------------------------------------------------------------


def wheelhouse_key(requirements: bytes, packages: tuple[str, ...], python: tuple[int, int]) -> str:
    digest = hashlib.sha256(requirements)
    digest.update(b"\0" + "\n".join((*packages, PIP)).encode())
    digest.update(b"\0" + _dotted(python).encode())
    return digest.hexdigest()[:16]


def wheel_command(python: str, wheel_dir: Path, requirements: Path, packages: tuple[str, ...]) -> list[str]:
    return [python, "-m", "pip", "wheel", "--quiet", "-w", str(wheel_dir), "-r", str(requirements), *packages, PIP]


def offline_install_command(
    python: str, venv: Path, wheels: HostWheels, requirements: Path | None, packages: tuple[str, ...]
) -> list[list[str]]:
    """The commands that make venv (without a pip of its own) and install into it with the wheelhouse's pip, from
    its wheels alone (--no-index: no registry is asked)."""
    requirement_args = ["-r", str(requirements)] if requirements is not None else []
    return [
        [python, "-m", "venv", "--without-pip", str(venv)],
        [
            *NO_PIP_CONFIG, str(venv / "bin" / "python"), str(wheels.pip), "install", "--isolated", "--quiet",
            "--no-index", "--find-links", str(wheels.dir), *requirement_args, *packages,
        ],
    ]


def wheel_project(filename: str) -> str:
    """The project a wheel file is of, as its name spells it (PEP 427: lower case, `_` for `-` and `.`)."""
    return filename.split("-", 1)[0].lower()


def pack_code(project_dir: Path, exclude: tuple[str, ...], skip: Path) -> bytes:
    """The project tree as a gzip tar, as release.py copies it: names matching an exclude pattern (at any depth)
    and the directory skip (djship's state dir) left out, symlinks kept as links. The same tree gives the same
    bytes: entries sorted, no owner names or ids, no time in the gzip header."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, arcname in _code_entries(project_dir, exclude, skip):
            _add(tar, path, arcname)
    return buffer.getvalue()


def _code_entries(project_dir: Path, exclude: tuple[str, ...], skip: Path):
    def walk(directory: Path, prefix: str):
        try:
            names = sorted(os.listdir(directory))
        except OSError as error:
            raise DjshipError(
                f"cannot read {directory}: {error.strerror}; make it readable or add it to project.exclude"
            ) from None
        for name in names:
            path = directory / name
            if any(fnmatch.fnmatch(name, pattern) for pattern in exclude) or path == skip:
                continue
            arcname = f"{prefix}{name}"
            yield path, arcname
            if path.is_dir() and not path.is_symlink():
                yield from walk(path, arcname + "/")

    return walk(project_dir, "")


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname)
    if info is None or not (info.isfile() or info.isdir() or info.issym()):
        return  # sockets, fifos and devices are not code
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if not info.isfile():
        tar.addfile(info)
        return
    try:
        with path.open("rb") as handle:
            tar.addfile(info, handle)
    except OSError as error:
        raise DjshipError(
            f"cannot read {path}: {error.strerror}; make it readable or add it to project.exclude"
        ) from None


# ---- building here ------------------------------------------------------------------------------------------------


def python_version(connector: Connector, python: str) -> tuple[int, int]:
    """The major.minor of python as run through connector."""
    result = connector.run([python, "-c", _VERSION_PROBE])
    parts = result.stdout.split()
    if not result.ok or len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise DjshipError(
            f"cannot run {python}{_on(connector)}: {_last_line(result)}; point djship at a working Python 3"
        )
    return int(parts[0]), int(parts[1])


def build_wheelhouse(
    requirements: Path, packages: tuple[str, ...], python: str, cache: Path, run: Connector, log: Path
) -> Wheelhouse:
    """Wheels for requirements and packages in cache/<key>, built with python (which must have pip) on this machine.

    The build goes into a hidden sibling and is renamed into place only when pip succeeded, so a directory named
    after its key is always complete and is reused as it is.
    """
    try:
        content = requirements.read_bytes()
    except OSError as error:
        raise DjshipError(
            f"cannot read requirements file {requirements}: {error.strerror}; fix project.requirements in djship.toml"
        ) from None
    version = python_version(run, python)
    key = wheelhouse_key(content, packages, version)
    final = cache / key
    if final.is_dir():
        return Wheelhouse(final, key, version)
    cache.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=cache))
    try:
        result = run.run(wheel_command(python, partial, requirements, packages))
        append_result(log, result)
        if not result.ok:
            raise DjshipError(f"building wheels for {requirements} failed: {_last_line(result)} (full output in {log})")
        try:
            partial.chmod(0o755)
            partial.rename(final)
        except OSError:
            if not final.is_dir():  # another build finished first otherwise: its wheels are as good
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Wheelhouse(final, key, version)


# ---- acting on a host ---------------------------------------------------------------------------------------------


def require_python(connector: Connector, python: str, wheelhouse: Wheelhouse) -> None:
    """Refuse a host whose python is not the major.minor the wheels were built for."""
    version = python_version(connector, python)
    if version != wheelhouse.python:
        built, found = _dotted(wheelhouse.python), _dotted(version)
        raise DjshipError(
            f"{python}{_on(connector)} is Python {found} but the release's wheels were built for {built}; "
            f"give every app host the same Python {built} (the same distribution release)"
        )


def upload_wheelhouse(connector: Connector, wheelhouse: Wheelhouse, remote_dir: Path, python: str,
                      projects: frozenset[str] | None = None) -> HostWheels:
    """Copy to remote_dir/<key>/ every wheel the host does not have yet (only those of projects, when given: a
    host that runs no code needs the supervisor's, not Django's), and unpack its pip with python.

    A wheel's name fixes its content, and put() renames a file into place only when it is whole, so a name that
    is there is a wheel that is there.
    """
    target = wheelhouse.on_host(remote_dir)
    connector.makedirs(target)
    listing = connector.run(["ls", "-1", "--", str(target)])
    if not listing.ok:
        raise DjshipError(f"cannot list {target}{_on(connector)}: {_last_line(listing)}; check that directory")
    present = set(listing.stdout.split())
    copied = 0
    for wheel in wheelhouse.wheels:
        if wheel.name in present or (projects is not None and wheel_project(wheel.name) not in {*projects, PIP}):
            continue
        connector.put(target / wheel.name, wheel.read_bytes(), mode=0o644)
        copied += 1
    return HostWheels(target, _unpack_pip(connector, python, target / wheelhouse.pip.name), copied)


def _unpack_pip(connector: Connector, python: str, wheel: Path) -> Path:
    """The pip of that wheel on the host, unpacked beside the wheelhouses once (its name fixes its content);
    `python <this path> install` runs it, as `python pip.whl/pip` would (pip's __main__ allows both), but its
    modules are compiled once rather than at every run from the zip."""
    unpacked = wheel.parent.parent / wheel.stem
    if connector.run(["test", "-d", str(unpacked)]).ok:
        return unpacked / PIP
    where = _on(connector)
    partial = unpacked.with_name(f".{wheel.stem}.partial")
    _checked(connector, ["rm", "-rf", "--", str(partial)], f"removing {partial}{where}")
    _checked(connector, [python, "-m", "zipfile", "-e", str(wheel), str(partial)], f"unpacking {wheel}{where}")
    _checked(connector, ["mv", "-T", "--", str(partial), str(unpacked)], f"moving {partial} to {unpacked}{where}")
    return unpacked / PIP


def unpack_code(connector: Connector, archive: bytes, destination: Path, owner: str | None = None) -> None:
    """Unpack archive (from pack_code) into destination, which must not exist yet; owner then owns the tree."""
    where = _on(connector)
    _checked(connector, ["mkdir", "-p", "--", str(destination.parent)], f"creating {destination.parent}{where}")
    made = connector.run(["mkdir", "--", str(destination)])
    if not made.ok:
        if connector.run(["test", "-e", str(destination)]).ok:
            raise DjshipError(
                f"{destination}{where} already exists; code is only unpacked into a new directory, so remove it "
                "or unpack into another one"
            )
        raise DjshipError(f"creating {destination}{where} failed: {_last_line(made)}")
    temporary = destination.parent / f".{destination.name}.tar.gz.djship-tmp"
    try:
        connector.put(temporary, archive, mode=0o600)
        _checked(
            connector, ["tar", "-xzf", str(temporary), "-C", str(destination), "--no-same-owner"],
            f"unpacking the code into {destination}{where}",
        )
        if owner:
            chown = ["chown", "-R", "-h", "--", f"{owner}:", str(destination)]
            _checked(connector, chown, f"chown {owner} {destination}{where}")
    except BaseException:
        _quietly(connector, ["rm", "-rf", "--", str(destination)])
        raise
    finally:
        _quietly(connector, ["rm", "-f", "--", str(temporary)])


def ensure_venv(
    connector: Connector,
    python: str,
    venv: Path,
    wheels: HostWheels,
    requirements: Path | None,
    packages: tuple[str, ...],
    owner: str | None = None,
) -> bool:
    """Make venv on the host from the wheels alone unless a complete one is there; return whether it was made.

    The marker file is written last, and a venv that failed half-way is removed, so venv is either complete or
    absent.
    """
    marker = venv / COMPLETE_MARKER
    if connector.run(["test", "-f", str(marker)]).ok:
        return False
    where = _on(connector)
    _checked(connector, ["rm", "-rf", "--", str(venv)], f"removing the unfinished virtualenv {venv}{where}")
    create, install = offline_install_command(python, venv, wheels, requirements, packages)
    try:
        _checked(connector, create, f"creating the virtualenv {venv}{where}")
        _checked(connector, install, f"installing the requirements from {wheels.dir} into {venv}{where}")
        if owner:
            _checked(connector, ["chown", "-R", "-h", "--", f"{owner}:", str(venv)], f"chown {owner} {venv}{where}")
        connector.put(marker, "", mode=0o644)
    except BaseException:
        _quietly(connector, ["rm", "-rf", "--", str(venv)])
        raise
    return True


def install_into(connector: Connector, venv: Path, wheels: HostWheels, packages: tuple[str, ...]) -> bool:
    """Add packages to a complete venv from the wheels alone, unless it has them already; whether it installed."""
    marker = venv / ".djship-packages"
    wanted = "\n".join(packages) + "\n"
    if connector.get(marker) == wanted.encode():
        return False
    install = offline_install_command("", venv, wheels, None, packages)[1]  # into the venv that is there
    _checked(connector, install, f"installing {', '.join(packages)} into {venv}{_on(connector)}")
    connector.put(marker, wanted, mode=0o644)
    return True


def ship_package(connector: Connector, venv: Path, python: tuple[int, int], package: Path) -> bool:
    """Copy a pure-Python package (djship itself) into venv's site-packages unless the same files are there;
    whether it copied. Its source may be an installed package or a checkout, so it travels as files, not a wheel."""
    archive = pack_code(package, ("__pycache__",), package / "__pycache__")
    digest = hashlib.sha256(archive).hexdigest()
    destination = venv / "lib" / f"python{_dotted(python)}" / "site-packages" / package.name
    marker = destination / COMPLETE_MARKER
    if connector.get(marker) == digest.encode():
        return False
    _checked(connector, ["rm", "-rf", "--", str(destination)], f"removing the old {destination}{_on(connector)}")
    unpack_code(connector, archive, destination)
    connector.put(marker, digest, mode=0o644)
    return True


# ---- helpers ------------------------------------------------------------------------------------------------------


def _on(connector: Connector) -> str:
    target = getattr(connector, "target", None)
    address = getattr(target, "address", None)
    return f" on {address}" if address else ""


def _last_line(result: Result) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1].strip() if lines else f"exit code {result.returncode}"


def _checked(connector: Connector, argv: list[str], what: str) -> Result:
    result = connector.run(argv)
    if not result.ok:
        raise DjshipError(f"{what} failed: {_last_line(result)}")
    return result


def _quietly(connector: Connector, argv: list[str]) -> None:
    """A clean-up step that must not hide the error that made it necessary."""
    with contextlib.suppress(Exception):
        connector.run(argv)


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"
