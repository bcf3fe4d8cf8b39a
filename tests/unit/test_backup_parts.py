"""The pure parts of backup and restore: names, exact command lines, the manifest, checksums, retention,
the schedule, the live-state file, the [backup] config and the scheduler program."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from djship import agent, render
from djship.components.database import COUNT_ROWS, DUMP_SESSION, admin_psql_command, parse_row_counts
from djship.config import parse_config
from djship.connectors.local import LocalConnector
from djship.deploy.live import Live, parse_live
from djship.errors import DjshipError
from djship.ops import archive
from djship.ops import store as stores
from djship.ops.archive import FileEntry, Manifest

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def _manifest(**changes) -> Manifest:
    values = dict(
        created="2026-11-25T20:30:00+00:00", database="board", release="20261125-202901", djship="0.1.0",
        files={"database.dump": FileEntry(DIGEST_A, 1000), "media.tar": FileEntry(DIGEST_B, 20)},
        rows={"public.posts_post": 3, "public.auth_user": 1},
    )
    return Manifest(**{**values, **changes})


def test_backups_are_named_by_utc_time_and_only_such_names_are_backups():
    when = datetime(2026, 11, 25, 21, 30, 5, tzinfo=timezone.utc)
    assert archive.backup_name(when) == "20261125T213005Z"
    assert archive.backup_time("20261125T213005Z") == when
    assert archive.backup_time("20261125T213005Z-2") == when
    assert archive.backup_time(".20261125T213005Z.partial") is None
    assert archive.backup_time("notes") is None


def test_a_restore_creates_a_database_named_after_the_app_and_the_time():
    when = datetime(2026, 11, 25, 21, 30, 5, tzinfo=timezone.utc)
    assert archive.restored_database_name("board", when) == "board_20261125213005"
    assert len(archive.restored_database_name("x" * 63, when)) <= 63


def test_the_superuser_psql_reads_its_script_from_stdin_its_connection_and_password_file_from_the_environment(
        make_plan):
    db = make_plan().database
    argv, env = admin_psql_command("/usr/lib/postgresql/15/bin/psql", db, "board", Path("/s/secrets/pgpass"),
                                   {"database": "board_20261125213005", "role": "board"})
    assert argv == [
        "/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
        "--set=database=board_20261125213005", "--set=role=board", "-f", "-",
    ]
    assert env == {"PGHOST": "127.0.2.1", "PGPORT": "15432", "PGUSER": "postgres", "PGDATABASE": "board",
                   "PGPASSFILE": "/s/secrets/pgpass", "PGCONNECT_TIMEOUT": "10",
                       "PGOPTIONS": "-c synchronous_commit=local"}


def test_the_rows_are_counted_and_pg_dump_runs_in_one_read_only_snapshot_whose_failure_fails_the_script():
    lines = DUMP_SESSION.splitlines()
    assert lines[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"
    assert lines[1] == COUNT_ROWS.strip() and lines[1].endswith("\\gexec")
    assert lines[2] == (
        "\\copy (SELECT pg_export_snapshot()) TO PROGRAM 'read -r snapshot && exec \"$DJSHIP_PG_DUMP\" --no-password "
        "--format=custom --snapshot=\"$snapshot\" --file=\"$DJSHIP_DUMP\"'"
    )
    assert lines[3:] == ["ROLLBACK;"]


def test_row_counts_are_read_per_table_whatever_its_name():
    output = '{"public.posts_post" : 3}\n{"public.we|ird\\"t" : 0}\n\n'
    assert parse_row_counts(output) == {"public.posts_post": 3, 'public.we|ird"t': 0}
    assert parse_row_counts("") == {}


def test_a_local_download_and_upload_copy_the_file_private(tmp_path):
    source = tmp_path / "database.dump"
    source.write_bytes(b"PGDMP" + bytes(range(256)) * 5000)
    source.chmod(0o644)
    connector = LocalConnector()
    connector.download(source, tmp_path / "here")
    connector.upload(tmp_path / "here", tmp_path / "there")
    for copy in (tmp_path / "here", tmp_path / "there"):
        assert copy.read_bytes() == source.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    with pytest.raises(DjshipError, match="cannot copy .*/missing to .*/x: No such file or directory"):
        connector.download(tmp_path / "missing", tmp_path / "x")


def test_pg_restore_makes_the_app_role_own_everything_all_or_nothing(make_plan):
    db = make_plan().database
    argv = archive.pg_restore_argv("pg_restore", db, "board_20261125213005", Path("/b/database.dump"))
    assert argv == [
        "pg_restore", "--host", "127.0.2.1", "--port", "15432", "--username", "postgres", "--no-password",
        "--dbname=board_20261125213005", "--no-owner", "--no-privileges", "--role=board", "--single-transaction",
        "--exit-on-error", "/b/database.dump",
    ]
    assert archive.pg_restore_list_argv("pg_restore", Path("/b/database.dump")) == ["pg_restore", "--list", "/b/database.dump"]


def test_file_command_lines():
    assert archive.tar_create_argv(Path("/s/media"), Path("/b/media.tar")) == [
        "tar", "--create", "--file=/b/media.tar", "--directory=/s/media", ".",
    ]
    assert archive.tar_extract_argv(Path("/b/media.tar"), Path("/s/media-1")) == [
        "tar", "--extract", "--file=/b/media.tar", "--directory=/s/media-1", "--no-overwrite-dir",
    ]
    assert archive.sha256sum_argv([Path("/b/a"), Path("/b/-b")]) == ["sha256sum", "--", "/b/a", "/b/-b"]
    assert archive.stat_sizes_argv([Path("/b/a")]) == ["stat", "--format=%s %n", "--", "/b/a"]
    assert archive.remove_argv(Path("/b/x")) == ["rm", "-rf", "--", "/b/x"]
    assert archive.rename_argv(Path("/b/.x.partial"), Path("/b/x")) == [
        "mv", "--no-target-directory", "--", "/b/.x.partial", "/b/x",
    ]


def test_sha256sum_and_stat_output_are_parsed_by_file_name():
    output = f"{DIGEST_A}  /b/20261125T213005Z/database.dump\n{DIGEST_B} */b/20261125T213005Z/media.tar\n"
    assert archive.parse_sha256sum(output) == {"database.dump": DIGEST_A, "media.tar": DIGEST_B}
    assert archive.parse_sha256sum("sha256sum: /b/x: No such file or directory\n") == {}
    assert archive.parse_stat_sizes("1000 /b/database.dump\n20 /b/media.tar\n") == {"database.dump": 1000, "media.tar": 20}


def test_the_manifest_round_trips_and_sums_its_sizes():
    manifest = _manifest(note="safety backup before restoring 20261124T000000Z")
    parsed = archive.parse_manifest(manifest.to_json(), Path("/b/manifest.json"))
    assert parsed == manifest and parsed.size == 1020
    assert json.loads(manifest.to_json())["files"]["database.dump"] == {"sha256": DIGEST_A, "size": 1000}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "/b/manifest.json is missing"),
        ("{not json", "is not a valid djship backup manifest"),
        ('{"format": 2}', "has format 2; this djship reads format 1"),
        ('{"format": 1, "created": "x"}', "is not a valid djship backup manifest"),
    ],
)
def test_a_bad_manifest_is_refused_with_one_line(text, message):
    with pytest.raises(DjshipError, match=message):
        archive.parse_manifest(text, Path("/b/manifest.json"))


def test_a_manifest_without_the_dump_or_with_a_bad_checksum_is_refused():
    no_dump = _manifest(files={"media.tar": FileEntry(DIGEST_B, 20)}).to_json()
    with pytest.raises(DjshipError, match="lists no database.dump"):
        archive.parse_manifest(no_dump, Path("/b/manifest.json"))
    bad = _manifest(files={"database.dump": FileEntry("xyz", 1), "media.tar": FileEntry(DIGEST_B, 2)}).to_json()
    with pytest.raises(DjshipError, match="a bad entry database.dump"):
        archive.parse_manifest(bad, Path("/b/manifest.json"))


def test_checksums_name_every_damaged_or_missing_file():
    manifest = _manifest()
    assert archive.checksum_problems(manifest, {"database.dump": DIGEST_A, "media.tar": DIGEST_B}) == []
    assert archive.checksum_problems(manifest, {"database.dump": DIGEST_B}) == [
        "database.dump does not match its sha256 (the file is corrupted or was changed)",
        "media.tar is missing",
    ]


def test_row_counts_must_match_table_by_table():
    expected = {"public.posts_post": 3, "public.auth_user": 1}
    assert archive.row_count_problems(expected, dict(expected)) == []
    assert archive.row_count_problems(expected, {"public.posts_post": 5, "public.extra": 0}) == [
        "public.auth_user: no table rows, the backup has 1",
        "public.posts_post: 5 rows, the backup has 3",
        "public.extra: not in the backup",
    ]


def test_retention_keeps_the_newest_of_each_of_the_last_n_days_and_all_of_today():
    names = [
        "20261120T030000Z",                      # day 1
        "20261121T030000Z", "20261121T120000Z",  # day 2: only the newest stays
        "20261123T030000Z",                      # day 3
        "20261125T030000Z", "20261125T120000Z", "20261125T120000Z-2",  # today: all stay
        "not-a-backup",
    ]
    assert archive.expired(names, keep=3, today=date(2026, 11, 25)) == ["20261120T030000Z", "20261121T030000Z"]
    assert archive.expired(names, keep=2, today=date(2026, 11, 25)) == [
        "20261120T030000Z", "20261121T030000Z", "20261121T120000Z",
    ]
    assert archive.expired(names, keep=7, today=date(2026, 11, 25)) == ["20261121T030000Z"]
    # Days without a backup do not count: a week of silence does not delete the last good backups.
    assert archive.expired(["20260101T000000Z", "20260102T000000Z"], keep=2, today=date(2026, 11, 25)) == []


def test_the_daily_schedule_waits_until_the_next_utc_time_of_day():
    now = datetime(2026, 11, 25, 3, 0, 0, tzinfo=timezone.utc)
    assert archive.seconds_until(now, "03:30") == 1800
    assert archive.seconds_until(now, "03:00") == 86400
    assert archive.seconds_until(now, "02:00") == 23 * 3600


def test_sizes_and_ages_read_well():
    assert [archive.human_size(n) for n in (0, 2048, 5 * 1024**3)] == ["0 B", "2.0 KB", "5.0 GB"]
    assert [archive.human_age(s) for s in (5, 600, 7300, 3 * 86400)] == ["5s", "10m", "2h", "3d"]


def test_the_live_state_defaults_to_the_plan_and_names_a_broken_file(make_plan):
    plan = make_plan()
    assert parse_live(plan, None) == Live("board", plan.paths.media)
    live = Live("board_20261125213005", Path("/srv/example/board/.djship/shared/media-20261125T213005Z"))
    assert parse_live(plan, live.to_json().encode()) == live
    with pytest.raises(DjshipError, match="live.json is not valid"):
        parse_live(plan, b"{}")


def test_backup_config_defaults_and_errors_with_key_paths(make_plan):
    plan = make_plan()
    assert (plan.backup.dir, plan.backup.keep, plan.backup.schedule) == (plan.paths.state / "backups", 7, None)
    assert make_plan(backup={"dir": "/var/backups/board"}).backup.dir == Path("/var/backups/board")
    assert make_plan(backup={"dir": "../backups"}).backup.dir == Path("/srv/example/backups")
    base = '[project]\nsettings_module = "a.settings"\nwsgi_application = "a.wsgi.application"\n'
    for table, message in [
        ('keep = 0', "backup.keep: Input should be greater than or equal to 1"),
        ('schedule = "3:30"', 'backup.schedule: must be a UTC time of day as "HH:MM"'),
        ('dir = "host:/backups"', "backup.dir: must be a directory on this machine"),
    ]:
        with pytest.raises(DjshipError, match=message):
            parse_config(f"{base}[backup]\n{table}\n")


def test_the_scheduler_is_supervised_only_when_scheduled_and_runs_as_the_invoking_user(make_plan):
    assert render.BACKUP_SCHEDULER not in {p.name for p in render.programs(make_plan(running_as_root=True))}
    plan = make_plan(running_as_root=True, backup={"schedule": "03:30"})
    scheduler = next(p for p in render.programs(plan) if p.name == render.BACKUP_SCHEDULER)
    # djship's agent takes the backup on the db host, by the plan written beside it.
    assert scheduler.command == ("/usr/bin/python3 -m djship.ops.schedule --at 03:30 -- /usr/bin/python3 -m "
                                 "djship.agent /srv/example/board/.djship/plan.json backup --note daily")
    assert plan.backup.daily_dir is None  # one machine: into backup.dir, beside `djship backup`'s
    plan_file = next(f for f in render.system_files(plan) if f.path == plan.paths.plan_file)
    assert plan_file.programs == (render.BACKUP_SCHEDULER,)
    assert scheduler.user is None
    assert {p.user for p in render.programs(plan) if p.name != render.BACKUP_SCHEDULER} == {
        "djship-db", "djship-app", None, "djship-lb"}  # None: nginx's master, whose workers run as djship-web
    conf = render.supervisord_conf(plan)
    section = conf.split("[program:backup-scheduler]")[1]
    assert "user = " not in section and "autostart = false" in section


def test_every_app_server_serves_media_and_reads_its_database_through_its_own_files(make_plan):
    """A restore switches one server at a time: each server's own media link and live file, never a shared one."""
    plan = make_plan(app={"servers": 2})
    for server in plan.app_servers:
        assert f'alias "{server.dir}/media/";' in render.nginx_conf(plan, server)
        assert f'"DJSHIP_LIVE_FILE={server.dir}/live.json"' in render.gunicorn_conf(plan, server)
    settings = render.production_settings(plan, "20260101-000000", plan.paths.releases / "20260101-000000")
    assert f'(os.environ.get("DJSHIP_LIVE_FILE"), "{plan.paths.live}")' in settings
    assert '"NAME": _LIVE["database"]' in settings and 'MEDIA_ROOT = _LIVE["media"]' in settings


