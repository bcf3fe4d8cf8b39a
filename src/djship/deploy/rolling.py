"""Changing a running system without failing a request: deploy, rollback and scale.

Every change of an app server goes drain -> wait for in-flight requests -> change -> health check through
nginx and gunicorn -> back into rotation, a batch of servers at a time (the batch's hosts at once), so the
others keep serving. A server whose new release does not pass its health check goes back to the release it ran,
with the rest of its batch, and the change stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from djship.config import CONFIG_FILE, parse_config, with_values
from djship.connectors import on_each
from djship.deploy.lock import exclusive
from djship.deploy.release import Release
from djship.errors import DjshipError
from djship.plan import REDIS_URL, AppServer
from djship.system import System
from djship.topology import open_topology


def _batches(servers: tuple[AppServer, ...], size: int) -> list[tuple[AppServer, ...]]:
    return [servers[start : start + size] for start in range(0, len(servers), size)]


def _on_their_hosts(servers: tuple[AppServer, ...], apply: Callable[[AppServer], None]) -> None:
    """apply to every server at once, but to a host's own servers one after another: a change may write a file they
    share (the app's environment). When any fail, one error names each and its reason."""
    locks = {server.host: threading.Lock() for server in servers}

    def alone_on_its_host(server: AppServer) -> None:
        with locks[server.host]:
            apply(server)

    on_each({server.name: server for server in servers}, alone_on_its_host)


def _names(servers: tuple[AppServer, ...]) -> str:
    return ", ".join(server.name for server in servers)


@dataclass(frozen=True)
class EnvChange:
    """What `djship env set`, `unset` or `import` changed."""

    names: tuple[str, ...]
    """The secrets set to a new value or removed; empty when every value was already so."""
    restarted: tuple[str, ...]
    """The app servers restarted with them, a batch at a time, then the processes of [processes]."""
    serving: bool
    """Whether the system runs (else the secrets reach the hosts with the next `djship up`)."""


class Rollout:
    """Deploy, rollback, scale and the rolling switch: the same steps on one machine and on many hosts."""

    def __init__(self, system: System):
        self.system = system
        self.plan = system.plan
        self.reporter = system.reporter

    @contextmanager
    def locked(self, operation: str) -> Iterator[Release]:
        """Refuse at once when nothing was brought up, then hold the deploy lock; yields the live release."""
        if self.system.current() is None:
            self.system.live_release()  # raises, saying so
        with exclusive(self.system.lock_file, operation):
            yield self.system.live_release()

    def deploy(self) -> Release:
        with self.locked("deploy") as live:
            try:
                release = self.system.build_release()  # migrated too
            except DjshipError as error:
                raise DjshipError(f"{error}; release {live.id} keeps serving") from None
            try:
                self._switch(release)
            except DjshipError as error:
                self.system.discard_release(release)
                raise DjshipError(f"{error}; release {live.id} keeps serving") from None
            self.system.restart_processes(release)
            self._prune()
            return release

    def rollback(self, release_id: str | None) -> Release:
        with self.locked("rollback") as live:
            releases = self.system.releases()
            if release_id is None:
                older = [release for release in releases if release.id < live.id]
                if not older:
                    raise DjshipError(f"there is no release before {live.id} to roll back to")
                target = older[-1]
            else:
                matches = [release for release in releases if release.id == release_id]
                if not matches:
                    known = ", ".join(release.id for release in releases)
                    raise DjshipError(f"no release {release_id!r}; `djship releases` lists them: {known}")
                target = matches[0]
            self.system.require_interface(next(iter(self.system.app_hosts.values())), target, "release",
                                          "roll back to a release built for ASGI, or set app.interface = \"wsgi\" "
                                          "and run `djship up` first")
            if target.id == live.id and all(getattr(self.system.release_of(s), "id", None) == live.id
                                            for s in self.plan.app_servers):
                raise DjshipError(f"release {live.id} is already live")
            try:
                self._switch(target)
            except DjshipError as error:
                raise DjshipError(f"{error}; release {live.id} keeps serving") from None
            self.system.restart_processes(target)
            return target

    def _switch(self, target: Release) -> None:
        previous = {server.name: self.system.release_of(server) or target for server in self.plan.app_servers}
        self.roll(
            f"release {target.id}",
            lambda server: self.system.run_release(server, target),
            lambda server: self.system.run_release(server, previous[server.name]),
        )
        self.system.set_current(target)

    def roll(self, what: str, apply: Callable[[AppServer], None], revert: Callable[[AppServer], None]) -> None:
        """Apply a change to every app server, a batch at a time: drain -> apply (which restarts and health-checks)
        -> back into rotation. When a server fails, its batch and every batch switched before it are reverted,
        each out of rotation again, so no server is left on the change; raises "<what> failed on appN: ...".
        """
        done: list[tuple[AppServer, ...]] = []
        for batch in _batches(self.plan.app_servers, self.plan.batch_size):
            try:
                self._switch_batch(batch, what, apply, revert)
            except DjshipError:
                for earlier in reversed(done):
                    with self.system.out_of_rotation(earlier):
                        with self.reporter.step(f"Returning {_names(earlier)} to how they were"):
                            for server in earlier:
                                revert(server)
                raise
            done.append(batch)

    def _switch_batch(
        self, batch: tuple[AppServer, ...], what: str, apply: Callable[[AppServer], None],
        revert: Callable[[AppServer], None],
    ) -> None:
        """The batch out of rotation, its servers changed host by host at once (each restarted and health-checked);
        when any fails, every one of them returns to how it was before the error is raised."""
        failure = None
        with self.system.out_of_rotation(batch):
            try:
                with self.reporter.step(f"Restarting {_names(batch)} on {what} and checking "
                                        f"{'its' if len(batch) == 1 else 'their'} health"):
                    _on_their_hosts(batch, apply)
            except DjshipError as error:
                failure = f"{what} failed on {error}"
                with self.reporter.step(f"Returning {_names(batch)} to how they were"):
                    for server in batch:
                        revert(server)
        if failure:
            raise DjshipError(failure)

    def change_env(self, values: dict[str, str], removed: tuple[str, ...], restart: bool) -> EnvChange:
        """Set (values) and remove (removed) secrets of the app's environment. On a running system every app host gets
        them and, unless restart is False, each app server restarts with them a batch at a time, like a deploy (a server
        that then fails its health check goes back to the previous secrets, and so does every server before it), then
        the processes of [processes], gracefully."""
        system = self.system
        with exclusive(system.lock_file, "env"):
            before = system.env_secrets()
            in_config = {name for name, _ in self.plan.env}
            if self.plan.redis and REDIS_URL in values:
                raise DjshipError(f"{REDIS_URL} is set by djship from [redis] (with its password); remove [redis] "
                                  "from djship.toml to use another Redis")
            clash = next((name for name in values if name in in_config), None)
            if clash:
                raise DjshipError(f"{clash} is a plain value in [env] of djship.toml; remove it there to keep it as a "
                                  "secret, or choose another name")
            unknown = next((name for name in removed if name not in before), None)
            if unknown:
                raise DjshipError(f"there is no secret {unknown}; `djship env list` shows them"
                                  + (" (it is set in [env] of djship.toml: remove it there)" if unknown in in_config
                                     else ""))
            after = {**{name: value for name, value in before.items() if name not in removed}, **values}
            names = tuple(sorted(name for name in {*before, *after} if before.get(name) != after.get(name)))
            serving = system.serving()
            if not names:
                return EnvChange((), (), serving)
            if serving and restart:
                def use(secrets: dict[str, str]) -> Callable[[AppServer], None]:
                    def apply(server: AppServer) -> None:
                        system.give_env_secrets(system.host_of(server), secrets)
                        system.restart_app(server, system.release_of(server))
                    return apply

                self.roll("the new environment", use(after), use(before))
                system.restart_processes(system.current())
            elif serving:
                on_each(system.code_hosts, lambda host: system.give_env_secrets(host, after))
            system.keep_env_secrets(after)
            restarted = (*(server.name for server in self.plan.app_servers), *system.programs_beside_web)
            restarted = restarted if serving and restart else ()
            return EnvChange(names, restarted, serving)

    def _prune(self) -> None:
        removed = self.system.prune_releases()
        if removed:
            self.reporter.note(f"Removed old releases {', '.join(removed)} (keeping {self.plan.keep_releases})")

    def scale(self, count: int) -> int:
        """Run COUNT app servers on each app host, adding or removing them while serving (through `up`'s
        convergence); returns how many there were per host."""
        with self.locked("scale"):
            config_path = self.plan.project_dir / CONFIG_FILE
            original = config_path.read_text(encoding="utf-8")
            text = with_values(original, {"app.servers": count})
            before = len(self.plan.servers_here) or len(self.plan.app_servers)
            if count == before:
                return before
            scaled = System(open_topology(parse_config(text, str(config_path)), self.plan.project_dir, self.reporter),
                            self.reporter)
            config_path.write_text(text, encoding="utf-8")
            try:
                scaled.converge()
            except DjshipError as error:
                with self.reporter.step(f"Going back to {before} app servers per host"):
                    config_path.write_text(original, encoding="utf-8")
                    try:
                        self.system.converge()
                    except DjshipError as undo:
                        raise DjshipError(f"{error} (going back to {before} app servers per host failed too: {undo})") from None
                raise
            finally:
                scaled.close()
            return before


def release_table(system: System) -> list[dict]:
    live = system.current()
    servers_on: dict[str, list[str]] = {}
    for server in system.plan.app_servers:
        release = system.release_of(server)
        if release is not None:
            servers_on.setdefault(release.id, []).append(server.name)
    return [
        {
            "id": release.id,
            "live": live is not None and release.id == live.id,
            "servers": servers_on.get(release.id, []),
            "path": str(release.dir),
        }
        for release in system.releases()
    ]
