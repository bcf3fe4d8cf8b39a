"""The djship command line: parses arguments, calls the library, prints. Nothing else happens here."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from djship import __version__
from djship.config import find_project_dir
from djship.errors import DjshipError

# Wide when piped, so paths and tables are never cut for grep or a log file.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)


class ConsoleReporter:
    """Shows each step as it runs, with its time."""

    @contextmanager
    def step(self, title: str):
        started = time.monotonic()
        console.print(f"[bold]•[/] {escape(title)} …")
        try:
            yield
        except BaseException:
            console.print(f"  [red]✗[/] {escape(title)} [dim]({time.monotonic() - started:.1f}s)[/]")
            raise
        console.print(f"  [green]✓[/] [dim]{time.monotonic() - started:.1f}s[/]")

    def note(self, text: str) -> None:
        console.print(f"  [dim]{escape(text)}[/]")


def _echo_line(line: str) -> None:
    """One line of a remote command's output, flushed at once (also into a pipe: `djship logs -f | grep ...`)."""
    click.echo(line)
    sys.stdout.flush()


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def _add_row(table: Table, *cells: str | Text) -> None:
    """A table row whose text is shown as it is: names, paths and messages never become rich markup."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


def _system(install: bool = False, observe_only: bool = False):
    """The system djship.toml describes, on this machine or on the hosts of [servers]. install: apt-get what a host
    lacks first; observe_only: a host that does not answer is reported, not an error."""
    from djship.config import load_config
    from djship.system import System
    from djship.topology import open_topology

    project_dir = find_project_dir(Path.cwd())
    reporter = ConsoleReporter()
    return System(open_topology(load_config(project_dir), project_dir, reporter, install, observe_only), reporter)


class DjshipGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DjshipError as error:
            errors.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
            sys.exit(1)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            errors.print(f"[red]error:[/] {escape(f'{error.strerror or error}{where}')}", soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            errors.print("[red]interrupted[/]")
            sys.exit(130)


@click.group(cls=DjshipGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="djship")
@click.option(
    "-C", "directory", metavar="DIR", type=click.Path(exists=True, file_okay=False),
    help="Run as if started in DIR (like git -C). Commands find djship.toml in the current directory or a parent.",
)
def main(directory: str | None) -> None:
    """Run a Django project the way production does: an HTTPS load balancer (HAProxy) in front of N app servers
    (nginx -> gunicorn -> Django), with PostgreSQL on its own, every process supervised.

    \b
    Start inside your Django project (where manage.py is):
      djship init        write djship.toml (found: settings, WSGI app, requirements)
      djship up          build and start everything; prints the HTTPS URL
      djship status      what runs where, and whether it is healthy
      djship down        stop everything, keep all data
    """
    if directory:
        os.chdir(directory)


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing djship.toml.")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path, force: bool) -> None:
    """Write a commented djship.toml for the Django project in DIRECTORY (default: here).

    Finds manage.py, the settings module, the WSGI (and ASGI) application and the requirements file.
    """
    from djship.project import discover, write_config

    project = discover(directory)
    path = write_config(project, force)
    console.print(f"Wrote {path}", markup=False)
    console.print(f"  settings      {project.settings_module}", markup=False)
    console.print(f"  WSGI app      {project.wsgi_application}", markup=False)
    if project.asgi_application:
        console.print(f"  ASGI app      {project.asgi_application}  (served with app.interface = \"asgi\")", markup=False)
    console.print(f"  requirements  {project.requirements}", markup=False)
    console.print("Next: [bold]djship up[/]  (state lives in .djship/ beside manage.py; add it to .gitignore)")


@main.command()
@click.option("--install", is_flag=True,
              help="Real hosts only: apt-get install what a host lacks for its roles (as root, or through sudo -n).")
@click.option("--dry-run", is_flag=True,
              help="Print what up would change (files, programs started, restarted or reloaded, app servers added or "
                   "removed, releases built or shipped) and change nothing.")
def up(install: bool, dry_run: bool) -> None:
    """Build and start the whole system, on this machine or on the hosts of [servers], then print the HTTPS URL.

    \b
    Order: state dir and secrets -> certificate -> PostgreSQL -> release (code, virtualenv,
    check --deploy, collectstatic, migrate once) -> app servers -> load balancer.
    Run again it first computes what differs between what runs and djship.toml, then changes
    only that, without failing a request (app servers restart one at a time out of rotation,
    HAProxy reloads seamlessly, PostgreSQL reloads when only its client list changed);
    after `djship down` it brings the same release and every database row back.
    \b
    On real hosts ([servers] and [hosts] in djship.toml) each host is checked over SSH first;
    the release's wheels are built here once and installed on every app host offline. Adding
    or removing an app host in djship.toml and running `djship up` again changes the balancers
    without failing a request; a host that was down is started again and rejoins.
    """
    started = time.monotonic()
    system = _system(install=install)
    if dry_run:
        lines = system.changes().lines()
        for line in lines:
            console.print(escape(line), soft_wrap=True)
        console.print("Nothing to change." if not lines else f"{len(lines)} changes; nothing was changed (--dry-run)")
        return
    before = system.traffic()
    result = system.up()
    total = time.monotonic() - started
    if result.changed:
        console.print(f"[green]Up[/] in {total:.1f}s: release {escape(result.release)}")
        _print_traffic(system.traffic_since(before), "the change")
    else:
        console.print(f"Already up and unchanged: release {result.release}; nothing was changed ({total:.1f}s)",
                      markup=False)
    console.print(f"  site     [bold]{escape(result.url)}[/]")
    if result.ca_cert:
        console.print(f"  CA cert  {result.ca_cert}   (curl --cacert {result.ca_cert} {result.url})", markup=False)
        from djship.tls.trust import trusted

        if not trusted(result.ca_cert):
            console.print("  trust    [bold]djship trust[/]   (this machine's browsers and system store then trust the CA)")


def _rollout():
    from djship.deploy.rolling import Rollout

    return Rollout(_system())


def _print_traffic(traffic, during: str) -> None:
    """The balancers' own count of what they answered while a change ran (nothing when none was running)."""
    if traffic is None:
        return
    line = escape(traffic.line(during))
    console.print(f"  [red]{line}[/] (see `djship logs haproxy`)" if traffic.failed else f"  {line}")


