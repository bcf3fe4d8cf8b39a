"""djship.toml parsing: documented defaults, and one-line errors that start with the key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from djship.plan import remote_config_problems
from djship.config import CONFIG_FILE, find_project_dir, load_config, media_host, parse_config
from djship.errors import DjshipError

MINIMAL = """\
[project]
settings_module = "mysite.settings"
wsgi_application = "mysite.wsgi.application"
"""


def config_error(text: str) -> str:
    """The message parse_config raises for text; it must be a single line."""
    with pytest.raises(DjshipError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert "\n" not in message, f"error message spans lines: {message!r}"
    return message


def test_minimal_config_gives_documented_defaults():
    config = parse_config(MINIMAL)

    assert config.project.settings_module == "mysite.settings"
    assert config.project.wsgi_application == "mysite.wsgi.application"
    assert config.project.manage_py == "manage.py"
    assert config.project.requirements == "requirements.txt"
    assert config.project.python is None
    assert ".git" in config.project.exclude and ".djship" in config.project.exclude
    assert config.site.domains == ["localhost"]
    assert config.site.hsts_seconds is None and config.site.hsts_preload is False
    assert (config.app.servers, config.app.workers, config.app.threads) == (None, 3, 1)
    assert (config.app.port, config.app.address_prefix, config.app.timeout) == (8000, "127.0.1", 30)
    assert config.app.max_body_size == "10M"
    assert config.app.health_path == "/-/djship/health"
    assert (config.balancer.bind, config.balancer.https_port, config.balancer.http_port) == ("127.0.0.1", 8443, 8080)
    assert (config.database.address, config.database.port, config.database.max_connections) == ("127.0.2.1", 15432, 100)
    assert config.database.name is None and config.database.user is None
    assert config.tls.mode == "local"
    assert config.tls.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert config.tls.acme_ca_bundle is None and config.tls.cert_file is None
    assert config.state_dir == ".djship"
    assert config.users.model_dump() == {"app": "djship-app", "web": "djship-web", "db": "djship-db", "lb": "djship-lb",
                                         "redis": "djship-redis", "media": "djship-media",
                                         "backup": "djship-backup", "pooler": "djship-pgbouncer"}
    assert config.redis is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[app]\nservers = 0\n", "djship.toml: app.servers: Input should be greater than or equal to 1"),
        (
            '[site]\ndomains = ["localhost", "Not A Host"]\n',
            "djship.toml: site.domains: [1] 'Not A Host' is not a host name (lower-case, e.g. example.com)",
        ),
        ('[site]\ndomains = ["example.com", "example.com"]\n', "djship.toml: site.domains: lists a domain twice"),
        (
            "[app]\nwrokers = 4\n",
            "djship.toml: app.wrokers: unknown key (check the spelling; see `djship init` for the documented keys)",
        ),
        (
            "[balancer]\nhttps_port = 9000\nhttp_port = 9000\n",
            "djship.toml: balancer: https_port and http_port must differ",
        ),
        (
            '[balancer]\nbind = "example.com"\n',
            'djship.toml: balancer.bind: must be an IPv4 address: a loopback one (127.x.y.z, this machine only) or '
            '"0.0.0.0" (every address, for a public server: then 80 and 443 as ports, djship as root)',
        ),
        ('[tls]\nmode = "letsencrypt"\n', "djship.toml: tls.mode: Input should be 'local', 'acme' or 'files'"),
        (
            '[tls]\nmode = "files"\ncert_file = "site.crt"\n',
            'djship.toml: tls: mode = "files" needs tls.key_file (paths to the PEM certificate chain and its private key)',
        ),
        (
            '[tls]\nmode = "acme"\nacme_directory = "http://acme.example/dir"\n',
            "djship.toml: tls.acme_directory: must be the https:// URL of an ACME directory (e.g. Let's Encrypt's "
            "staging directory)",
        ),
        (
            '[tls]\nmode = "acme"\nacme_email = "nobody"\n',
            "djship.toml: tls.acme_email: must be an e-mail address (the ACME CA sends expiry warnings there)",
        ),
        (
            "[site]\nhsts_preload = true\n",
            "djship.toml: site: hsts_preload = true is for public domains only, and localhost is not one; remove "
            "hsts_preload or list only public domains in site.domains",
        ),
        (
            '[site]\ndomains = ["shop.example.com"]\nhsts_preload = true\nhsts_seconds = 86400\n',
            "djship.toml: site: hsts_preload = true needs hsts_seconds of at least 31536000 (one year, as the preload "
            "list asks); raise hsts_seconds or remove hsts_preload",
        ),
        ('[site]\nhsts_preload = "yes"\n', "djship.toml: site.hsts_preload: Input should be a valid boolean"),
    ],
    ids=[
        "servers-0", "bad-domain", "duplicate-domain", "unknown-key", "same-ports", "public-bind", "tls-mode",
        "files-without-key", "acme-plain-http", "acme-email", "preload-localhost", "preload-short", "preload-not-bool",
    ],
)
def test_invalid_value_is_named_by_its_key_path(extra, expected):
    assert config_error(MINIMAL + extra) == expected


def test_database_port_in_the_ephemeral_range_is_refused():
    message = config_error(MINIMAL + "[database]\nport = 40000\n")

    assert message.startswith("djship.toml: database.port: 40000 is in Linux's ephemeral port range 32768-60999")
    assert "choose a port below 32768" in message


@pytest.mark.parametrize("port", [32767, 61000])
def test_database_port_just_outside_the_ephemeral_range_is_accepted(port):
    assert parse_config(MINIMAL + f"[database]\nport = {port}\n").database.port == port


def test_missing_project_key_is_named():
    text = '[project]\nwsgi_application = "mysite.wsgi.application"\n'

    assert config_error(text) == "djship.toml: project.settings_module: required key is missing"


def test_missing_project_section_is_named():
    assert config_error("") == "djship.toml: project: required key is missing"


def test_invalid_toml_names_the_line():
    message = config_error(MINIMAL + "[app\nservers = 2\n")

    assert message.startswith("djship.toml: not valid TOML: ")
    assert "line 4" in message


def test_several_problems_report_the_first_and_count_the_rest():
    message = config_error(MINIMAL + "[app]\nservers = 0\nworkers = 0\n")

    assert message == "djship.toml: app.servers: Input should be greater than or equal to 1 (and 1 more)"


def test_source_names_the_file():
    with pytest.raises(DjshipError, match=r"^/srv/site/djship\.toml: app\.servers: "):
        parse_config(MINIMAL + "[app]\nservers = 0\n", source="/srv/site/djship.toml")


@pytest.mark.parametrize(
    "extra",
    ['[site]\ndomains = ["example.com\\n"]\n', '[balancer]\nbind = "127.0.0.1\\n"\n', '[database]\nname = "app\\n"\n'],
    ids=["domain", "bind", "database-name"],
)
def test_value_with_a_trailing_newline_is_refused(extra):
    config_error(MINIMAL + extra)


def test_unknown_quoted_key_with_a_newline_stays_on_one_line():
    assert "unknown key" in config_error(MINIMAL + '[app]\n"wro\\nkers" = 4\n')


def test_find_project_dir_finds_the_config_in_a_parent(tmp_path: Path):
    (tmp_path / CONFIG_FILE).write_text(MINIMAL)
    nested = tmp_path / "app" / "templates"
    nested.mkdir(parents=True)

    assert find_project_dir(nested) == tmp_path.resolve()


def test_find_project_dir_outside_a_project_fails(tmp_path: Path):
    with pytest.raises(DjshipError, match=r"no djship\.toml in .* or above; run `djship init`"):
        find_project_dir(tmp_path)


REMOTE = MINIMAL + """
[servers]
lb = ["lb1"]
app = ["app1", "app2"]
db = "db1"

