"""The daily backup, run by the supervisor as the program `backup-scheduler` when backup.schedule is set.

    python -m djship.ops.schedule --at 03:30 /path/to/project

Sleeps until the UTC time of day, runs `djship backup` for the project, and sleeps again. A backup that fails
is logged (in logs/backup-scheduler.log) and tried again the next day.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone

from djship.ops.archive import seconds_until


def backup_argv(project_dir: str) -> list[str]:
    return [sys.executable, "-m", "djship", "-C", project_dir, "backup"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="djship-backup-scheduler")
    parser.add_argument("--at", required=True, help='UTC time of day, "HH:MM"')
    parser.add_argument("project_dir")
    args = parser.parse_args(argv)
    while True:
        wait = seconds_until(datetime.now(timezone.utc), args.at)
        print(f"next backup at {args.at} UTC, in {wait / 3600:.1f} h", flush=True)
        time.sleep(wait)
        code = subprocess.run(backup_argv(args.project_dir)).returncode
        print(f"djship backup exited {code}", flush=True)


if __name__ == "__main__":
    main()