@main.command()
def deploy() -> None:
    """Ship the project's current code as a new release, one app server at a time, with no failed request.

    \b
    Builds releases/<id> (the virtualenv is reused when requirements did not change), runs
    check --deploy and collectstatic, migrates once under a PostgreSQL advisory lock, then per
    batch of app servers (deploy.batch_size): drain in the balancer -> wait for in-flight requests
    -> restart on the new release -> health check -> back into rotation. A release that fails
    anywhere never takes traffic: the server goes back to its release and the deploy stops.
    """
    started = time.monotonic()
    rollout = _rollout()
    before = rollout.system.traffic()
    release = rollout.deploy()
    console.print(f"[green]Deployed[/] release {escape(release.id)} in {time.monotonic() - started:.1f}s")
    _print_traffic(rollout.system.traffic_since(before), "the deploy")


@main.command()
@click.argument("release", required=False)
def rollback(release: str | None) -> None:
    """Switch back to RELEASE (default: the one before the live one), rolling, like a deploy.

    Migrations are not reversed: the database stays as the newest release left it.
    """
    started = time.monotonic()
    rollout = _rollout()
    before = rollout.system.traffic()
    target = rollout.rollback(release)
    console.print(f"[green]Rolled back[/] to release {escape(target.id)} in {time.monotonic() - started:.1f}s")
    _print_traffic(rollout.system.traffic_since(before), "the rollback")


@main.command()
@click.argument("servers", type=click.IntRange(1, 250))
def scale(servers: int) -> None:
    """Run SERVERS app servers on each app host, adding or removing them while the site serves; sets app.servers
    in djship.toml.

    New servers join the balancer only once healthy; removed ones are drained first. (Which hosts
    are app hosts is servers.app in djship.toml: edit it and run `djship up` to add a host.)
    """
    started = time.monotonic()
    rollout = _rollout()
    traffic = rollout.system.traffic()
    before = rollout.scale(servers)
    if before == servers:
        console.print(f"Already {servers} app servers per app host; nothing changed.")
    else:
        console.print(f"[green]Scaled[/] from {before} to {servers} app servers per app host in "
                      f"{time.monotonic() - started:.1f}s")
        _print_traffic(rollout.system.traffic_since(traffic), "the scale")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def releases(as_json: bool) -> None:
    """List the kept releases, oldest first, marking the live one and the servers running each."""
    from djship.deploy.rolling import release_table

    rows = release_table(_system())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = _table("", "RELEASE", "SERVERS")
    for row in rows:
        _add_row(table, "*" if row["live"] else "", row["id"], ", ".join(row["servers"]) or "-")
    console.print(table)


def _backups():
    from djship.ops.backup import Backups

    return Backups(_system())


