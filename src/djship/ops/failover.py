"""`djship db failover` and `djship db switchover`: the standby becomes the primary, the app servers follow it (a
rolling restart through `up`'s convergence), and the former primary is fenced, then rebuilt as the new standby.

djship.toml's servers.db says which is which (the primary first): both commands swap it, so that no later `up`
ever starts the former primary as a primary again. Neither decides by itself: automatic failover needs a consensus
store (Patroni's), not a guess made from one machine.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import tomlkit

from djship.components.pgbackrest import PgBackRest
from djship.components.replication import Replication, wait_streaming
from djship.config import CONFIG_FILE, Config, parse_config, with_values
from djship.connectors import CommandFailed
from djship.deploy.lock import exclusive
from djship.errors import DjshipError
from djship.system import READY_TIMEOUT, System
from djship.topology import Host, open_topology


@dataclass(frozen=True)
class Takeover:
    primary: str
    former: str
    promoted_after: float
    """Seconds from the command's start (connecting to the hosts included) until the new primary accepted writes."""
    fenced: bool
    """Whether the former primary was reached and fenced on its disk (else `djship up` does it when it is back)."""
    seconds: float


def without_host(text: str, name: str, primary: str) -> str:
    """djship.toml's text for a run that goes on without the db host name: servers.db = [primary] alone (no
    standby, so no synchronous commit to wait for) and no [hosts.name]."""
    document = tomlkit.parse(with_values(text, {"servers.db": [primary]}))
    document["hosts"].pop(name, None)  # type: ignore[union-attr]
    database = document.get("database")
    if database is not None:
        database.pop("synchronous", None)  # type: ignore[union-attr]
    return tomlkit.dumps(document)


