"""djship's own program on a host, run by the plan the control machine computed for that host (its plan.json).

    python -m djship.agent <plan.json> renew [--force]   an ACME certificate now if due (or always), installed
    python -m djship.agent <plan.json> watch             the renewal timer (the supervised program `renewal`)
    python -m djship.agent <plan.json> follow            on another lb host: the renewer's certificate, installed
    python -m djship.agent <plan.json> backup [--note N] a backup of the live database and media, taken here
    python -m djship.agent <plan.json> archive-backup    with backup.archive: a pgBackRest backup into the archive

The ACME client runs on the renewer (tls.mode = "acme": the first lb host), as root, with that host's files and its
own HAProxy: it lives where the CA's HTTP-01 requests arrive and needs no control machine, which is off when a
certificate falls due. `djship up` and `djship certs renew` run `renew` there through the host's connector.
The other lb hosts run `watch` as followers: every 30 seconds they read the certificate the renewer serves (from a
TLS handshake with it) and install it when it is new and for the site key they hold (the same on every lb host), so
a renewal reaches them with no control machine either. The daily backup (backup.schedule) runs `backup` on the db host, which holds the database and the uploads, for the
same reason; on real hosts it keeps the backups there (backup.daily_dir), on one machine in backup.dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from djship.components.balancer import Balancer, https_probe
from djship.connectors import Connector
from djship.connectors.local import LocalConnector
from djship.errors import DjshipError
from djship.plan import Plan, plan_from_json
from djship.tls import renewal
from djship.tls.certificates import leaf_der, load_chain, same_key
from djship.tls.site import BalancerHost, acme_certificate_is_current, fetch_staple, install, obtain_acme, \
    site_info, staple_due
from djship.waiting import wait_until

if TYPE_CHECKING:  # the agent starts on every timer tick: the backup modules load only for a backup
    from djship.ops.store import Backup, Sources, Store

SERVED_TIMEOUT = 30
# The renewal timer fetches a missing or half-expired OCSP staple at most this often (seconds).
STAPLE_RETRY = 3600
RENEWED, CURRENT = "renewed", "current"
INSTALLED = "installed"
# How often a follower reads the renewer's certificate, and how long one reading may take (seconds).
FOLLOW_INTERVAL = 30
FOLLOW_TIMEOUT = 20


class Renewer:
    """The ACME certificate of this host's balancer: obtained, installed without a reload, recorded."""

    def __init__(self, plan: Plan, connector: Connector, log: Callable[[str], None]):
        self.plan, self.connector, self.log = plan, connector, log
        self.balancer = BalancerHost(connector, Balancer(plan.paths.haproxy_socket))
        self._last_staple_attempt = -STAPLE_RETRY

    def site(self) -> tuple:
        """(the served certificate, whether it is the current ACME one)."""
        info = site_info(self.plan, self.connector)
        return info, acme_certificate_is_current(self.plan, self.connector, info)

    def renew(self) -> None:
        plan = self.plan

        def attempt() -> str:
            bundle = obtain_acme(plan, self.connector, [self.balancer])
            install(plan, [self.balancer], bundle, fetch_staple(plan, self.connector, bundle, self.log))
            self._wait_served(bundle)
            return site_info(plan, self.connector).serial

        renewal.attempt(plan, self.connector, attempt)

    def renew_if_due(self, force: bool) -> bool:
        if not force and self.site()[1]:
            return False
        self.renew()
        return True

    def watch(self) -> None:
        renewal.watch(self.plan, self.connector, self.site, self.renew, self.log, maintain=self._refresh_staple)

    def _wait_served(self, bundle: bytes) -> None:
        """Until a TLS handshake with this balancer presents the new certificate."""
        plan, leaf = self.plan, leaf_der(bundle)
        address = "127.0.0.1" if plan.balancer_bind == "0.0.0.0" else plan.balancer_bind

        def served() -> tuple[bool, str]:
            answered = https_probe(address, plan.https_port, plan.domains[0], plan.health_path, leaf)
            return answered is not None, f"the balancer on {address}:{plan.https_port} still serves the old certificate"

        wait_until("the new certificate", served, SERVED_TIMEOUT, "see the haproxy log")

    def _refresh_staple(self) -> None:
        plan, connector = self.plan, self.connector
        if not staple_due(plan, connector) or time.monotonic() - self._last_staple_attempt < STAPLE_RETRY:
            return
        self._last_staple_attempt = time.monotonic()
        bundle = connector.get(plan.paths.site_pem)
        staple = fetch_staple(plan, connector, bundle, self.log)
        if staple != connector.get(plan.paths.site_ocsp):
            install(plan, [self.balancer], bundle, staple)
            self.log("OCSP response for stapling " + ("refreshed" if staple else "removed"))


