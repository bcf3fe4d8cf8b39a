"""The daily backup, run by the supervisor as the program `backup-scheduler` on the db host when backup.schedule
is set.

    python -m djship.ops.schedule --at 03:30 -- python -m djship.agent <plan.json> backup --note daily

Sleeps until the UTC time of day, runs the command (djship's agent, which takes the backup on this host), and
sleeps again. A backup that fails is logged (`djship logs backup-scheduler`) and tried again the next day.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import datetime, timezone

from djship.ops.archive import seconds_until


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="djship-backup-scheduler")
    parser.add_argument("--at", required=True, help='UTC time of day, "HH:MM"')
    parser.add_argument("command", nargs="+", help="what to run then (after --)")
    args = parser.parse_args(argv)
    while True:
        wait = seconds_until(datetime.now(timezone.utc), args.at)
        print(f"next backup at {args.at} UTC, in {wait / 3600:.1f} h", flush=True)
        time.sleep(wait)
        code = subprocess.run(args.command).returncode
        print(f"the daily backup exited {code}", flush=True)


if __name__ == "__main__":
    main()
