"""Property-based fuzz of config loading -> plan -> every renderer (hypothesis).

Whatever djship.toml says, djship either refuses it with its own one-line error or renders files that say exactly
what djship meant: supervisord.conf holds the programs djship made and nothing else, the generated Python holds the
statements of its template and nothing else, pg_hba.conf the rules djship wrote. A few of the accepted configs are
also rendered to disk and checked by the real `nginx -t`, `haproxy -c` and supervisor's own parser (a bounded
number, so the test stays fast). The injections from issue 11 are fixed examples.
"""

from __future__ import annotations

import ast
import functools
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from supervisor.options import ServerOptions, UnhosedConfigParser

from djship import render
from djship.config import CONFIG_FILE, Config, load_config, parse_config
from djship.errors import DjshipError
from djship.hosts import remote_hosts
from djship.plan import HostSpec, Plan, build_plans
from djship.tls import local_ca
from djship.tools import Tools
from djship.topology import local_spec

PROJECT = {"settings_module": "board.settings", "wsgi_application": "board.wsgi.application"}
RELEASE_ID = "20260101-000000"

# The injections issue 11 found, and their kin: each tries to end the value's quoting or line in some target file.
INJECTIONS = [
    "/srv/x\n[program:pwn]\ncommand=/bin/id\nuser=root\n",
    '/srv/x"); import os; os.system("id"); ("',
    "/srv/x;include /etc/passwd;",
    "/srv/x\r[program:pwn]\rcommand=/bin/id\ruser=root",
    "/srv/x ;include /etc/passwd",
    "/srv/$document_root",
    "/srv/%(here)s/x",
    "/srv/a'b",
    "/srv/a\\b",
    "/srv/a,b",
    "/srv/a b",
    "/srv/{x}#1",
    "/srv/x\x00y",
    "/srv/x\x7fy",
    "~nosuchuser/x",
    "..",
    ".",
    "/",
    "/tmp",
    "/etc",
    "[/x]",
    "all",
    "postgres",
    "pg_signal_backend",
    "root",
    "",
    " ",
]
AWKWARD = " \"'\\$%;#{}[](),:=@~*?!&|<>`\t\n\r\x00\x7féx/-._"
# What a path may hold once quoted (the config refuses the rest), so that many fuzzed paths are accepted and rendered.
QUOTABLE = ' "%;#{}[]():=@~*?!&|<>`éx/-._ab'
texts = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(alphabet=AWKWARD + "abc", max_size=24),
    st.text(max_size=12),
)
paths = st.one_of(
    st.builds("/srv/{}".format, st.text(alphabet=QUOTABLE, min_size=1, max_size=16)),
    st.text(alphabet=QUOTABLE, min_size=1, max_size=16),
    texts,
)
values = st.one_of(texts, st.integers(-5, 70000), st.booleans(), st.lists(texts, max_size=3))
# Per key: values djship should accept (or refuse for a reason of their own), beside the fuzzed text and values.
PLAUSIBLE = {
    "state_dir": paths, "users.app": st.sampled_from(["djship-app", "web", "nobody"]),
    "users.db": st.sampled_from(["djship-db", "web", "root"]),
    "project.settings_module": st.sampled_from(["board.settings", "shop.conf.prod"]),
    "project.wsgi_application": st.sampled_from(["board.wsgi.application", "shop.wsgi.app"]),
    "project.asgi_application": st.sampled_from(["board.asgi.application", "shop.routing.app"]),
    "app.interface": st.sampled_from(["wsgi", "asgi"]), "app.threads": st.integers(1, 4),
    "project.requirements": paths, "project.python": paths, "project.manage_py": paths,
    "project.exclude": st.lists(texts, max_size=3),
    "site.domains": st.sampled_from([["localhost"], ["shop.example.com", "www.example.com"]]),
    "site.hsts_seconds": st.integers(1, 10**8),
    "app.servers": st.integers(1, 4), "app.workers": st.integers(1, 8), "app.port": st.sampled_from([8000, 9000]),
    "app.timeout": st.integers(1, 3600), "app.max_body_size": st.sampled_from(["10M", "1G", "512k"]),
    "app.health_path": st.sampled_from(["/-/h", "/health.check"]), "app.address_prefix": st.just("127.0.5"),
    "database.name": st.sampled_from(["shop", "app_db"]), "database.user": st.sampled_from(["shop_user", "web"]),
    "database.port": st.sampled_from([15432, 20000]), "database.address": st.just("127.0.9.1"),
    "database.max_connections": st.integers(10, 500),
    "tls.mode": st.sampled_from(["local", "acme", "files"]), "tls.cert_file": paths, "tls.key_file": paths,
    "tls.acme_ca_bundle": paths, "tls.acme_email": st.just("ops@example.com"),
    "tls.acme_directory": st.just("https://acme.example/dir"),
    "backup.dir": paths, "backup.keep": st.integers(1, 30), "backup.schedule": st.sampled_from(["03:30", "23:59"]),
    "ssh.key": paths, "ssh.known_hosts": paths, "ssh.user": st.sampled_from(["root", "deploy"]),
}


