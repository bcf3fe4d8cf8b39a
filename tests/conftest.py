"""How the suite splits over pytest-xdist's workers (`./bootstrap test` runs two, `--dist loadgroup`).

Each worker has loopback ports and addresses of its own (tests/e2e/conftest.py, OFFSET), so two one-machine systems
never collide. The netns test hosts do share one thing, /etc/passwd, where the media host's and the backup host's
SFTP users have their home in that host's root: two fleets at once would each move it. So every test on netns hosts
runs in one group, on one worker, one after another; each one-machine e2e module is a group of its own (its
module-scoped system comes up once, on one worker); unit tests go wherever a worker is free.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

HOSTS_GROUP = "netns-hosts"


@functools.cache
def _source(path: Path) -> str:
    return path.read_text()


def _group(item: pytest.Item) -> str | None:
    path = item.path
    if path.parent.name != "e2e":
        return None
    source = _source(path)
    if "netns_hosts" not in source:
        return path.stem
    if "ONE_MACHINE" in source:  # written once for both topologies: split by the parameter
        return HOSTS_GROUP if "[netns hosts" in item.nodeid else path.stem
    return HOSTS_GROUP


def pytest_itemcollected(item: pytest.Item) -> None:
    """Before xdist's pytest_collection_modifyitems reads the groups (it names each test by its group; with pytest 9
    it no longer can, hence pytest < 9 in the test dependencies)."""
    group = _group(item)
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))