@pytest.mark.parametrize("sent", [True, False])
def test_a_daily_backup_on_its_way_to_the_backup_host_is_never_listed_on_the_db_host(tmp_path, monkeypatch, sent):
    """Listed on the db host only when it stays there: its send failed (now, or in a run that was killed)."""
    connector, daily = LocalConnector(), tmp_path / "daily"
    left = daily / agent.OUTGOING / "20261201T030000Z"  # a run killed while sending
    left.mkdir(parents=True)
    (left / "manifest.json").write_text(_manifest().to_json())

    def take(sources, store, note, reporter):
        path = store.dir / "20261202T030000Z"
        path.mkdir()
        (path / "manifest.json").write_text(_manifest().to_json())
        return stores.Backup(path.name, path, _manifest(), None)

    def send(plan, connector, backup, files, protect):
        listed.extend(backup.name for backup in stores.Store(connector, daily).list())
        if not sent:
            raise DjshipError("sending backup 20261202T030000Z on the backup host bk1 failed: Connection refused")
        return []

    listed: list[str] = []
    monkeypatch.setattr(stores, "take", take)
    monkeypatch.setattr(agent, "_send", send)
    store = stores.Store(connector, daily)
    if sent:
        agent._take_and_send(None, connector, store, None, "daily", frozenset())
    else:
        with pytest.raises(DjshipError, match="Connection refused"):
            agent._take_and_send(None, connector, store, None, "daily", frozenset())
    assert listed == ["20261201T030000Z"]
    assert [backup.name for backup in store.list()] == ["20261201T030000Z", *([] if sent else ["20261202T030000Z"])]
    assert sorted(path.name for path in daily.iterdir()) == [backup.name for backup in store.list()]