@st.composite
def documents(draw) -> dict:
    """A djship.toml as data: a valid base with a few keys set to plausible or fuzzed values, maybe remote."""
    document: dict = {"project": dict(PROJECT)}
    for dotted in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=4, unique=True)):
        value = draw(st.one_of(PLAUSIBLE[dotted], texts, values))
        *section, key = dotted.split(".")
        (document.setdefault(section[0], {}) if section else document)[key] = value
    if document.get("app", {}).get("interface") == "asgi" and draw(st.booleans()):
        document["project"].setdefault("asgi_application", "board.asgi.application")
    if draw(st.booleans()):
        document["servers"] = {"lb": ["lb1"], "app": ["app1"], "db": "db1"}
        document["hosts"] = {
            "lb1": {"address": "10.0.0.10"},
            "app1": {"address": "10.0.0.11", "root": draw(paths)},
            "db1": {"address": "10.0.0.20", "ssh_key": draw(paths)},
        }
    return document


def with_path(key: str, value: str) -> dict:
    """The minimal document with one path key set."""
    document: dict = {"project": dict(PROJECT)}
    if key == "hosts.root":
        document["servers"] = {"lb": ["lb1"], "app": ["app1"], "db": "db1"}
        document["hosts"] = {"lb1": {"address": "10.0.0.10"}, "app1": {"address": "10.0.0.11", "root": value},
                             "db1": {"address": "10.0.0.20"}}
    elif "." in key:
        section, name = key.split(".")
        document[section] = {name: value}
    else:
        document[key] = value
    return document


def plans_of(config: Config, project_dir: Path, tools, running_as_root: bool) -> list[Plan]:
    if config.remote:
        specs = [HostSpec(host.name, host.target.address, host.roles, Path(str(host.root)), tools, running_as_root)
                 for host in remote_hosts(config, project_dir)]
    else:
        specs = [local_spec(config, project_dir, tools, running_as_root)]
    return list(build_plans(config, project_dir, specs).values())


def check_supervisord(plan: Plan, text: str) -> None:
    """Read by supervisor's own parser and expanded as supervisord expands it: exactly the programs djship meant, each
    with its own command, user and log (no injected section or key)."""
    parser = UnhosedConfigParser()
    parser.read_string(text)
    programs = render.programs(plan)
    expected = {"unix_http_server", "supervisord", "rpcinterface:supervisor", "supervisorctl"}
    assert set(parser.sections()) == expected | {f"program:{program.name}" for program in programs}
    for program in programs:
        section = parser[f"program:{program.name}"]
        assert shlex.split(section["command"] % {}) == shlex.split(program.command)
        assert section.get("user") == program.user
        assert section["stdout_logfile"] % {} % {} == str(plan.paths.logs / f"{program.name}.log")


def statement_shape(text: str) -> list[str]:
    """The kinds and targets of a module's top-level statements: what an injected statement would change."""
    return [
        f"{type(node).__name__} {' '.join(ast.unparse(target) for target in getattr(node, 'targets', []))}"
        for node in ast.parse(text).body
    ]