class Follower:
    """The renewer's ACME certificate on this lb host, installed with the site key every lb host holds."""

    def __init__(self, plan: Plan, connector: Connector, log: Callable[[str], None]):
        self.plan, self.connector, self.log = plan, connector, log
        self.balancer = BalancerHost(connector, Balancer(plan.paths.haproxy_socket))

    def _renewers_chain(self) -> bytes:
        """The certificates the renewer's TLS handshake presents for the first domain, as PEM."""
        plan = self.plan
        endpoint = f"{plan.tls.renewer_address}:{plan.https_port}"
        result = self.connector.run(["openssl", "s_client", "-connect", endpoint, "-servername", plan.domains[0],
                                     "-showcerts"], input="", timeout=FOLLOW_TIMEOUT)
        chain = load_chain(result.stdout.encode())
        if not chain:
            raise DjshipError(f"the renewer {plan.tls.renewer} ({endpoint}) presented no certificate: "
                              + (result.stderr.strip().splitlines() or ["no answer"])[-1])
        return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in chain)

    def follow(self) -> bool:
        """Install the renewer's certificate if it is not the one served here; whether it did."""
        plan, connector = self.plan, self.connector
        chain = self._renewers_chain()
        served = connector.get(plan.paths.site_pem)
        if served and load_chain(served) and leaf_der(served) == leaf_der(chain):
            return False
        key = connector.get(plan.paths.acme_site_key)
        if key is None:
            raise DjshipError(f"{plan.paths.acme_site_key} is missing; run `djship up` from the control machine")
        if not same_key(chain, key):  # the placeholder the renewer starts with, or a certificate not for our key
            raise DjshipError(f"the renewer {plan.tls.renewer} does not serve a certificate for the site key yet")
        bundle = chain + key
        install(plan, [self.balancer], bundle, fetch_staple(plan, connector, bundle, self.log))
        self.log(f"installed the renewer's certificate (serial {site_info(plan, connector).serial})")
        return True

    def watch(self) -> None:
        while True:
            try:
                self.follow()
            except DjshipError as error:
                self.log(f"not followed yet: {error}")
            time.sleep(FOLLOW_INTERVAL)


def _log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}", flush=True)


class _LogReporter:
    """Progress as log lines: the agent runs under the supervisor, whose log is `djship logs <program>`."""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        _log(f"{title} ...")
        yield
        _log(f"{title}: done in {time.monotonic() - started:.1f}s")

    def note(self, text: str) -> None:
        _log(text)


@dataclass(frozen=True)
class _Here:
    """This host, as a backup takes it (see djship.ops.store.Host)."""
    name: str
    plan: Plan
    connector: Connector


# Apart from `djship backup`'s (backup-staging): on real hosts the two take their locks on different machines.
DAILY_STAGING = "daily-backup-staging"


def backup(plan: Plan, connector: Connector, note: str, protect: frozenset[str] = frozenset()) -> dict:
    """A backup of this host's live database and media into its store, sent to the backup host when there is one;
    then the old ones pruned (never one named in protect). Its name and those pruned."""
    from djship.deploy.lock import exclusive
    from djship.ops.store import Sources, Store, take

    admin = connector.get(plan.paths.admin_secrets)
    if admin is None:
        raise DjshipError(f"{plan.paths.admin_secrets} is missing; run `djship up` from the control machine")
    here = _Here(plan.host, plan, connector)
    store = Store(connector, plan.backup.daily_dir or plan.backup.dir, mode=0o711 if plan.backup.archive else 0o700)
    with exclusive(plan.paths.backup_lock, "the daily backup", busy="another backup is running"):
        store.remove_unfinished()
        kept = json.loads(admin)
        sources = Sources(here, here, kept["postgres_password"], None, DAILY_STAGING, name_hosts=False,
                          redis_password=kept.get("redis_password"))
        sources.clear()
        if plan.backup.target is None:
            taken = take(sources, store, note, _LogReporter())
            pruned = store.prune(plan.backup.keep, protect | {taken.name})
        else:
            taken, pruned = _take_and_send(plan, connector, store, sources, note, protect)
    rows = sum(taken.manifest.rows.values())
    where = taken.path if plan.backup.target is None else f"{plan.backup.target.dir / taken.name} on " \
                                                           f"{plan.backup.target.host}"
    _log(f"backed up {taken.manifest.database} and media as {where} ({taken.manifest.size} bytes, {rows} rows)"
         + (f"; removed old backups {', '.join(pruned)}" if pruned else ""))
    return {"backup": taken.name, "pruned": pruned}