[hosts.lb1]
address = "10.0.0.10"
[hosts.app1]
address = "10.0.0.11"
[hosts.app2]
address = "app2.internal.example"
ssh_user = "deploy"
ssh_port = 2222
root = "/opt/djship"
[hosts.db1]
address = "10.0.0.20"
"""


def test_remote_target_with_ssh_defaults():
    config = parse_config(REMOTE)
    assert config.remote and not parse_config(MINIMAL).remote
    assert (config.servers.lb, config.servers.app, config.servers.db) == (["lb1"], ["app1", "app2"], "db1")
    assert (config.ssh.user, config.ssh.port, config.ssh.key, config.ssh.known_hosts) == (
        "root", 22, None, "~/.ssh/known_hosts"
    )
    assert config.hosts["app1"].root == "/srv/djship"
    assert (config.hosts["app2"].ssh_user, config.hosts["app2"].ssh_port) == ("deploy", 2222)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('app = ["app1", "app2"]', 'app = ["app1", "app2", "app9"]'),
         "servers.app[2]: no host 'app9'; define it as [hosts.app9] with its address"),
        (('app = ["app1", "app2"]', 'app = ["app1", "app1"]'), "servers.app[1]: lists 'app1' twice (and 1 more)"),
        (('db = "db1"', 'db = "db2"'), "servers.db: no host 'db2'; define it as [hosts.db2] with its address"),
        (('db = "db1"\n', ""), "servers.db: required key is missing"),
        (('lb = ["lb1"]', "lb = []"), "servers.lb: required key is missing; name the hosts that run HAProxy, or set balancer.external = true "
         "for a balancer djship does not run"),
        (('[servers]', "[servers]\ncache = []"), "servers.cache: unknown key"),
        (('address = "10.0.0.11"', 'address = "10.0.0.10"'),
         "hosts.app1.address: 10.0.0.10 is also the address of hosts.lb1"),
        (('address = "10.0.0.20"', 'address = "db one"'), "hosts.db1.address: 'db one' is not an IPv4 address or a host name"),
        (('root = "/opt/djship"', 'root = "opt/djship"'), "hosts.app2.root: must be an absolute path on that host"),
        (('ssh_user = "deploy"', 'ssh_user = "De ploy"'), "hosts.app2.ssh_user: 'De ploy' is not a user name"),
        (('ssh_port = 2222', "ssh_port = 0"), "hosts.app2.ssh_port: Input should be greater than or equal to 1"),
        (('[hosts.db1]', '[hosts.db1]\nhost_key = "AAAA"'), "hosts.db1.host_key: must be an SSH public key"),
        (('[hosts.db1]', '[hosts.spare]\naddress = "10.0.0.30"\n[hosts.db1]'),
         "hosts.spare: has no role; add it to servers.lb, servers.app, servers.db, servers.worker, servers.media, "
         "servers.redis or servers.backup, or remove it"),
        (('[hosts.db1]', '[hosts.Spare]\naddress = "10.0.0.30"\n[hosts.db1]'), "hosts.Spare: not a host name"),
        (('db = "db1"', 'db = "db1"\nmedia = "files1"'),
         "servers.media: no host 'files1'; define it as [hosts.files1] with its address"),
        (('db = "db1"', 'db = "db1"\nbackup = "vault"'),
         "servers.backup: no host 'vault'; define it as [hosts.vault] with its address"),
        (('db = "db1"', 'db = "db1"\nbackup = "db1"'),
         "servers.backup: 'db1' is the db host; name another host, so that a backup survives the loss of the db "
         "host's disk (without servers.backup they are kept on this machine)"),
        (('db = "db1"', 'db = "db1"\nmedia = "app2"'),
         "servers.media: 'app2' holds the app role; name a host without the app or worker role (every host that runs "
         "the app's code mounts the uploads from it)"),
        (('db = "db1"', 'db = "db1"\nworker = ["db1"]'),
         "servers.media: the app hosts share their uploads through the db host by default, but 'db1' holds the "
         "worker role"),
        (('db = "db1"', 'db = "db1"\nworker = ["wk1"]'), "servers.worker[0]: no host 'wk1'; define it as [hosts.wk1]"),
        (('db = "db1"', 'db = "db1"\nworker = ["app1"]'), "servers.worker: names hosts for [processes], but there are "
         "none; add [processes]"),
        (('db = "db1"', 'db = "app1"'),
         "servers.media: the app hosts share their uploads through the db host by default, but 'app1' holds the app "
         "role; name a host without the app or worker role"),
    ],
)
def test_remote_target_errors_name_the_key(change, expected):
    old, new = change
    assert old in REMOTE
    assert config_error(REMOTE.replace(old, new, 1)).startswith(f"djship.toml: {expected}")


def test_the_media_host_is_the_db_host_for_several_app_hosts_or_a_daily_backup_none_for_one_or_the_one_named():
    assert media_host(parse_config(REMOTE)) == "db1"
    one_app_host = REMOTE.replace('app = ["app1", "app2"]', 'app = ["app1"]').replace('lb = ["lb1"]', 'lb = ["lb1", "app2"]')
    assert media_host(parse_config(one_app_host)) is None
    # The daily backup runs on the db host and archives the uploads there.
    assert media_host(parse_config(one_app_host + '[backup]\nschedule = "03:30"\n')) == "db1"
    files = REMOTE.replace('db = "db1"', 'db = "db1"\nmedia = "files1"') + '[hosts.files1]\naddress = "10.0.0.30"\n'
    assert media_host(parse_config(files)) == "files1"
    scheduled = remote_config_problems(parse_config(files + '[backup]\nschedule = "03:30"\n'))
    assert scheduled == ["backup.schedule: the daily backup runs on the db host, which must hold the uploads too, but "
                         "servers.media puts them on 'files1'; remove servers.media (the db host then holds them)"]


def test_hosts_without_servers_ask_for_roles():
    message = config_error(MINIMAL + '[hosts.web1]\naddress = "10.0.0.5"\n')
    assert message == (
        "djship.toml: hosts: [servers] is missing; say which hosts are lb, app and db (e.g. servers.app = ['web1'])"
    )


# ---- values that reach rendered files or commands -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('state_dir = "/srv/x\\n[program:pwn]\\ncommand=/bin/id\\nuser=root\\n"\n',
         "state_dir: contains the control character '\\n'; remove it"),
        ('state_dir = "/srv/a\\u0000b"\n', "state_dir: contains the control character '\\x00'; remove it"),
        ('state_dir = "/srv/a\\u007fb"\n', "state_dir: contains the control character '\\x7f'; remove it"),
        ('state_dir = "/srv/$x"\n', "state_dir: contains '$', which nginx reads as a variable; choose a path without it"),
        ('state_dir = "/srv/a,b"\n', "state_dir: contains ',', which HAProxy and gunicorn read as a list separator"),
        ('state_dir = "/srv/a\'b"\n', "state_dir: contains \"'\", which HAProxy cannot quote in a map file name"),
        ('state_dir = "/srv/a ;include /etc/x;"\n',
         "state_dir: contains a space followed by ; or #, which supervisord reads as a comment"),
        ('state_dir = "/srv/x "\n', "state_dir: starts or ends with a space; remove it"),
        ('[backup]\ndir = "/srv/b\\u0000"\n', "backup.dir: contains the control character '\\x00'"),
        ('[tls]\nmode = "files"\ncert_file = "~nosuchuser/site.crt"\nkey_file = "site.key"\n',
         "tls.cert_file: '~nosuchuser/site.crt' starts with ~nosuchuser, but there is no user 'nosuchuser'; "
         "write the path out"),
        ('[tls]\nkey_file = "~nosuchuser"\n', "tls.key_file: '~nosuchuser' starts with ~nosuchuser"),
        ('[tls]\nacme_ca_bundle = "~nosuchuser/ca.pem"\n', "tls.acme_ca_bundle: '~nosuchuser/ca.pem' starts with"),
        ('[ssh]\nkey = "~nosuchuser/.ssh/id"\n', "ssh.key: '~nosuchuser/.ssh/id' starts with ~nosuchuser"),
        ('[ssh]\nknown_hosts = "~nosuchuser/kh"\n', "ssh.known_hosts: '~nosuchuser/kh' starts with ~nosuchuser"),
        ('[tls]\ncert_file = "a\\u0000b"\n', "tls.cert_file: contains the control character '\\x00'"),
        ('[project]\nrequirements = "r\\u0000.txt"\n', "project.requirements: contains the control character"),
        ('[users]\ndb = "root"\n',
         "users.db: 'root' is root; services never run as root, use an unprivileged user such as djship-app"),
        ('[users]\napp = "web\\nuser = root"\n', "users.app: 'web\\nuser = root' is not a user name"),
        ('[users]\nmedia = "djship-backup"\n', "users: media and backup are both 'djship-backup'"),
        ('[users]\napp = "site"\ndb = "site"\n', "users: app and db are both 'site'; each component runs as a user of "
                                                "its own, so one that is compromised reaches nothing of the others"),
        ('service_user = "web"\n', "service_user: replaced by [users], a user per component (app, web, db, lb); "
                                   "remove service_user, or name the users there"),
        ('[database]\nuser = "all"\n',
         "database.user: 'all' is reserved by PostgreSQL; choose another name, e.g. the project's"),
        ('[database]\nuser = "postgres"\n', "database.user: 'postgres' is reserved by PostgreSQL"),
        ('[database]\nname = "pg_monitor"\n', "database.name: 'pg_monitor' is reserved by PostgreSQL"),
        ('[database]\nname = "template1"\n', "database.name: 'template1' is reserved by PostgreSQL"),
        ('[database]\nuser = "replication"\n', "database.user: 'replication' is reserved by PostgreSQL"),
    ],
)
def test_a_value_that_would_become_code_is_refused_by_its_key_path(extra, expected):
    assert config_error(config_with(extra)).startswith(f"djship.toml: {expected}")


def config_with(extra: str) -> str:
    """MINIMAL with extra: top-level keys before it, sections after it ([project] keys join MINIMAL's, its last)."""
    if extra.startswith("[project]\n"):
        return MINIMAL + extra.removeprefix("[project]\n")
    return MINIMAL + extra if extra.startswith("[") else extra + MINIMAL


def test_the_default_database_name_is_refused_when_postgresql_reserves_it():
    text = MINIMAL.replace("mysite.settings", "postgres.settings").replace("mysite.wsgi", "postgres.wsgi")

    assert config_error(text) == (
        "djship.toml: database.name: the default 'postgres' (the name of project.settings_module's package) is "
        "reserved by PostgreSQL; set database.name to another name"
    )
    assert parse_config(text + '[database]\nname = "shop"\n').database.name == "shop"


def test_host_root_with_a_carriage_return_is_refused():
    text = REMOTE.replace('root = "/opt/djship"', 'root = "/opt/x\\r[program:pwn]\\rcommand=/bin/id"')

    assert config_error(text).startswith("djship.toml: hosts.app2.root: contains the control character '\\r'")


@pytest.mark.parametrize("root", ["/", "/tmp", "/var/lib", "/opt/../etc", "/var/lib/../..", "//tmp"])
def test_host_root_that_is_a_system_directory_is_refused(root):
    message = config_error(REMOTE.replace('root = "/opt/djship"', f'root = "{root}"'))

    assert message.startswith("djship.toml: hosts.app2.root: ") and "is a system directory" in message


def write_project(directory: Path, extra: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(config_with(extra))
    return directory


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('state_dir = ".."\n', "state_dir: {parent} holds the project itself"),
        ('state_dir = "."\n', "state_dir: {project} holds the project itself"),
        ('state_dir = "sub/../.."\n', "state_dir: {parent} holds the project itself"),
        ('state_dir = "{parent}"\n', "state_dir: {parent} holds the project itself"),
        ('state_dir = "/tmp"\n', "state_dir: /tmp is a system directory; choose a directory of its own"),
        ('state_dir = "/"\n', "state_dir: / is a system directory"),
        ('state_dir = "/var/../etc"\n', "state_dir: /etc is a system directory"),
        ('state_dir = "/root"\n', "state_dir: /root is a system directory"),
        ('[backup]\ndir = "/tmp"\n', "backup.dir: /tmp is a system directory"),
        ('[backup]\ndir = "/home"\n', "backup.dir: /home is a system directory"),
        ('[backup]\ndir = ".."\n', "backup.dir: {parent} holds the project itself"),
        ('[backup]\ndir = ".djship"\n', "backup.dir: {project}/.djship holds the state directory"),
    ],
)
def test_a_state_or_backup_dir_that_holds_the_project_or_the_system_is_refused(tmp_path, extra, expected):
    project = write_project(tmp_path / "site", extra.format(parent=tmp_path))

    with pytest.raises(DjshipError) as caught:
        load_config(project)
    assert str(caught.value).startswith(
        f"{project / CONFIG_FILE}: " + expected.format(parent=tmp_path, project=project)
    )