@main.command()
@click.argument("action", required=False, type=click.Choice(["verify"]))
@click.option("--dump", is_flag=True, help="A pg_dump backup (the portable format) even with backup.archive.")
def backup(action: str | None, dump: bool) -> None:
    """Back up the live database (pg_dump, one consistent snapshot) and the media files.

    \b
    Writes <backup.dir>/<UTC time>/ (default .djship/backups): database.dump, media.tar and
    manifest.json with a sha256 of each file and the row count of every table. Keeps the newest
    backup of each of the last backup.keep days (and every backup of today); removes the others.
    With backup.archive: a full or differential pgBackRest backup into the archive instead
    (--dump: the pg_dump backup above). `djship backup verify`: pgbackrest verify, then the newest
    backup restored into a scratch cluster and its tables counted; the result shows in status.
    """
    from djship.ops.archive import human_size

    started = time.monotonic()
    backups = _backups()
    if action == "verify":
        from djship.ops.pitr import PointInTime

        verified = PointInTime(backups).verify()
        if not verified["ok"]:
            raise DjshipError(f"backup {verified['backup']} of the archive failed its verification: {verified['problem']}")
        console.print(f"[green]Verified[/] backup {escape(verified['backup'])}: it restores, {verified['tables']} "
                      f"tables, {verified['rows']} rows, in {time.monotonic() - started:.1f}s")
        return
    if backups.db.plan.backup.archive is not None and not dump:
        from djship.ops.pitr import PointInTime

        taken_archive = PointInTime(backups).backup()
        console.print(f"[green]Backed up[/] into the archive as {escape(taken_archive.label)} ({taken_archive.type}, "
                      f"{human_size(taken_archive.size)}) in {time.monotonic() - started:.1f}s")
        return
    result = backups.backup()
    taken = result.backup
    console.print(
        f"[green]Backed up[/] database {escape(taken.manifest.database)} and media as {escape(taken.name)} "
        f"({human_size(taken.manifest.size)}, {sum(taken.manifest.rows.values())} rows) in {time.monotonic() - started:.1f}s"
    )
    console.print(f"  {taken.path}", markup=False)
    if result.pruned:
        console.print(f"  removed old backups {', '.join(result.pruned)}", markup=False)