@functools.cache
def reference_shapes(tools: Tools, interface: str) -> dict[str, list[str]]:
    """The statements of the generated Python files for a plain project served as WSGI or ASGI."""
    config = parse_config('[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.app"\n'
                          f'asgi_application = "board.asgi.app"\n[app]\ninterface = "{interface}"\n')
    plan = plans_of(config, Path("/srv/example/board"), tools, False)[0]
    return {
        "settings": statement_shape(render.production_settings(plan, RELEASE_ID, plan.paths.releases)),
        "gunicorn": statement_shape(render.gunicorn_conf(plan, plan.app_servers[0])),
    }


def render_everything(plan: Plan, tools: Tools) -> None:
    shapes = reference_shapes(tools, plan.interface)
    for config_file in render.system_files(plan):
        if config_file.path.name == "supervisord.conf":
            check_supervisord(plan, config_file.text)
        if config_file.path.name == "pg_hba.conf":
            rules = [line.split() for line in config_file.text.splitlines() if line and not line.startswith("#")]
            app_kind = "hostssl" if plan.database.tls else "host"
            assert all(
                (database, method) == ("all", "scram-sha-256")
                and (kind, user) in ((app_kind, plan.database.user), ("host", plan.database.superuser))
                for kind, database, user, _, method in rules
            ), rules
        if config_file.path.name == "gunicorn.conf.py":
            assert statement_shape(config_file.text) == shapes["gunicorn"]
    if plan.holds("app"):
        settings_text = render.production_settings(plan, RELEASE_ID, plan.paths.releases / RELEASE_ID)
        assert statement_shape(settings_text) == shapes["settings"]
        static_root = next(ast.literal_eval(node.value) for node in ast.parse(settings_text).body
                           if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "STATIC_ROOT")
        assert static_root == str(plan.paths.releases / RELEASE_ID / "static")


@pytest.fixture(scope="module")
def project_dir():
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        yield Path(directory) / "board"


# ---- every config: djship's own error, or files that say exactly what djship meant ----------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents(), running_as_root=st.booleans())
@example(document=with_path("state_dir", INJECTIONS[0]), running_as_root=True)
@example(document=with_path("state_dir", INJECTIONS[1]), running_as_root=True)
@example(document=with_path("state_dir", INJECTIONS[2]), running_as_root=True)
@example(document=with_path("hosts.root", INJECTIONS[3]), running_as_root=True)
@example(document=with_path("backup.dir", "/tmp"), running_as_root=True)
@example(document=with_path("state_dir", ".."), running_as_root=True)
@example(document=with_path("database.user", "all"), running_as_root=True)
@example(document=with_path("tls.cert_file", "~nosuchuser/site.crt"), running_as_root=False)
@example(document=with_path("ssh.known_hosts", "~nosuchuser/known_hosts"), running_as_root=False)
@example(document={"project": {**PROJECT, "asgi_application": 'x"\nimport os'}, "app": {"interface": "asgi"}},
         running_as_root=True)
@example(document={"project": {**PROJECT, "asgi_application": "shop.routing.app"}, "app": {"interface": "asgi"}},
         running_as_root=True)
def test_any_config_is_refused_by_djship_or_renders_only_what_djship_meant(
    document, running_as_root, project_dir, fake_tools
):
    project_dir.mkdir(exist_ok=True)
    (project_dir / CONFIG_FILE).write_text(tomlkit.dumps(document), encoding="utf-8")
    try:
        config = load_config(project_dir)
        plans = plans_of(config, project_dir, fake_tools, running_as_root)
    except DjshipError as error:
        assert "\n" not in str(error) and "\r" not in str(error)
        event("refused with djship's error")
        return
    event("accepted and rendered")
    for plan in plans:
        render_everything(plan, fake_tools)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
