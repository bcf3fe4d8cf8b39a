"""One release pipeline with two sources: a release is built once and installed on every app and worker host at once.

A host that installs from "project" (the control machine's own host) copies the project and installs the
requirements online (uv); a host that installs from "wheels" gets the code archive packed once here and the wheels
built once here, and installs offline (pip --no-index). Either way each app host ends with the same
releases/<id>/ (code, virtualenv, settings, static files) and a release.json that says it is complete.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from functools import cached_property
from importlib import metadata
from pathlib import Path

import djship
from djship.connectors import on_each
from djship.connectors.local import LocalConnector
from djship.deploy import shipping
from djship.deploy.release import Release, ReleaseBuilder, new_release_id, runtime_packages
from djship.errors import DjshipError
from djship.plan import Plan
from djship.progress import Reporter
from djship.topology import Host, Topology

SUPERVISOR_PACKAGE = "supervisor>=4.2"
SUPERVISOR_PROJECT = "supervisor"
"""Its wheel's name: it needs no other, so a host that runs no code gets that wheel alone."""


def wheel_packages(plan: Plan) -> tuple[str, ...]:
    """What the wheelhouse holds beside the project's requirements: the release's runtime and the supervisor."""
    return (*runtime_packages(plan), SUPERVISOR_PACKAGE)


# A host's name, and what to run with the release id once that host's copy of a new release passed its check.
Checked = tuple[str, Callable[[str], None]]
# What djship.agent imports, at the versions djship itself requires.
AGENT_DEPENDENCIES = ("pydantic", "cryptography", "tomlkit", "acme", "josepy")
AGENT_REQUIREMENTS = "".join(
    f"{requirement}\n" for requirement in metadata.requires("djship") or ()
    if re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower() in AGENT_DEPENDENCIES and ";" not in requirement
)