def archive_backup(plan: Plan, connector: Connector) -> dict:
    """The daily backup with backup.archive: a full pgBackRest backup weekly, a differential one on the other days
    (pgBackRest expires what its retention no longer keeps); then verified, as `djship backup verify` does. A failed
    verification is kept for status and the doctor, and makes the run fail."""
    from datetime import datetime, timezone

    from djship.components.pgbackrest import PgBackRest, backup_type

    archiver = PgBackRest(plan, connector)
    kind = backup_type(archiver.backups(), datetime.now(timezone.utc))
    taken = archiver.backup(kind)
    _log(f"backed up into the archive as {taken.label} ({taken.type})")
    password = json.loads(connector.get(plan.paths.admin_secrets) or b"{}").get("postgres_password")
    if password is None:
        raise DjshipError(f"{plan.paths.admin_secrets} is missing; run `djship up` from the control machine")
    with connector.lock(plan.backup.archive.scratch_lock, "a verification of the archive",
                        busy="a restore or verification from the archive is running"):
        verified = archiver.verify(password)
    if not verified["ok"]:
        raise DjshipError(f"backup {verified['backup']} of the archive failed its verification: {verified['problem']}")
    _log(f"verified backup {verified['backup']}: restored into a scratch cluster, {verified['tables']} tables, "
         f"{verified['rows']} rows")
    return {"backup": taken.label, "pruned": [], "verified": verified}


OUTGOING = ".outgoing"
"""Under the db host's daily directory: a backup made there but not yet on the backup host, so `djship backups`
never lists one that is about to move."""


def _take_and_send(plan: Plan, connector: Connector, store: Store, sources: Sources, note: str,
                   protect: frozenset[str]) -> tuple[Backup, list[str]]:
    """A backup made into the outgoing directory and sent; one that could not be sent (now or by an earlier run
    that was killed) stays listed on the db host, where `restore` takes it."""
    from djship.ops import archive
    from djship.ops.store import Store, run_checked, take

    outgoing = Store(connector, store.dir / OUTGOING)
    connector.makedirs(store.dir, mode=store.mode)
    outgoing.remove_unfinished()
    for unsent in outgoing.list():
        run_checked(connector, f"keeping the unsent backup {unsent.name}", archive.rename_argv(unsent.path, store.dir / unsent.name))
    try:
        taken = take(sources, outgoing, note, _LogReporter())
        try:
            pruned = _send(plan, connector, taken.path, sorted(taken.manifest.files) + ["manifest.json"],
                           protect | {taken.name})
        except DjshipError:
            run_checked(connector, f"keeping the unsent backup {taken.name}",
                        archive.rename_argv(taken.path, store.dir / taken.name))
            raise
    finally:  # nothing stays in it: what was sent is gone, what was not is listed
        run_checked(connector, f"removing {outgoing.dir}", archive.remove_argv(outgoing.dir))
    return taken, pruned


def _send(plan: Plan, connector: Connector, backup: Path, files: list[str], protect: frozenset[str]) -> list[str]:
    """The backup to the backup host (then removed here), and the backups there that retention no longer keeps
    removed; their names."""
    from datetime import datetime, timezone

    from djship.ops import archive
    from djship.ops.sending import Sender

    sender = Sender(plan, connector)
    with _LogReporter().step(f"Sending it to the backup host {plan.backup.target.host} (sftp)"):
        sender.remove_unfinished()
        sender.send(backup, files)
    names = [name for name in sender.names() if archive.backup_time(name) is not None]
    expired = [name for name in archive.expired(names, plan.backup.keep, datetime.now(timezone.utc).date())
               if name not in protect]
    sender.remove(expired)
    return expired


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="djship-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help="the host's plan.json")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("renew", help="an ACME certificate now if due, installed").add_argument(
        "--force", action="store_true", help="even if the current one is not due")
    commands.add_parser("watch", help="renew whenever due, retrying with back-off; on another lb host, follow the "
                                      "renewer (never returns)")
    commands.add_parser("follow", help="on another lb host: install the renewer's certificate if it is new")
    taking = commands.add_parser("backup", help="a backup of the live database and media, taken here")
    taking.add_argument("--note", default="", help="what the manifest says of it")
    taking.add_argument("--protect", action="append", default=[], help="a backup that retention must not remove")
    commands.add_parser("archive-backup", help="with backup.archive: a pgBackRest backup into the archive")
    args = parser.parse_args(argv)
    try:
        plan = plan_from_json(args.plan.read_bytes())
        if args.command == "archive-backup":
            print(json.dumps(archive_backup(plan, LocalConnector())), flush=True)
            return
        if args.command == "backup":
            print(json.dumps(backup(plan, LocalConnector(), args.note, frozenset(args.protect))), flush=True)
            return
        if plan.follows:
            follower = Follower(plan, LocalConnector(), _log)
            if args.command == "follow":
                print(INSTALLED if follower.follow() else CURRENT, flush=True)
            else:
                follower.watch()
            return
        renewer = Renewer(plan, LocalConnector(), _log)
        if args.command == "renew":
            print(RENEWED if renewer.renew_if_due(args.force) else CURRENT, flush=True)
        else:
            renewer.watch()
    except (DjshipError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