@example(text='[project]\nsettings_module = "a.b"\nwsgi_application = "a.w.app"\nstate_dir = "/srv/x\\u0000"\n')
@example(text='[project]\nsettings_module = "a.b"\nwsgi_application = "a.w.app"\n[tls]\ncert_file = "~nobody_x/c"\n')
def test_any_text_is_refused_with_djships_one_line_error_or_planned(text, project_dir, fake_tools):
    project_dir.mkdir(exist_ok=True)
    (project_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    try:
        plans_of(load_config(project_dir), project_dir, fake_tools, running_as_root=False)
    except DjshipError as error:
        assert "\n" not in str(error)


# ---- a bounded number of accepted paths, checked by the real programs --------------------------------------------

# Directory names without / (the fixed examples nest, never with ..): the state stays inside the test's directory.
components = st.one_of(
    st.text(alphabet=QUOTABLE.replace("/", ""), min_size=1, max_size=10),
    st.text(alphabet=AWKWARD.replace("/", "") + "ab", min_size=1, max_size=10),
).filter(lambda name: name not in (".", ".."))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=components, project_name=components.filter(lambda name: "\x00" not in name))  # a name on disk
@example(name='x";include /etc/passwd;"', project_name="board")
@example(name='x"); import os; os.system("id"); ("', project_name="it's $HOME, a,b")
@example(name="a b", project_name="a b")
@example(name="%(here)s {x}#1 é", project_name="%(here)s")
def test_accepted_paths_make_files_the_real_nginx_haproxy_and_supervisor_accept(
    name, project_name, real_tools, fake_tools
):
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        project = Path(directory) / "project" / project_name
        project.mkdir(parents=True)
        state = Path(directory) / name
        document = {"project": dict(PROJECT), "state_dir": str(state), "tls": {"mode": "acme"},
                    "site": {"domains": ["shop.example.com"]}, "app": {"servers": 1},
                    "backup": {"schedule": "03:30"},
                    # accounts every Debian machine has: supervisord refuses a program whose user does not exist
                    "users": {"app": "daemon", "web": "www-data", "db": "bin", "lb": "sys"}}
        (project / CONFIG_FILE).write_text(tomlkit.dumps(document), encoding="utf-8")
        try:
            config = load_config(project)
        except DjshipError:
            event("refused with djship's error")
            return
        event("accepted and checked by the real programs")
        plan = plans_of(config, project, real_tools, running_as_root=True)[0]
        assert plan.paths.state == state.resolve() and plan.paths.state.is_relative_to(Path(directory).resolve())
        render_everything(plan, fake_tools)
        for config_file in render.system_files(plan):
            config_file.path.parent.mkdir(parents=True, exist_ok=True)
            config_file.path.write_text(config_file.text, encoding="utf-8")
        plan.paths.logs.mkdir()
        server = plan.app_servers[0]
        server.nginx_temp.mkdir()
        plan.paths.site_pem.parent.mkdir()
        plan.paths.site_pem.write_bytes(local_ca.issue_site_certificate(local_ca.new_authority("fuzz"), plan.domains))

        nginx = run(plan.tools.nginx, "-t", "-c", server.nginx_conf, "-p", server.dir, "-e", "stderr")
        assert nginx.returncode == 0, nginx.stderr
        haproxy = run(plan.tools.haproxy, "-c", "-f", plan.paths.haproxy_conf)
        assert haproxy.returncode == 0, haproxy.stdout + haproxy.stderr
        options = ServerOptions()
        options.realize(args=["-c", str(plan.paths.supervisor_conf)])
        assert sorted(group.name for group in options.process_group_configs) == sorted(
            program.name for program in render.programs(plan))
        assert options.logfile == str(plan.paths.logs / "supervisord.log")
        assert options.server_configs[0]["file"] == str(plan.paths.supervisor_socket)
        processes = {group.name: group.process_configs[0] for group in options.process_group_configs}
        for program in render.programs(plan):
            assert shlex.split(processes[program.name].command) == shlex.split(program.command)
            assert processes[program.name].directory == program.directory
        assert str(plan.paths.plan_file) in shlex.split(processes[render.BACKUP_SCHEDULER].command)


def run(*command) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=30)
