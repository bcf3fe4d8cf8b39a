"""Finding a Django project's parts and writing the djship.toml that `djship init` writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from djship.config import CONFIG_FILE, parse_config
from djship.errors import DjshipError
from djship.project import discover, render_config, write_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "board"


def test_discover_finds_settings_wsgi_and_requirements(django_project: Path):
    project = discover(django_project)

    assert project.root == django_project.resolve()
    assert project.settings_module == "mysite.settings"
    assert project.wsgi_application == "mysite.wsgi.application"
    assert project.requirements == "requirements.txt"


def test_discover_falls_back_to_requirements_production(django_project: Path):
    (django_project / "requirements.txt").unlink()
    (django_project / "requirements").mkdir()
    (django_project / "requirements" / "production.txt").write_text("Django\n")

    assert discover(django_project).requirements == "requirements/production.txt"


def test_discover_falls_back_to_the_wsgi_module_when_settings_do_not_name_it(django_project: Path):
    settings = django_project / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace('WSGI_APPLICATION = "mysite.wsgi.application"\n', ""))

    assert discover(django_project).wsgi_application == "mysite.wsgi.application"


def test_directory_without_manage_py_is_not_a_django_project(tmp_path: Path):
    with pytest.raises(DjshipError, match="is not a Django project \\(no manage.py\\)"):
        discover(tmp_path)


def test_manage_py_without_settings_module_is_explained(django_project: Path):
    (django_project / "manage.py").write_text("import sys\n")

    with pytest.raises(DjshipError, match="does not set DJANGO_SETTINGS_MODULE"):
        discover(django_project)


def test_missing_requirements_names_the_fix(django_project: Path):
    (django_project / "requirements.txt").unlink()

    with pytest.raises(DjshipError) as caught:
        discover(django_project)
    assert "no requirements file" in str(caught.value)
    assert "pip freeze > requirements.txt" in str(caught.value)


def test_rendered_config_parses_and_keeps_the_found_values(django_project: Path):
    project = discover(django_project)

    config = parse_config(render_config(project))

    assert config.project.settings_module == project.settings_module
    assert config.project.wsgi_application == project.wsgi_application
    assert config.project.requirements == project.requirements
    assert config == parse_config(
        f'[project]\nsettings_module = "{project.settings_module}"\n'
        f'wsgi_application = "{project.wsgi_application}"\nrequirements = "{project.requirements}"\n'
    ), "the rendered config must show the defaults, not other values"


def test_write_config_refuses_to_overwrite_without_force(django_project: Path):
    project = discover(django_project)
    existing = django_project / CONFIG_FILE
    existing.write_text("# mine\n")

    with pytest.raises(DjshipError, match="already exists; .*djship init --force"):
        write_config(project, force=False)
    assert existing.read_text() == "# mine\n"

    assert write_config(project, force=True) == existing
    assert existing.read_text() == render_config(project)


def test_discover_on_the_example_project():
    project = discover(EXAMPLE)

    assert project.settings_module == "board.settings"
    assert project.wsgi_application == "board.wsgi.application"
    assert project.requirements == "requirements.txt"


def test_a_wsgi_application_with_quotes_and_newlines_cannot_add_keys(django_project: Path):
    settings = django_project / "mysite" / "settings.py"
    hostile = 'x"\npython = "/tmp/evil'
    settings.write_text(settings.read_text().replace('"mysite.wsgi.application"', repr(hostile)))
    project = discover(django_project)

    document = tomllib.loads(render_config(project))

    assert document["project"]["wsgi_application"] == hostile
    assert set(document["project"]) == {"settings_module", "wsgi_application", "requirements"}