@main.command(name="backups")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backups_(as_json: bool) -> None:
    """List the backups, oldest first, with where they are kept, their size and age.

    \b
    `djship backup` keeps them here (backup.dir); on real hosts the daily backup of backup.schedule
    keeps them on the db host. `djship restore NAME` takes either.
    """
    from datetime import datetime, timezone

    from djship.ops.archive import human_age, human_size

    now = datetime.now(timezone.utc)
    rows = []
    backups = _backups()
    window = None
    if backups.db.plan.backup.archive is not None:
        from djship.ops.pitr import PointInTime

        point_in_time = PointInTime(backups)
        window = point_in_time.window_if_running()
        host, path = backups.db.plan.backup.archive_place
        for kept in point_in_time.archive_backups():
            rows.append({"name": kept.label, "kind": "archive", "type": kept.type, "host": host,
                         "path": str(path), "created": kept.stopped.isoformat(),
                         "age_seconds": int((now - kept.stopped).total_seconds()), "size": kept.size,
                         "recoverable_from": window.start.isoformat() if window else None,
                         "recoverable_to": window.end.isoformat() if window else None,
                         "note": f"pgBackRest {kept.type} backup"})
    for entry in backups.list():
        manifest = entry.manifest
        rows.append({
            "name": entry.name,
            "kind": "dump",
            "host": entry.host.name if entry.host else None,
            "path": str(entry.path),
            "created": manifest.created if manifest else None,
            "age_seconds": int((now - entry.created).total_seconds()),
            "size": manifest.size if manifest else None,
            "database": manifest.database if manifest else None,
            "release": manifest.release if manifest else None,
            "rows": sum(manifest.rows.values()) if manifest else None,
            "note": manifest.note if manifest else "no readable manifest.json: cannot be restored",
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("No backups yet; `djship backup` takes one.")
        return
    table = _table("BACKUP", "KEPT ON", "AGE", "SIZE", "DATABASE", "ROWS", "NOTE")
    for row in rows:
        size = human_size(row["size"]) if row["size"] is not None else "-"
        _add_row(table, row["name"], row["host"] or "this machine", human_age(row["age_seconds"]), size,
                 row.get("database") or "-", str(row["rows"] if row.get("rows") is not None else "-"), row["note"])
    console.print(table)
    if window is not None:
        console.print(f"Recoverable to any second from {window.start:%Y-%m-%d %H:%M:%S} to "
                      f"{window.end:%Y-%m-%d %H:%M:%S} UTC (`djship restore --to TIME`)", markup=False)


@main.command()
@click.argument("backup_name", metavar="BACKUP", required=False)
@click.option("--to", "to_time", metavar="TIME", help='With backup.archive: the instant to restore to, '
              '"2026-12-01 10:42:00" (UTC), inside the window `djship backups` shows.')
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--redis", "with_redis", is_flag=True,
              help="Also put back Redis's data (backups hold it with [redis] backup = true). Redis stops while it "
                   "loads: requests that use it fail for those seconds.")
def restore(backup_name: str | None, to_time: str | None, yes: bool, with_redis: bool) -> None:
    """Restore BACKUP (a name from `djship backups`, or a backup directory) without failing a request.

    \b
    --to TIME instead: the database as it was at TIME, recovered from the archive (backup.archive)
    into a NEW database, then the same switch; a TIME outside the recoverable window changes nothing.

    \b
    Verifies every file's checksum first (a damaged backup changes nothing), takes a safety backup,
    restores into a NEW database and media directory, checks every table's row count against the
    backup, then switches the app servers one batch at a time (drain -> restart -> health check ->
    rotation). The previous database is kept; `djship drop-database NAME --yes` removes it.
    With --redis, Redis's data from the backup replaces what it holds; what it held is kept beside it.
    """
    if not yes and not sys.stdin.isatty():
        raise DjshipError("restore switches the site to the backup's data; re-run with --yes to confirm "
                          "(there is no terminal to ask on)")
    if to_time is not None and with_redis:
        raise DjshipError("--redis goes with a BACKUP only: the archive of --to holds the database, not Redis's data")
    if (backup_name is None) == (to_time is None):
        raise DjshipError("restore takes either a BACKUP (from `djship backups`) or --to TIME, e.g. "
                          '`djship restore --to "2026-12-01 10:42:00"`')
    started = time.monotonic()
    backups = _backups()
    if to_time is not None:
        _restore_to(backups, to_time, yes, started)
        return
    with backups.reporter.step(f"Verifying backup {backup_name} (checksums)"):
        verified = backups.verify(backup_name)
    manifest = verified.manifest
    if not yes and not click.confirm(
        f"Restore {verified.name} (database {manifest.database}, {sum(manifest.rows.values())} rows, taken "
        f"{manifest.created}) and switch the site to it? Writes made after it will no longer be served"
    ):
        raise DjshipError("restore cancelled; nothing was changed")
    traffic = backups.system.traffic()
    result = backups.restore(verified, redis=with_redis)
    console.print(
        f"[green]Restored[/] {escape(verified.name)} in {time.monotonic() - started:.1f}s: the site now uses database "
        f"{escape(result.database)} and media {escape(str(result.media))}"
    )
    _print_traffic(backups.system.traffic_since(traffic), "the restore")
    console.print(f"  safety backup of what was live: {result.safety_backup}", markup=False)
    if result.redis_kept is not None:
        console.print(f"  Redis's data is the backup's; what it held before is kept in {result.redis_kept}",
                      markup=False)
    elif manifest.holds_redis:
        console.print("  the backup also holds a snapshot of Redis, not restored (add --redis to put it back)",
                      markup=False)
    console.print(
        f"  the previous database {result.previous.database} and media {result.previous.media} are kept; "
        f"remove them with `djship drop-database {result.previous.database} --yes` and `rm -r {result.previous.media}`",
        markup=False,
    )


def _restore_to(backups, to_time: str, yes: bool, started: float) -> None:
    from djship.ops.pitr import PointInTime, parse_target

    target = parse_target(to_time)
    point_in_time = PointInTime(backups)
    point_in_time.check(target)
    if not yes and not click.confirm(f"Restore the database as it was at {target:%Y-%m-%d %H:%M:%S} UTC and switch "
                                     "the site to it? Writes made after it will no longer be served"):
        raise DjshipError("restore cancelled; nothing was changed")
    traffic = backups.system.traffic()
    result = point_in_time.restore(target)
    console.print(f"[green]Restored[/] the database as it was at {target:%Y-%m-%d %H:%M:%S} UTC in "
                  f"{time.monotonic() - started:.1f}s: the site now uses database {escape(result.database)}")
    _print_traffic(backups.system.traffic_since(traffic), "the restore")
    console.print(f"  the previous database {result.previous.database} is kept; remove it with "
                  f"`djship drop-database {result.previous.database} --yes`", markup=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def databases(as_json: bool) -> None:
    """List the app's databases: the live one (*) and those kept by earlier restores."""
    from djship.ops.archive import human_size

    rows = _backups().databases()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = _table("", "DATABASE", "SIZE")
    for row in rows:
        _add_row(table, "*" if row["live"] else "", row["name"], human_size(row["size"]))
    console.print(table)


@main.command(name="drop-database")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really drop it.")
def drop_database(name: str, yes: bool) -> None:
    """DROP a database that an earlier restore left behind (never the live one)."""
    if not yes:
        raise DjshipError(f"drop-database deletes {name} and every row in it; re-run with --yes to confirm")
    _backups().drop_database(name)
    console.print(f"Dropped database {name}.", markup=False)


@main.command()
@click.option("--install", is_flag=True, help="apt-get install what a host lacks (as root, or through sudo -n).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def hosts(install: bool, as_json: bool) -> None:
    """Check every host of the remote target over SSH, all at once.

    \b
    The hosts and their roles come from [servers] and [hosts] in djship.toml. Each host must
    answer with an SSH host key that known_hosts (or its pinned host_key) trusts, and have
    what its roles need: Python 3.10+ with venv everywhere, HAProxy on lb, nginx on app,
    PostgreSQL on db, redis-server where [redis] runs. Exits 1 naming, per host, what to install;
    --install installs it.
    """
    from djship.config import load_config
    from djship.hosts import prepare_hosts, remote_hosts, require_ready

    project_dir = find_project_dir(Path.cwd())
    reports = prepare_hosts(remote_hosts(load_config(project_dir), project_dir), install)
    if as_json:
        click.echo(json.dumps([report.as_dict() for report in reports], indent=2))
    else:
        table = _table("HOST", "ADDRESS", "ROLES", "PYTHON", "INSTALLED", "MISSING")
        for report in reports:
            missing = " ".join(report.missing) or ("-" if report.ready else "")
            _add_row(
                table, report.name, report.address, ",".join(report.roles), report.python or "-",
                " ".join(report.installed) or "-", Text(missing, style="red") if not report.ready else missing,
            )
        console.print(table)
    require_ready(reports)
    if not as_json:
        console.print(f"[green]All {len(reports)} hosts are reachable and ready.[/]")


@main.command()
def down() -> None:
    """Stop every process (balancer, app servers, PostgreSQL, supervisor). All data is kept."""
    started = time.monotonic()
    if _system().down():
        console.print(f"Down in {time.monotonic() - started:.1f}s; data kept. `djship up` brings it back.")
    else:
        console.print("Nothing is running.")


@main.command()
@click.option("--yes", is_flag=True, help="Really delete the state directory, including the database.")
def destroy(yes: bool) -> None:
    """Stop everything and DELETE the state directory: database, releases, secrets, certificates, media."""
    system = _system()
    targets = ", ".join(f"{directory} on {host}" for host, directory in system.destroy_targets())
    target = system.plan.backup.target
    kept = " and ".join(map(str, system.plan.backup.kept))
    targets += f" (on {target.host} all but {kept}: the backups stay)" if target else ""
    if not yes:
        raise DjshipError(
            f"destroy deletes {targets}, with the database and uploaded media; "
            "re-run with --yes to confirm (or `djship down` to stop and keep everything)"
        )
    system.destroy()
    console.print(f"Deleted {targets}.", markup=False)


def _print_status(report: dict) -> None:
    console.print(
        f"site [bold]{escape(report['url'])}[/]   release {escape(report['release'] or '-')}   database "
        f"{escape(report['database'] or '-')}   CA {escape(str(report['ca_path'] or '-'))}"
    )
    verified = report.get("archive_verified")
    if verified:
        outcome = "[green]ok[/]" if verified["ok"] else f"[red]FAILED[/]: {escape(verified['problem'] or '')}"
        console.print(f"archive verified {escape(verified['at'])} (backup {escape(verified['backup'])}): {outcome}")
    for host in report.get("hosts", []):
        if host["problem"]:
            errors.print(f"[red]{escape(host['name'])}: {escape(host['problem'])}[/]")
    rows = report["components"]
    on_hosts = len(report["hosts"]) > 1
    table = _table("ROLE", *(["HOST"] if on_hosts else []), "COMPONENT", "ADDRESS", "PID", "STATE", "HEALTH")
    apps = [row for row in rows if row["role"] == "app"]
    for row in rows:
        prefix = ""
        if row["role"] == "app":
            prefix = "└─ " if row is apps[-1] else "├─ "
        colour = "green" if row["state"] == "RUNNING" else "red"
        _add_row(
            table, row["role"], *([row["host"]] if on_hosts else []), prefix + row["name"], row["address"],
            str(row["pid"] or "-"), Text(row["state"], style=colour), row["health"],
        )
    console.print(table)
    _print_external_balancer(report)
    if any(row["state"] == "UNSUPERVISED" for row in rows):
        errors.print("[red]the supervisor is not running: nothing restarts these processes; `djship up` takes them back[/]")
    for host in report["hosts"]:
        if (host["boot"] or {}).get("note"):
            where = f"{host['name']}: " if len(report["hosts"]) > 1 else ""
            errors.print(f"[yellow]{escape(where + host['boot']['note'])}[/]")
    tls = report["tls"]
    certificate = tls["certificate"]
    line = f"certificate ({tls['mode']}): " + (
        f"{', '.join(certificate['names'])}, issued by {certificate['issuer']}, {certificate['days_left']:.1f} days left"
        if certificate else "none yet"
    )
    console.print(line, markup=False)
    renewing = tls["renewal"]
    if renewing:
        console.print(
            escape(f"renewal timer {renewing['state']}: next attempt {renewing['next_attempt'] or '-'}, last success "
                   f"{renewing['last_success'] or '-'}")
            + (f", [red]{renewing['failures']} failure(s), last error: {escape(renewing['last_error'])}[/]"
               if renewing["failures"] else "")
        )
    if report["jobs"]:
        _print_jobs(report["jobs"])
    if report.get("replication"):
        _print_replication(report["replication"])


def _print_replication(replication: dict) -> None:
    standby = replication["standby"]
    if standby is None:
        console.print(f"replication: {replication['primary']} is the primary, with no standby", markup=False)
        return
    row = next((row for row in replication["standbys"] if row["name"] == replication["slot"]), None)
    if row is None:
        errors.print(f"[red]replication {escape(replication['primary'])} -> {escape(standby)}: the standby is not "
                     "streaming" + ("; commits on the primary wait for it (database.synchronous)" if
                                    replication["synchronous"] else "") + "[/]")
        return

    def seconds(value: float | None) -> str:
        return "0s" if value is None else f"{value:.3f}s"

    console.print(
        f"replication {replication['primary']} -> {standby}: {row['state']} ({row['sync_state']}), "
        f"{row['lag_bytes'] or 0} bytes behind, lag write {seconds(row['write_lag'])} flush "
        f"{seconds(row['flush_lag'])} replay {seconds(row['replay_lag'])}", markup=False)


def _print_external_balancer(report: dict) -> None:
    balancer = report.get("balancer") or {}
    if not balancer.get("external"):
        return
    console.print(f"balancer: external, trusted {', '.join(balancer['trusted'])}", markup=False)
    for row in report["components"]:
        if "balancer" not in row:
            continue
        seen = row["balancer"] or {}
        last = seen.get("last_check")
        said = (f"last health check from {last['peer']} {last['seconds_ago']}s ago, answered {last['status']}"
                if last else "no health check from the balancer logged yet")
        console.print(f"  {row['server']}: {said}" + (" (draining)" if seen.get("draining") else ""), markup=False)


def _print_jobs(jobs: list[dict]) -> None:
    table = _table("JOB", "SCHEDULE", "COMMAND", "LAST SLOT", "HOST", "EXIT", "DURATION")
    for job in jobs:
        run = job["last_run"] or {}
        code = run.get("exit_code")
        exit_text = Text("running" if run and code is None else "-" if not run else str(code),
                         style="red" if job["failing"] else "")
        duration = run.get("duration")
        _add_row(table, job["name"], job["schedule"], job["command"], run.get("slot") or "never", run.get("host") or "-",
                 exit_text, "-" if duration is None else f"{duration:.1f}s")
    console.print(table)
    for job in jobs:
        if job["missed"]:
            errors.print(f"[yellow]{escape(job['name'])}: no host ran its slot {escape(job['missed'])}[/]")


@main.group(name="db")
def db_group() -> None:
    """The database: its standby, and the passwords of an external PostgreSQL.

    \b
      djship db failover            the primary is gone: promote the standby (servers.db = [primary, standby])
      djship db switchover          planned: the standby becomes the primary, the primary its standby
      djship db password            an external PostgreSQL (database.url): the app's role's password
      djship db password --admin    database.admin_user's: djship then creates the app's role
                                    and database, with a password of its own making
    \b
    A password is typed without echo, or read from standard input (`djship db password < file`); kept in
    .djship/secrets/database.json (0600), never in djship.toml or on a command line. `djship up`
    gives the app's password to the app hosts (secrets/app.json, 0600, the app's user's).
    """


def _takeover(what: str) -> None:
    from djship.config import load_config
    from djship.ops.failover import DatabaseSwitch

    started = time.monotonic()
    system = _system(observe_only=True)
    switch = DatabaseSwitch(system, load_config(system.plan.project_dir))
    traffic = system.traffic()
    result = switch.failover(started) if what == "failover" else switch.switchover(started)
    console.print(f"{escape(result.primary)} is the primary: it accepted writes {result.promoted_after:.1f}s after "
                  f"the {what} began; {escape(result.former)} " + (
                      "is the standby" if what == "switchover" else
                      "is fenced" if result.fenced else "is fenced by djship.toml (unreachable)")
                  + f" ({result.seconds:.1f}s)")
    _print_traffic(system.traffic_since(traffic), f"the {what}")


@db_group.command()
def failover() -> None:
    """The primary is gone: promote the standby, point the app servers at it (one at a time), fence the former
    primary (and swap servers.db); `djship up` rebuilds it as the standby once it is back."""
    _takeover("failover")


@db_group.command()
def switchover() -> None:
    """Planned: stop the primary, wait for the standby to replay its last WAL, promote it, point the app servers
    at it, and start the former primary as its standby (servers.db swapped)."""
    _takeover("switchover")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in the README).")
def status(as_json: bool) -> None:
    """Show the topology (balancer -> app servers -> database) with live process states and health."""
    report = _system(observe_only=True).status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)


_DOCTOR_MARKS = {"pass": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in the README).")
@click.option(
    "--form-path", metavar="PATH",
    help="A page with a CSRF-protected form for the real POST through the balancer "
         "(default: the first of /accounts/login/, /admin/login/ that sets the csrftoken cookie).",
)
def doctor(as_json: bool, form_path: str | None) -> None:
    """Check the running system for the classic Django deployment failures, each with its cause and fix.

    Exits 0 when no check fails (warnings allowed), 1 otherwise.
    """
    from djship.doctor import diagnose, report

    document = report(diagnose(_system(), form_path))
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        for check in document["checks"]:
            fix = f"; [bold]fix:[/] {escape(check['fix'])}" if check["status"] != "pass" and check["fix"] else ""
            console.print(
                f"{_DOCTOR_MARKS[check['status']]} {escape(check['name'])} — {escape(check['cause'])}{fix}", soft_wrap=True
            )
        summary = document["summary"]
        console.print(f"{summary['pass']} passed, {summary['warn']} warnings, {summary['fail']} failed")
    if not document["ok"]:
        sys.exit(1)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in the README).")