def test_the_home_directory_is_never_a_state_dir(tmp_path):
    project = write_project(tmp_path / "site", f"state_dir = {json.dumps(str(Path.home()))}\n")

    with pytest.raises(DjshipError, match=r"state_dir: .* is a system directory"):
        load_config(project)


def test_a_state_dir_nginx_cannot_hold_is_refused_and_one_elsewhere_accepted(tmp_path):
    project = write_project(tmp_path / "a$b", "")

    with pytest.raises(DjshipError, match=r"state_dir: .*a\$b/\.djship contains '\$', which nginx reads as a variable; "
                                          r"choose a path without it$"):
        load_config(project)
    (project / CONFIG_FILE).write_text(config_with(f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"))
    assert load_config(project).state_dir == str(tmp_path / "state")


def test_a_project_directory_with_a_newline_is_named_on_one_line(tmp_path):
    project = write_project(tmp_path / "a\nb", "")

    with pytest.raises(DjshipError) as caught:
        load_config(project)

    assert str(caught.value) == (
        f"{str(project / CONFIG_FILE)!r}: project: the project directory {str(project)!r} contains the control "
        "character '\\n'; move the project to a directory without it"
    )


def test_state_and_backup_dirs_beside_the_project_are_accepted_its_parent_refused(tmp_path):
    project = write_project(tmp_path / "my site [/x]", "")
    (project / CONFIG_FILE).write_text(config_with('state_dir = "../state"\n') + '[backup]\ndir = "../backups"\n')
    assert load_config(project).state_dir == "../state"

    (project / CONFIG_FILE).write_text(config_with('state_dir = "../state/.."\n'))
    with pytest.raises(DjshipError, match=r"state_dir: .* holds the project itself"):
        load_config(project)
