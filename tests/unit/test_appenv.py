"""The app's environment: names and values checked, [env] validated with its key, .env files read by python-dotenv,
the shell file a host keeps them in (read back exactly, and sourced by the real /bin/sh exactly), `djship env` on the
command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from djship import appenv, render
from djship.cli import main
from djship.config import parse_config
from djship.errors import DjshipError
from djship.plan import PROGRAM_ENVIRONMENT

PROJECT = '[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.application"\n'
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(lambda name: appenv.name_problem(name) is None)
VALUES = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize("name", ["STRIPE_SECRET_KEY", "_private", "a1", "SENTRY_DSN"])
def test_shell_identifiers_are_names(name):
    assert appenv.name_problem(name) is None


@pytest.mark.parametrize("name, problem", [
    ("1ST", "is not a variable name"), ("MY-KEY", "is not a variable name"), ("", "is not a variable name"),
    ("A B", "is not a variable name"), ("PATH", "is set by djship itself"), ("LANG", "is set by djship itself"),
    ("DJANGO_SETTINGS_MODULE", "is set by djship itself"), ("PYTHONPATH", "is set by djship itself"),
    ("DJSHIP_LIVE_FILE", "is set by djship itself"), ("SUPERVISOR_ENABLED", "is set by djship itself"),
])
def test_names_that_are_no_identifier_or_that_djship_sets_are_refused(name, problem):
    assert problem in appenv.name_problem(name)


def test_what_the_supervisor_starts_with_is_reserved():
    assert all(appenv.name_problem(name) for name in PROGRAM_ENVIRONMENT)


def test_env_in_djship_toml_takes_strings_and_numbers():
    config = parse_config(PROJECT + '[env]\nSENTRY_ENVIRONMENT = "production"\nWORKERS = 4\nRATIO = 0.5\n')

    assert config.env == {"SENTRY_ENVIRONMENT": "production", "WORKERS": 4, "RATIO": 0.5}


@pytest.mark.parametrize("table, message", [
    ('PATH = "/opt/bin"', "djship.toml: env: PATH is set by djship itself; choose another name"),
    ('"my-key" = "x"', "djship.toml: env: 'my-key' is not a variable name (letters, digits and _, not starting with a "
                       "digit); rename it, e.g. STRIPE_SECRET_KEY"),
    ("DEBUG = true", 'djship.toml: env: DEBUG must be a string or a number; quote it: DEBUG = "..."'),
    ("HOSTS = [1, 2]", 'djship.toml: env: HOSTS must be a string or a number; quote it: HOSTS = "..."'),
    ('KEY = "a\\u0000b"', "djship.toml: env: KEY contains a NUL character, which no environment variable can hold; "
                          "remove it"),
])
def test_bad_env_in_djship_toml_is_one_line_naming_it(table, message):
    with pytest.raises(DjshipError) as error:
        parse_config(PROJECT + "[env]\n" + table + "\n")
    assert str(error.value) == message


def test_a_dotenv_file_is_read_literally(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME_OF_THE_DEPLOYER", "/root")
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# the team's secrets\n"
        "export STRIPE_SECRET_KEY=sk_live_1\n"
        "SENTRY_DSN='https://k@sentry.example/1' # a comment\n"
        'TLS_KEY="-----BEGIN KEY-----\nabc\n-----END KEY-----"\n'
        "EMPTY=\n"
        "NOT_EXPANDED=${HOME_OF_THE_DEPLOYER}/x\n"
    )

    assert appenv.read_dotenv(dotenv) == {
        "STRIPE_SECRET_KEY": "sk_live_1", "SENTRY_DSN": "https://k@sentry.example/1",
        "TLS_KEY": "-----BEGIN KEY-----\nabc\n-----END KEY-----", "EMPTY": "", "NOT_EXPANDED": "${HOME_OF_THE_DEPLOYER}/x",
    }


@pytest.mark.parametrize("text, message", [
    ("LONELY\n", "LONELY has no value; write LONELY=VALUE (or LONELY= for an empty one)"),
    ("PATH=/x\n", "PATH is set by djship itself; choose another name"),
    ("just some words\n", "holds no KEY=VALUE line; is it a .env file?"),
])
def test_a_bad_dotenv_file_is_one_line_naming_the_problem(tmp_path, text, message):
    dotenv = tmp_path / ".env"
    dotenv.write_text(text)
    with pytest.raises(DjshipError) as error:
        appenv.read_dotenv(dotenv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_assignments_take_key_equals_value_or_read_the_value_of_a_key_alone():
    asked = []

    values = appenv.parse_assignments(["A=1", "B=x=y", "C=", "SECRET"], lambda name: asked.append(name) or "typed")

    assert values == {"A": "1", "B": "x=y", "C": "", "SECRET": "typed"} and asked == ["SECRET"]
    with pytest.raises(DjshipError, match="^djship env set: 'a-b' is not a variable name"):
        appenv.parse_assignments(["a-b=1"], lambda name: "")


def test_listing_masks_secrets_unless_shown():
    rows = appenv.listing((("PLAIN", "p"),), {"SECRET": "s"}, show=False)

    assert rows == [{"name": "PLAIN", "value": "p", "secret": False}, {"name": "SECRET", "value": None, "secret": True}]
    assert appenv.listing((), {"SECRET": "s"}, show=True) == [{"name": "SECRET", "value": "s", "secret": True}]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=5))
def test_the_env_file_reads_back_exactly(values):
    assert appenv.parse_env_file(render.env_file(values.items(), render.ENV_SECRETS_ORIGIN)) == values


def test_the_env_file_matches_the_golden_file(golden_dir):
    text = render.env_file((("SENTRY_ENVIRONMENT", "production"), ("GREETING", "it's $HOME\nline 2")),
                           render.ENV_FILE_ORIGIN)

    assert text == (golden_dir / "env").read_text(encoding="utf-8")


AWKWARD = {"QUOTES": "it's \"both\"", "SHELL": "$HOME `id` $(id) \\n ; # &", "LINES": "one\ntwo\n", "EMPTY": "",
           "UNICODE": "é ✓", "SPACES": "  padded  "}


def test_a_program_started_with_the_app_environment_gets_every_value_exactly(make_plan, tmp_path):
    plan = make_plan(state_dir=str(tmp_path / "state"))
    plan.paths.secrets.mkdir(parents=True)
    plain, secrets = dict(list(AWKWARD.items())[:3]), dict(list(AWKWARD.items())[3:])
    plan.paths.env_file.write_text(render.env_file(plain.items(), render.ENV_FILE_ORIGIN))
    plan.paths.env_secrets.write_text(render.env_file(secrets.items(), render.ENV_SECRETS_ORIGIN))

    output = subprocess.run(render.with_app_environment(plan, ["/usr/bin/env", "-0"]), env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True).stdout

    environment = dict(item.split("=", 1) for item in output.decode().split("\0") if item)
    assert environment == {**AWKWARD, "PATH": "/usr/bin:/bin"}


def test_env_set_before_the_first_up_keeps_the_secret_here_0600(django_project, monkeypatch):
    monkeypatch.chdir(django_project)
    assert CliRunner().invoke(main, ["init"]).exit_code == 0

    result = CliRunner().invoke(main, ["env", "set", "STRIPE_SECRET_KEY=sk_live_1", "SENTRY_DSN"], input="dsn\n")

    assert result.exit_code == 0, result.output
    assert "the app servers get it with the next `djship up`" in result.output
    kept = django_project / ".djship/secrets/env"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert appenv.parse_env_file(kept.read_text()) == {"STRIPE_SECRET_KEY": "sk_live_1", "SENTRY_DSN": "dsn"}
    listed = CliRunner().invoke(main, ["env", "list"])
    assert "sk_live_1" not in listed.output and "********" in listed.output
    assert "sk_live_1" in CliRunner().invoke(main, ["env", "list", "--show"]).output


@pytest.mark.parametrize("args, message", [
    (["env", "set", "PATH=/opt"], "error: djship env set: PATH is set by djship itself; choose another name"),
    (["env", "unset", "NEVER_SET"], "error: there is no secret NEVER_SET; `djship env list` shows them"),
])
def test_bad_env_commands_are_one_line(django_project, monkeypatch, args, message):
    monkeypatch.chdir(django_project)
    assert CliRunner().invoke(main, ["init"]).exit_code == 0

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.output.strip() == message


def test_a_secret_cannot_shadow_a_plain_value_of_djship_toml(django_project, monkeypatch):
    monkeypatch.chdir(django_project)
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    config = Path(django_project / "djship.toml")
    config.write_text(config.read_text() + '\n[env]\nSENTRY_ENVIRONMENT = "production"\n')

    result = CliRunner().invoke(main, ["env", "set", "SENTRY_ENVIRONMENT=staging"])

    assert result.exit_code == 1
    assert result.output.strip() == ("error: SENTRY_ENVIRONMENT is a plain value in [env] of djship.toml; remove it "
                                     "there to keep it as a secret, or choose another name")