@click.pass_context
def certs(ctx: click.Context, as_json: bool) -> None:
    """List every certificate (the site's; the local CA's in local mode) with issuer, names and days left.

    Warns, and exits 2, when one expires within 14 days. `djship certs renew` renews the ACME certificate.
    """
    if ctx.invoked_subcommand is not None:
        return
    from djship.tls.certificates import WARN_DAYS
    from djship.tls.site import certificates

    system = _system()
    rows = certificates(system.control_plan, system.local)
    if not rows:
        raise DjshipError("no certificate yet; `djship up` makes or obtains it")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table = _table("CERTIFICATE", "ISSUER", "NAMES", "NOT AFTER (UTC)", "DAYS LEFT")
        for row in rows:
            _add_row(table, row["name"], row["issuer"], ", ".join(row["names"]) or "-", row["not_after"][:16],
                     f"{row['days_left']:.1f}")
        console.print(table)
    expiring = [row for row in rows if row["days_left"] < WARN_DAYS]
    for row in expiring:
        errors.print(f"[yellow]warning:[/] the {escape(row['name'])} certificate ({escape(row['path'])}) expires in "
                     f"{row['days_left']:.1f} days", soft_wrap=True)
    if expiring:
        sys.exit(2)


@certs.command("renew")
@click.option("--force", is_flag=True, help="Renew even if the certificate is not due yet.")
def certs_renew(force: bool) -> None:
    """Renew the ACME certificate now if it is due (2/3 of its lifetime, at most 30 days before expiry) and swap it
    into the running load balancer without dropping a connection."""
    started = time.monotonic()
    if _system().renew(force):
        console.print(f"[green]Renewed[/] and installed in {time.monotonic() - started:.1f}s")
    else:
        console.print("Not due yet; nothing renewed (--force renews anyway).")


