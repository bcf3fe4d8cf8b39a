"""System users djship makes on a host (useradd, usermod)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from djship.connectors import Connector, Result

LOCK_RETRIES = 20
LOCK_WAIT = 0.5


def change_users(connector: Connector, argv: Sequence[str]) -> Result:
    """Run useradd or usermod, again while another one holds the lock of /etc/passwd: shadow's tools give up at once
    ("cannot lock /etc/passwd; try again later"), and hosts that share the file may run several at a time."""
    for _ in range(LOCK_RETRIES):
        result = connector.run(argv)
        if result.ok or "cannot lock" not in result.stderr:
            return result
        time.sleep(LOCK_WAIT)
    return result
