"""Which database and media directory the app servers use.

Until the first restore these are the plan's (database.name, .djship/shared/media). A restore switches one app
server at a time: it writes the server's own servers/appN/live.json (read by the generated settings when that
server's gunicorn starts, so a restart switches it without a new release), and once every server runs on the
restored database, .djship/live.json, which new app servers, `djship manage`, `status` and backups go by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import Plan


@dataclass(frozen=True)
class Live:
    database: str
    media: Path

    def to_json(self) -> str:
        return json.dumps({"database": self.database, "media": str(self.media)}, indent=2) + "\n"


def parse_live(plan: Plan, content: bytes | None) -> Live:
    if content is None:
        return Live(plan.database.name, plan.media_dir)
    try:
        data = json.loads(content)
        return Live(str(data["database"]), Path(data["media"]))
    except (ValueError, KeyError, TypeError):
        raise DjshipError(
            f"{plan.paths.live} is not valid (it names the live database and media directory); "
            'restore it to {"database": "<name>", "media": "<dir>"}'
        ) from None


def read_live(plan: Plan, connector: Connector) -> Live:
    return parse_live(plan, connector.get(plan.paths.live))


def write_live(plan: Plan, connector: Connector, live: Live) -> None:
    connector.put(plan.paths.live, live.to_json(), mode=0o644)