@main.command(name="trust")
@click.option("--remove", is_flag=True, help="Take the CA out of every store `djship trust` put it in.")
def trust_(remove: bool) -> None:
    """Trust djship's local CA on this machine, like mkcert: the system store (update-ca-certificates; needs root,
    else sudo) and your NSS databases (Chromium's ~/.pki/nssdb, every Firefox profile). Local TLS mode only."""
    from djship.connectors.local import LocalConnector
    from djship.tls import trust

    ca = trust.local_ca(_system().control_plan)
    change = trust.untrust if remove else trust.trust
    for line in change(ca, Path.home(), LocalConnector(), os.geteuid() == 0):
        console.print(escape(line), soft_wrap=True)
    if not remove:
        console.print("Restart a running browser to see it. Undo with: [bold]djship trust --remove[/]")


@main.command()
@click.argument("component", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show from the end of each log.")
def logs(component: str | None, follow: bool, lines: int) -> None:
    """Show logs: COMPONENT is haproxy, postgres, supervisord, appN (nginx + gunicorn), appN-nginx /
    appN-gunicorn, or on real hosts a host's name (everything on it). Without COMPONENT, all of them.
    Every line starts with its host and log."""
    _system().tail(component, lines, follow, _echo_line)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
def manage(args: tuple[str, ...]) -> None:
    """Run manage.py in the live release with the production settings, e.g.

    \b
      djship manage -- createsuperuser
      djship manage -- shell -c "from django.contrib.auth.models import User; print(User.objects.count())"

    \b
    On real hosts it runs on the first app host, in a terminal when there is one here (so
    `createsuperuser` can ask for the password over SSH).
    """
    sys.exit(_system().manage(list(args), _echo_line, terminal=sys.stdin.isatty() and sys.stdout.isatty()))


@db_group.command("password")
@click.option("--admin", is_flag=True, help="The password of database.admin_user instead of the app's role.")
def db_password(admin: bool) -> None:
    """Keep the password of the external PostgreSQL's app role (or, --admin, of database.admin_user)."""
    from djship.config import load_config
    from djship.system import keep_database_password
    from djship.topology import control_paths

    project_dir = find_project_dir(Path.cwd())
    config = load_config(project_dir)
    role = config.database.admin_user if admin else (config.database.external.user if config.database.external
                                                     else "")
    kept = keep_database_password(config, control_paths(config, project_dir), _read_secret(f"password of {role}"),
                                  admin)
    console.print(f"Kept the password of {escape(role)} in {escape(str(kept))} (0600); `djship up` applies it")


@main.group(name="env")
def env_() -> None:
    """The app's environment: what every gunicorn and process of the app gets, and nothing else.

    \b
    Plain values live in djship.toml, applied by `djship up`:
      [env]
      SENTRY_ENVIRONMENT = "production"
    Secrets are kept by these commands, never in djship.toml, a command line djship runs,
    a log, a release or `status --json`: 0600 in .djship/secrets/env here and on each host
    that runs the app (read back from there if .djship/ is lost).
    \b
      djship env set STRIPE_SECRET_KEY=sk_live_...   set one or more (KEY alone: the value is
                                                   read from standard input, or asked for)
      djship env import .env.production             set every KEY=VALUE of a .env file
      djship env unset STRIPE_SECRET_KEY            remove
      djship env list [--show] [--json]             list (secrets masked unless --show)
    \b
    A change restarts the app servers a batch at a time, drained first and health-checked,
    like a deploy, so no request fails, then the processes of [processes] and the scheduler
    of [jobs] (SIGTERM, then their stop_timeout); --no-restart leaves them running and they take the new values at
    their next restart (a deploy). Beyond these, the app's environment holds only
    what djship sets (PATH, LANG, DJANGO_SETTINGS_MODULE, PYTHONPATH, DJSHIP_*,
    SUPERVISOR_*): nothing of the shell that runs djship.
    """


_NO_RESTART = click.option("--no-restart", is_flag=True,
                           help="Keep the app servers running as they are; they take the change at their next restart.")


def _read_secret(name: str) -> str:
    """KEY without =VALUE: asked for without echo on a terminal, else all of standard input (less a final newline)."""
    if sys.stdin.isatty():
        return click.prompt(name, hide_input=True, prompt_suffix=" (hidden): ")
    return sys.stdin.read().removesuffix("\n")


def _print_env_change(change) -> None:
    if not change.names:
        console.print("Nothing to change: every secret already has that value.")
        return
    names = ", ".join(change.names)
    if change.restarted:
        console.print(f"[green]Changed[/] {escape(names)}; {escape(', '.join(change.restarted))} restarted with it "
                      "(the app servers one batch at a time)")
    elif change.serving:
        console.print(f"Changed {escape(names)}; the app servers take it at their next restart (`djship deploy`)")
    else:
        console.print(f"Changed {escape(names)}; the app servers get it with the next `djship up`")


@env_.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@_NO_RESTART
def env_set(assignments: tuple[str, ...], no_restart: bool) -> None:
    """Set secrets of the app's environment: KEY=VALUE, or KEY alone to type the value (hidden) or pipe it in,
    which keeps it out of your shell history and the process list, e.g. `djship env set TLS_KEY < key.pem`."""
    from djship.appenv import parse_assignments

    values = parse_assignments(list(assignments), _read_secret)
    _print_env_change(_rollout().change_env(values, (), restart=not no_restart))


@env_.command("unset")
@click.argument("names", nargs=-1, required=True, metavar="KEY...")
@_NO_RESTART
def env_unset(names: tuple[str, ...], no_restart: bool) -> None:
    """Remove secrets of the app's environment."""
    _print_env_change(_rollout().change_env({}, names, restart=not no_restart))


@env_.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_NO_RESTART
def env_import(file: Path, no_restart: bool) -> None:
    """Set every KEY=VALUE of a .env FILE as a secret (read by python-dotenv: `export KEY=...`, quotes, comments and
    multi-line quoted values; `${OTHER}` is kept as written, not expanded). Secrets the file does not name stay."""
    from djship.appenv import read_dotenv

    _print_env_change(_rollout().change_env(read_dotenv(file), (), restart=not no_restart))


@env_.command("list")
@click.option("--show", is_flag=True, help="Print the secrets' values too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a secret's value is null unless --show).")
def env_list(show: bool, as_json: bool) -> None:
    """The variables djship gives the app: [env] of djship.toml and the secrets, by name."""
    from djship.appenv import listing

    system = _system()
    rows = listing(system.plan.env, system.env_secrets(), show)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = _table("NAME", "VALUE", "FROM")
    for row in rows:
        value = row["value"] if row["value"] is not None else "********"
        _add_row(table, row["name"], value, "secret" if row["secret"] else "djship.toml [env]")
    console.print(table)
    if not rows:
        console.print("No variables: add plain ones to [env] in djship.toml, secrets with `djship env set KEY=VALUE`.")