class Pipeline:
    def __init__(self, topology: Topology, reporter: Reporter):
        self.topology = topology
        self.control = topology.control
        self.reporter = reporter
        self.hosts = {host.name: host for host in topology.running_code() if host.name not in topology.unreachable}
        """Where releases are installed: every host that runs the app's code."""
        self.plan = next(iter(topology.holding("app"))).plan

    @property
    def offline(self) -> bool:
        """Whether any host installs from the wheels built here."""
        return any(host.installs == "wheels" for host in self.topology.hosts.values())

    @cached_property
    def wheelhouse(self) -> shipping.Wheelhouse:
        with self.reporter.step(f"Wheels for {self.plan.requirements.name} and djship's runtime (built here, once)"):
            return shipping.build_wheelhouse(
                self.plan.requirements, wheel_packages(self.plan), self._build_python(),
                self.control.state / "wheelhouse", LocalConnector(), self.control.logs / "wheels.log",
            )

    def _build_python(self) -> str:
        """A Python on this machine of the app hosts' version: the wheels it builds are the ones they install."""
        version = ".".join(map(str, sys.version_info[:2]))
        wanted = self.topology.app_python
        if version == wanted:
            return sys.executable
        candidate = shutil.which(f"python{wanted}")
        if candidate:
            return candidate
        raise DjshipError(
            f"the app hosts run Python {wanted} but djship runs on Python {version} here, and there is no "
            f"python{wanted} on this machine to build their wheels with; install python{wanted} here"
        )

    def prepare(self) -> None:
        """Build here, once, what the hosts install from (the wheels), before they all ask for it at once."""
        if self.offline:
            self.wheelhouse  # noqa: B018 (cached: built now, not in every host's thread)

    @cached_property
    def agent_wheelhouse(self) -> shipping.Wheelhouse:
        requirements = self.control.state / "agent-requirements.txt"
        requirements.write_text(AGENT_REQUIREMENTS)
        with self.reporter.step("Wheels for djship's own program on the hosts (built here, once)"):
            return shipping.build_wheelhouse(
                requirements, (), self._build_python(), self.control.state / "wheelhouse", LocalConnector(),
                self.control.logs / "wheels.log",
            )

    def prepare_supervisor(self, host: Host) -> None:
        """djship's virtualenv on a host that installs from wheels (elsewhere djship's own Python runs it): the
        supervisor, and djship itself where djship's own program runs (the renewal timer, the daily backup)."""
        if host.installs != "wheels":
            return
        plan, connector = host.plan, host.connector
        venv = plan.paths.state / "venv"
        only = None if host.name in self.hosts else frozenset({SUPERVISOR_PROJECT})
        wheels = shipping.upload_wheelhouse(connector, self.wheelhouse, plan.paths.wheels, host.python, only)
        shipping.ensure_venv(connector, host.python, venv, wheels, None, (SUPERVISOR_PACKAGE,))
        if plan.runs_agent:
            wheelhouse = self.agent_wheelhouse
            agent_wheels = shipping.upload_wheelhouse(connector, wheelhouse, plan.paths.wheels, host.python)
            shipping.install_into(connector, venv, agent_wheels, tuple(AGENT_REQUIREMENTS.split()))
            shipping.ship_package(connector, venv, wheelhouse.python, Path(djship.__file__).parent)

    def on(self, host: Host, release_id: str) -> Release:
        """The release as it lies on that host."""
        return Release(release_id, host.plan.paths.releases / release_id)

    def _archive(self, release_id: str) -> Path:
        return self.control.releases / release_id / "code.tar.gz"

    def build(self, checked: Checked | None = None) -> Release:
        """A new release, installed on every host that runs the app's code; on failure nothing of it is left anywhere.

        checked: (host name, action) to run with the release id once that host's copy passed its check, while its
        static files are still collected (the migration); a failure of it fails the build."""
        release_id = new_release_id(self.control.releases)
        if self.offline:
            archive = self._archive(release_id)
            with self.reporter.step(f"Packing the project code as release {release_id}"):
                archive.parent.mkdir(parents=True, exist_ok=True)
                archive.write_bytes(shipping.pack_code(self.plan.project_dir, self.plan.exclude, self.control.state))
                (archive.parent / "release.json").write_text(json.dumps(
                    {"id": release_id, "created": time.time(), "wheelhouse": self.wheelhouse.key}) + "\n")
        try:
            self.ship(release_id, list(self.hosts.values()), checked)
        except BaseException:
            self.discard(release_id)
            raise
        return Release(release_id, self.control.releases / release_id)

    def ship(self, release_id: str, hosts: list[Host], checked: Checked | None = None) -> None:
        def install(host: Host) -> None:
            then = (lambda: checked[1](release_id)) if checked and checked[0] == host.name else None
            self._install(host, release_id, then)

        if len(hosts) > 1:
            with self.reporter.step(f"Installing release {release_id} on {len(hosts)} hosts at once"):
                on_each({host.name: host for host in hosts}, install)
        else:
            on_each({host.name: host for host in hosts}, install)

    def installed(self, host: Host, release_id: str) -> bool:
        return host.connector.get(self.on(host, release_id).dir / "release.json") is not None

    def _install(self, host: Host, release_id: str, checked: Callable[[], None] | None) -> None:
        if self.installed(host, release_id):
            return
        if host.installs == "project":
            ReleaseBuilder(host.plan, host.connector, self.reporter).build(release_id, checked)
        else:
            self._install_wheels(host, release_id, checked)

    def _install_wheels(self, host: Host, release_id: str, checked: Callable[[], None] | None) -> None:
        plan, connector = host.plan, host.connector
        release = self.on(host, release_id)
        builder = ReleaseBuilder(plan, connector, self.reporter, log_dir=self.control.logs / host.name)
        wheelhouse = self.wheelhouse
        try:
            shipping.require_python(connector, host.python, wheelhouse)
            wheels = shipping.upload_wheelhouse(connector, wheelhouse, plan.paths.wheels, host.python)
            archive = self._archive(release_id)
            if not archive.is_file() and not self._archive_from_hosts(release_id):
                raise DjshipError(f"release {release_id}'s code archive {archive} is gone, so {host.name} cannot get "
                                  "the release the others run; run `djship deploy` to ship a new one to every host")
            shipping.unpack_code(connector, archive.read_bytes(), release.app)
            venv = plan.paths.venvs / wheelhouse.key
            requirements = release.dir / "requirements.txt"  # the file the wheels were built from, wherever it lives
            connector.put(requirements, plan.requirements.read_bytes())
            shipping.ensure_venv(connector, host.python, venv, wheels, requirements, runtime_packages(plan))
            connector.symlink(release.venv, venv)
            builder.finish(release, where=f" on {host.name}", checked=checked)
        except BaseException:
            connector.run(["rm", "-rf", "--", str(release.dir)])
            raise

    def _archive_from_hosts(self, release_id: str) -> bool:
        """Pack a release's code again from a host that has it (this machine lost its archive); whether it could."""
        for host in self.hosts.values():
            if not self.installed(host, release_id):
                continue
            packed = host.plan.paths.state / f".code-{release_id}.tar.gz"
            made = host.connector.run(["tar", "-czf", str(packed), "-C", str(self.on(host, release_id).app), "."])
            content = host.connector.get(packed) if made.ok else None
            host.connector.run(["rm", "-f", "--", str(packed)])
            if content:
                archive = self._archive(release_id)
                archive.parent.mkdir(parents=True, exist_ok=True)
                archive.write_bytes(content)
                return True
        return False

    def discard(self, release_id: str) -> None:
        on_each(self.hosts, lambda host: host.connector.run(["rm", "-rf", "--", str(self.on(host, release_id).dir)]))
        shutil.rmtree(self.control.releases / release_id, ignore_errors=True)

    def listed(self) -> list[str]:
        """The ids of the releases complete on the first host that answers, oldest first."""
        for host in self.hosts.values():
            names = host.connector.listdir(host.plan.paths.releases) or []
            return [name for name in names if self.installed(host, name)]
        return []
