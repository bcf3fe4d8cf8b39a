"""How the suite splits over pytest-xdist's workers (`./bootstrap test` runs two, `--dist loadgroup`).

Each worker has loopback ports and addresses, a test subnet and SFTP user names of its own (OFFSET in
tests/e2e/conftest.py, tests/e2e/hosts.py), so two systems never collide, on one machine or on netns hosts. Each e2e
module is a group (its module-scoped system comes up once, on one worker); a module written for both topologies is
two, one per topology, so its two systems come up side by side; unit tests go wherever a worker is free.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.cache
def _source(path: Path) -> str:
    return path.read_text()


def _group(item: pytest.Item) -> str | None:
    path = item.path
    if path.parent.name != "e2e":
        return None
    if "ONE_MACHINE" in _source(path) and "[netns hosts" in item.nodeid:  # written once for both topologies
        return f"{path.stem}-on-hosts"
    return path.stem


def pytest_itemcollected(item: pytest.Item) -> None:
    """Before xdist's pytest_collection_modifyitems reads the groups (it names each test by its group; with pytest 9
    it no longer can, hence pytest < 9 in the test dependencies)."""
    group = _group(item)
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))
