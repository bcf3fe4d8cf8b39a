"""A release: the project's code, a virtualenv with its requirements, production settings and static files.

releases/<id>/app       a copy of the project tree (the user's project itself is never edited)
releases/<id>/venv      -> venvs/<hash>, shared by every release with the same requirements and Python
releases/<id>/djship_production/   the generated settings package
releases/<id>/static    collectstatic output, served by nginx
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.resources
import json
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from djship import render
from djship.connectors import Connector, Result
from djship.deploy import static
from djship.errors import DjshipError
from djship.logfile import append_result
from djship.plan import DIRECT_DATABASE, Plan, release_environment
from djship.progress import Reporter

RUNTIME_PACKAGES = ("gunicorn>=23", "psycopg[binary]>=3.1")
# With app.interface = "asgi": gunicorn's uvicorn worker, and uvicorn with what its docs install for production
# (uvloop, httptools, and websockets for the WebSocket protocol).
ASGI_PACKAGES = ("uvicorn-worker>=0.4", "uvicorn[standard]>=0.36")
# The runtime modules every release's djship_production package gets, and those only ASGI releases need.
RUNTIME_MODULES = ("middleware.py", "migrate.py", "jobs.py")
ASGI_MODULES = ("asgi.py", "asgi_worker.py")
COMPLETE_MARKER = ".djship-complete"


@dataclass(frozen=True)
class Release:
    id: str
    dir: Path

    @classmethod
    def at(cls, directory: Path) -> Release:
        return cls(directory.name, directory)

    @property
    def app(self) -> Path:
        return self.dir / "app"

    @property
    def venv(self) -> Path:
        return self.dir / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def static(self) -> Path:
        return self.dir / "static"

    @property
    def asgi_worker(self) -> Path:
        """There only in a release built for app.interface = "asgi" (whose virtualenv has uvicorn)."""
        return self.dir / "djship_production" / ASGI_MODULES[1]

    def environment(self) -> dict[str, str]:
        return {**release_environment(self.dir), "PYTHONDONTWRITEBYTECODE": "1"}


def new_release_id(releases: Path) -> str:
    base = time.strftime("%Y%m%d-%H%M%S")
    candidate, suffix = base, 1
    while (releases / candidate).exists():
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate


def _ignore(plan: Plan):
    state = plan.paths.state

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in plan.exclude)}
        skipped |= {name for name in names if Path(directory, name) == state}
        return skipped

    return ignore


def runtime_packages(plan: Plan) -> tuple[str, ...]:
    """What djship adds to the release's virtualenv beside the project's requirements."""
    return (*RUNTIME_PACKAGES, *ASGI_PACKAGES) if plan.asgi else RUNTIME_PACKAGES


def _venv_key(plan: Plan, python: str) -> str:
    try:
        requirements = plan.requirements.read_bytes()
    except OSError as error:
        raise DjshipError(f"cannot read requirements file {plan.requirements}: {error.strerror}") from None
    digest = hashlib.sha256(requirements)
    digest.update(python.encode())
    digest.update("\n".join(runtime_packages(plan)).encode())
    return digest.hexdigest()[:16]


def _uv() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return None


class ReleaseBuilder:
    def __init__(self, plan: Plan, connector: Connector, reporter: Reporter, log_dir: Path | None = None):
        """log_dir: where the output of every step goes, on this machine (default: the plan's logs directory)."""
        self.plan = plan
        self.connector = connector
        self.reporter = reporter
        self.log_dir = log_dir or plan.paths.logs

    def _log(self, release_id: str) -> Path:
        return self.log_dir / f"release-{release_id}.log"

    def _run(self, release_id: str, what: str, argv: list[str], **kwargs) -> Result:
        result = self.connector.run(argv, **kwargs)
        append_result(self._log(release_id), result)
        if not result.ok:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            reason = lines[-1] if lines else f"exit code {result.returncode}"
            raise DjshipError(f"{what} failed: {reason} (full output in {self._log(release_id)})")
        return result

    def build(self, release_id: str, checked: Callable[[], None] | None = None) -> Release:
        """The release from the project directory itself, its requirements installed online."""
        plan = self.plan
        release = Release(release_id, plan.paths.releases / release_id)
        self.connector.makedirs(plan.paths.logs)
        try:
            with self.reporter.step(f"Copying project code into release {release.id}"):
                shutil.copytree(plan.project_dir, release.app, ignore=_ignore(plan), symlinks=True)
            venv = self._ensure_venv(release.id)
            release.venv.symlink_to(venv)
            self.finish(release, checked=checked)
        except BaseException:
            shutil.rmtree(release.dir, ignore_errors=True)
            raise
        return release

    def finish(self, release: Release, where: str = "", checked: Callable[[], None] | None = None) -> None:
        """Settings, check --deploy, collectstatic, then release.json: the release is complete.

        checked: run once the check passed, while the static files are still collected (the migration)."""
        self.write_settings(release)
        self.connector.makedirs(release.static, owner=self.plan.user_of("app"))
        # Neither the check nor collectstatic writes anything the other reads, so they run at once; the check's
        # error, when both fail, is the one that explains.
        with self.reporter.step(f"Checking the project (manage.py check --deploy) and collecting its static files{where}"):
            with ThreadPoolExecutor(max_workers=1) as pool:
                collecting = pool.submit(self._collect_static, release, where)
                self.manage(release, "check", "--deploy", "--fail-level", "WARNING", what=f"manage.py check --deploy{where}")
                if checked is not None:
                    checked()
                collecting.result()
        self.connector.put(release.dir / "release.json", json.dumps(
            {"id": release.id, "created": time.time(), "source": str(self.plan.project_dir)}) + "\n")

    def _collect_static(self, release: Release, where: str) -> None:
        self.manage(release, "collectstatic", "--noinput", what=f"collectstatic{where}")
        static.publish(self.connector, release.python, self.plan.paths.releases, self.plan.paths.shared_static,
                       self.plan.user_of("app"))

    def manage(self, release: Release, *args: str, what: str) -> Result:
        return self._python(release, str(release.app / "manage.py"), *args, what=what)

    def migrate(self, release: Release, live_file: Path | None = None) -> Result:
        """Migrate once, under a PostgreSQL advisory lock, before any app server runs this release.

        live_file: migrate the database that file names instead of the live one (a restore, before it switches).
        """
        environment = {"DJSHIP_LIVE_FILE": str(live_file)} if live_file else {}
        environment[DIRECT_DATABASE] = "1"  # its advisory lock needs a session of its own, not a pooled one
        return self._python(release, "-m", "djship_production.migrate", what="manage.py migrate", environment=environment)

    def _python(self, release: Release, *args: str, what: str, environment: dict[str, str] | None = None) -> Result:
        return self._run(
            release.id, what, render.with_app_environment(self.plan, [str(release.python), *args]),
            user=self.plan.user_of("app"), env={**release.environment(), **(environment or {})}, cwd=release.app,
        )

    def _interpreter(self) -> str:
        """The Python for the release: the configured one, else this one if the app's user can run it."""
        plan = self.plan
        candidates = [plan.python] if plan.python else [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
        check = "import sys; sys.exit(sys.version_info < (3, 10))"
        for candidate in candidates:
            if shutil.which(candidate) and self.connector.run([candidate, "-c", check], user=plan.user_of("app")).ok:
                return shutil.which(candidate)
        app_user = plan.user_of("app")
        who = f"user {app_user}" if app_user else "this user"
        raise DjshipError(
            f"no Python >= 3.10 that {who} can run among {', '.join(candidates)}; "
            "set project.python in djship.toml to one (e.g. /usr/bin/python3)"
        )

    def _ensure_venv(self, release_id: str) -> Path:
        python = self._interpreter()
        venv = self.plan.paths.venvs / _venv_key(self.plan, python)
        if (venv / COMPLETE_MARKER).exists():
            self.reporter.note(f"Reusing virtualenv {venv.name} (requirements unchanged)")
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        requirements = str(self.plan.requirements)
        packages = runtime_packages(self.plan)
        uv = _uv()
        with self.reporter.step(f"Installing requirements into a new virtualenv ({'uv' if uv else 'pip'})"):
            try:
                if uv:
                    self._run(release_id, "creating the virtualenv", [uv, "venv", "--quiet", "--python", python, str(venv)])
                    self._run(
                        release_id, "installing requirements",
                        # Compiled now: the app servers' users cannot write the virtualenv, so without .pyc files
                        # every worker compiled Django at every start (2 app servers up: 4.6 s -> 1.x s).
                        [uv, "pip", "install", "--compile-bytecode", "--python", str(venv / "bin/python"), "-r",
                         requirements, *packages],
                    )
                else:
                    self._run(release_id, "creating the virtualenv", [python, "-m", "venv", str(venv)])
                    self._run(
                        release_id, "installing requirements",
                        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-r", requirements, *packages],
                    )
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)
                raise
        (venv / COMPLETE_MARKER).write_text("")
        return venv

    def write_settings(self, release: Release) -> None:
        package = release.dir / "djship_production"
        runtime = importlib.resources.files("djship.runtime")
        self.connector.put(package / "__init__.py", "")
        for module in (*RUNTIME_MODULES, *(ASGI_MODULES if self.plan.asgi else ())):
            self.connector.put(package / module, runtime.joinpath(module).read_text())
        self.connector.put(package / "settings.py", render.production_settings(self.plan, release.id, release.dir))
