"""The app's environment: plain values from [env] in djship.toml and the secrets `djship env` keeps, their names and
values checked, a .env file read, and the one file format both are kept in on a host.

A host keeps them in POSIX shell syntax (`KEY='value'`, quoted by shlex), which every program of the app sources
just before it execs (render.with_app_environment), so a value may hold any character but NUL, a newline included.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from djship.errors import DjshipError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What djship sets itself in the app's environment (plan.PROGRAM_ENVIRONMENT, gunicorn's raw_env, a process's
# settings and virtualenv); the supervisor adds its SUPERVISOR_* variables.
DJSHIP_SETS = frozenset({"PATH", "LANG", "DJANGO_SETTINGS_MODULE", "PYTHONPATH"})
DJSHIP_PREFIXES = ("DJSHIP_", "SUPERVISOR_")


def name_problem(name: str) -> str | None:
    """Why name cannot be a variable of the app's environment, or None."""
    if not _NAME.fullmatch(name):
        return (f"{name!r} is not a variable name (letters, digits and _, not starting with a digit); "
                "rename it, e.g. STRIPE_SECRET_KEY")
    if name in DJSHIP_SETS or name.startswith(DJSHIP_PREFIXES):
        return f"{name} is set by djship itself; choose another name"
    return None


def value_problem(name: str, value: str) -> str | None:
    """Why value cannot be the value of name, or None: an environment variable ends at NUL."""
    return f"{name} contains a NUL character, which no environment variable can hold; remove it" if "\0" in value \
        else None


def checked(values: dict[str, str], where: str) -> dict[str, str]:
    """values, refused with one line naming the first bad name or value (where: e.g. "djship env set")."""
    for name, value in values.items():
        problem = name_problem(name) or value_problem(name, value)
        if problem:
            raise DjshipError(f"{where}: {problem}")
    return values


def parse_assignments(arguments: list[str], read_value: Callable[[str], str]) -> dict[str, str]:
    """The KEY=VALUE (or KEY alone: read_value(KEY) gives its value) arguments of `djship env set`, checked."""
    values = {}
    for argument in arguments:
        name, equals, value = argument.partition("=")
        if name_problem(name) is None and not equals:
            value = read_value(name)
        values[name] = value
    return checked(values, "djship env set")


def listing(plain: tuple[tuple[str, str], ...], secrets: dict[str, str], show: bool) -> list[dict]:
    """`djship env list`: every variable djship adds to the app's environment, by name; a secret's value is None
    unless show."""
    rows = [{"name": name, "value": value, "secret": False} for name, value in plain]
    rows += [{"name": name, "value": value if show else None, "secret": True} for name, value in secrets.items()]
    return sorted(rows, key=lambda row: row["name"])


def read_dotenv(path: Path) -> dict[str, str]:
    """A .env file, read by python-dotenv: `KEY=value`, `export KEY=value`, quotes, comments, multi-line quoted
    values. Values are taken literally: `${OTHER}` is not expanded (expansion would read the shell djship runs in)."""
    from dotenv import dotenv_values

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DjshipError(f"djship env import: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise DjshipError(f"djship env import: {path}: {missing[0]} has no value; write {missing[0]}=VALUE (or "
                          f"{missing[0]}= for an empty one)")
    if not values and text.strip():
        raise DjshipError(f"djship env import: {path} holds no KEY=VALUE line; is it a .env file?")
    return checked({name: value for name, value in values.items() if value is not None}, f"djship env import {path}")


def parse_env_file(text: str) -> dict[str, str]:
    """The values of a file written by render.env_file (its exact inverse)."""
    values = {}
    for word in shlex.split(text, comments=True):
        name, _, value = word.partition("=")
        values[name] = value
    return values
