"""The external programs djship drives, found once; a missing one is named with the command that installs it."""

from __future__ import annotations

import glob
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from djship.errors import DjshipError

# Debian's libnginx-mod-http-brotli-filter and -static; brotli is used only when both are installed.
BROTLI_MODULES = ("/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so",
                  "/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")
MIME_TYPES_CANDIDATES = ("/etc/nginx/mime.types", "/usr/local/nginx/conf/mime.types", "/opt/homebrew/etc/nginx/mime.types")


@dataclass(frozen=True)
class Tools:
    nginx: str
    haproxy: str
    pg_bindir: str
    mime_types: str
    python: str
    brotli_modules: tuple[str, ...] = ()
    """The nginx brotli modules to load (compression on the fly and brotli_static), when installed."""
    redis_server: str = ""
    """redis-server, where installed (only [redis] needs it); empty: not installed."""
    pgbouncer: str = ""
    """pgbouncer, where installed (only database.pooler needs it); empty: not installed."""
    tls_curves: tuple[str, ...] = ()
    """The key exchange groups of Mozilla's list that this HAProxy accepts (components/balancer.py probes them);
    none: HAProxy's own default."""

    pgbackrest: str = ""
    """pgbackrest, where installed (only backup.archive needs it); empty: not installed."""

    def pg(self, program: str) -> str:
        return str(Path(self.pg_bindir) / program)

    @property
    def pg_major(self) -> int | None:
        """PostgreSQL's major version, from Debian's /usr/lib/postgresql/<major>/bin; None where the path does not
        name it."""
        parts = Path(self.pg_bindir).parts
        return int(parts[-2]) if len(parts) >= 2 and parts[-1] == "bin" and parts[-2].isdigit() else None


def _pg_bindir() -> str | None:
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if versioned:
        return str(Path(versioned[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).resolve().parent) if initdb else None


def find_tools() -> Tools:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    pg_bindir = _pg_bindir()
    mime_types = next((path for path in MIME_TYPES_CANDIDATES if Path(path).is_file()), None)
    missing = [
        package
        for package, found in (("nginx", nginx and mime_types), ("haproxy", haproxy), ("postgresql", pg_bindir))
        if not found
    ]
    if missing:
        raise DjshipError(
            f"missing {', '.join(missing)}; install with: sudo apt-get install -y {' '.join(missing)}"
        )
    brotli_modules = BROTLI_MODULES if all(Path(module).is_file() for module in BROTLI_MODULES) else ()
    redis_server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin") or ""
    pgbouncer = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin") or ""
    return Tools(nginx=nginx, haproxy=haproxy, pg_bindir=pg_bindir, mime_types=mime_types, python=sys.executable,
                 brotli_modules=brotli_modules, redis_server=redis_server, pgbouncer=pgbouncer,
                 pgbackrest=shutil.which("pgbackrest") or shutil.which("pgbackrest", path="/usr/bin") or "")