class DatabaseSwitch:
    def __init__(self, system: System, config: Config):
        servers = config.servers
        if servers is None or servers.standby is None:
            raise DjshipError('servers.db names no standby; list one, e.g. servers.db = ["db1", "db2"], and run '
                              "`djship up`")
        self.system = system
        self.reporter = system.reporter
        self.project_dir = system.plan.project_dir
        self.config_path = self.project_dir / CONFIG_FILE
        self.primary = system.hosts[servers.primary]
        self.standby = system.hosts[servers.standby]

    def _reachable(self, host: Host) -> bool:
        return host.name not in self.system.topology.unreachable

    def _replication(self, host: Host) -> Replication:
        return self.system.replication(host)

    def _check_standby(self) -> Replication:
        if not self._reachable(self.standby):
            raise DjshipError(f"the standby {self.standby.name} does not answer "
                              f"({self.system.topology.unreachable[self.standby.name]}); nothing was changed")
        replica = self._replication(self.standby)
        if not replica.server.is_ready():
            raise DjshipError(f"the standby's PostgreSQL on {self.standby.name} is not running; nothing was changed")
        if not replica.in_recovery():
            raise DjshipError(f"{self.standby.name} is not a standby (it accepts writes already); servers.db should "
                              f"name it first")
        return replica

    def _converge(self, text: str) -> None:
        """`up`'s convergence for djship.toml's text: the app servers restart one at a time on the new primary."""
        system = System(open_topology(parse_config(text, str(self.config_path)), self.project_dir, self.reporter),
                        self.reporter)
        try:
            system.converge()
        finally:
            system.close()

    def _swap_config(self) -> str:
        original = self.config_path.read_text(encoding="utf-8")
        self.config_path.write_text(with_values(original, {"servers.db": [self.standby.name, self.primary.name]}),
                                    encoding="utf-8")
        self.reporter.note(f"djship.toml: servers.db = [{self.standby.name!r}, {self.primary.name!r}] "
                           f"({self.standby.name} is the primary now)")
        return original

    # -- failover: the primary is gone ----------------------------------------------------------------------------

    def failover(self, started: float) -> Takeover:
        """started: when the command began (time.monotonic()), which the promotion's time counts from."""
        with exclusive(self.system.lock_file, "db failover"):
            replica = self._check_standby()
            fenced = self._fence_dead_primary()
            unarchived = self._keep_unarchived_wal(replica)
            with self.reporter.step(f"Promoting the standby on {self.standby.name}"):
                replica.promote()
            promoted = time.monotonic() - started
            self._push_unarchived_wal(unarchived)
            original = self._swap_config()
            with self.reporter.step(f"Pointing the app servers at {self.standby.name}, one at a time"):
                self._converge(without_host(original, self.primary.name, self.standby.name))
            if not fenced:
                self.reporter.note(f"{self.primary.name} did not answer: once it is back, `djship up` fences its "
                                   f"data directory and rebuilds it as the standby; until then no app server "
                                   f"connects to it")
        return Takeover(self.standby.name, self.primary.name, promoted, fenced, time.monotonic() - started)

    def _keep_unarchived_wal(self, replica: Replication) -> list[str]:
        """With backup.archive: the WAL segments the dead primary had not archived yet (archive_timeout's worth, or
        more while its archive was unreachable) copied out of the standby's pg_wal before the promotion. The standby
        archives nothing while in recovery (archive_mode = on), so without this the archive would have a gap."""
        if not self.standby.plan.mounts_archive:
            return []
        try:
            with self.reporter.step(f"Looking for WAL on {self.standby.name} that {self.primary.name} had not "
                                    "archived yet"):
                return PgBackRest(self.standby.plan, self.standby.connector).keep_unarchived(*replica.replayed())
        except DjshipError as error:
            self.reporter.note(f"the WAL {self.primary.name} had not archived could not be saved ({error}); a "
                               f"restore cannot cross the time of the failover until the next `djship backup`")
            return []

    def _push_unarchived_wal(self, names: list[str]) -> None:
        if not names:
            return
        try:
            with self.reporter.step(f"Archiving {len(names)} WAL segments {self.primary.name} had not archived "
                                    f"({names[0]} to {names[-1]}), from {self.standby.name}"):
                PgBackRest(self.standby.plan, self.standby.connector).push_unarchived(names)
        except DjshipError as error:
            self.reporter.note(f"the WAL {self.primary.name} had not archived could not be pushed ({error}); a "
                               f"restore cannot cross the time of the failover until the next `djship backup`")

    def _fence_dead_primary(self) -> bool:
        """Refuse when the primary still answers (that is a switchover); fence it when its host answers."""
        if not self._reachable(self.primary):
            return False
        old = self._replication(self.primary)
        if old.server.is_ready():
            raise DjshipError(f"the primary on {self.primary.name} still accepts connections; a planned change is "
                              "`djship db switchover`, and a failover is for a primary that is gone")
        with self.reporter.step(f"Fencing the former primary on {self.primary.name}"):
            if self.primary.supervisor.pid() is not None:
                self.primary.supervisor.stop("postgres")
            if old.server.initialized():
                old.fence("failover", self.standby.name)
        return True

    # -- switchover: both answer ----------------------------------------------------------------------------------

    def switchover(self, started: float) -> Takeover:
        with exclusive(self.system.lock_file, "db switchover"):
            replica = self._check_standby()
            if not self._reachable(self.primary):
                raise DjshipError(f"the primary {self.primary.name} does not answer; that is `djship db failover`")
            old = self._replication(self.primary)
            wait_streaming(old, self.standby.plan.database.standby.slot, 10)
            with self.reporter.step(f"Stopping the primary on {self.primary.name} (its last WAL goes to the standby)"):
                self.primary.supervisor.stop("postgres")
                last = self._last_checkpoint(old)
                old.fence_as_standby()
            try:
                with self.reporter.step(f"Waiting for {self.standby.name} to replay up to {last}, then promoting it"):
                    replica.wait_replayed(last, READY_TIMEOUT)
                    replica.promote()
            except BaseException:
                if not replica.in_recovery():
                    raise
                with self.reporter.step(f"Starting {self.primary.name} again as the primary (nothing was promoted)"):
                    old.unfence()
                    self.primary.supervisor.start("postgres")
                raise
            promoted = time.monotonic() - started
            self._swap_config()
            with self.reporter.step(f"Pointing the app servers at {self.standby.name}, one at a time, then starting "
                                    f"{self.primary.name} as its standby"):
                self._converge(self.config_path.read_text(encoding="utf-8"))
        return Takeover(self.standby.name, self.primary.name, promoted, True, time.monotonic() - started)

    def _last_checkpoint(self, old: Replication) -> str:
        """The stopped primary's shutdown checkpoint: once the standby has replayed it, it has every commit."""
        data = old.db.data_dir
        result = old.connector.run([old.plan.tools.pg("pg_controldata"), "-D", str(data)], user=old.plan.user_of("db"),
                                   env={"LC_ALL": "C"})
        if not result.ok:
            raise CommandFailed(f"pg_controldata {data}", result)
        state = re.search(r"^Database cluster state:\s+(.+)$", result.stdout, re.M)
        found = re.search(r"^Latest checkpoint location:\s+(\S+)$", result.stdout, re.M)
        if not state or state[1].strip() != "shut down" or not found:
            raise DjshipError(f"PostgreSQL on {self.primary.name} did not shut down cleanly "
                              f"({state[1] if state else 'unknown state'}); start it again with `djship up`")
        return found[1]
