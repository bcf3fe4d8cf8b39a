"""Trusting djship's local CA on this machine, as mkcert does: the system store and the user's NSS databases.

system store   /usr/local/share/ca-certificates/djship-<fingerprint>.crt, then update-ca-certificates
               (OpenSSL and GnuTLS programs: curl, wget, Python's ssl, git)
NSS databases  ~/.pki/nssdb (Chromium, created when missing), the Chromium snap's and every Firefox profile's, with
               certutil from libnss3-tools; the CA is trusted to issue site certificates only (-t C,,)

The builders return argv lists and are tested by exact value; `trust` and `untrust` run them and return one line
per store they changed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.plan import Plan

SYSTEM_STORE = Path("/usr/local/share/ca-certificates")
CERTUTIL = "certutil"
CHROMIUM_SNAP = "snap/chromium/current/.pki/nssdb"
FIREFOX_PROFILES = (".mozilla/firefox", "snap/firefox/common/.mozilla/firefox")


@dataclass(frozen=True)
class LocalCA:
    path: Path
    nickname: str
    """Its name in NSS databases: the CA's common name and fingerprint, so each project's CA is its own entry."""
    system_file: Path

    @classmethod
    def load(cls, path: Path) -> LocalCA:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()[:16]
        common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return cls(path, f"{common_name} {fingerprint}", SYSTEM_STORE / f"djship-{fingerprint}.crt")


def local_ca(plan: Plan) -> LocalCA:
    """The CA to trust; refused when the certificate is not djship's own."""
    if plan.tls.mode != "local":
        source = "an ACME CA" if plan.tls.mode == "acme" else "your own files (tls.cert_file)"
        raise DjshipError(f"tls.mode is {plan.tls.mode!r}: the certificate comes from {source}, so there is no djship "
                          "CA to trust")
    if not plan.paths.ca_cert.is_file():
        raise DjshipError(f"no local CA at {plan.paths.ca_cert} yet; `djship up` makes it")
    return LocalCA.load(plan.paths.ca_cert)


def _privileged(argv: list[str], root: bool) -> list[str]:
    return argv if root else ["sudo", *argv]


def system_add(ca: LocalCA, root: bool) -> list[list[str]]:
    return [
        _privileged(["install", "-m", "0644", str(ca.path), str(ca.system_file)], root),
        _privileged(["update-ca-certificates"], root),
    ]


def system_remove(ca: LocalCA, root: bool) -> list[list[str]]:
    # --fresh rebuilds /etc/ssl/certs, so the hash link to the removed file goes too.
    return [
        _privileged(["rm", "-f", str(ca.system_file)], root),
        _privileged(["update-ca-certificates", "--fresh"], root),
    ]


def nss_create(database: Path) -> list[str]:
    return [CERTUTIL, "-d", f"sql:{database}", "-N", "--empty-password"]


def nss_add(database: Path, ca: LocalCA) -> list[str]:
    return [CERTUTIL, "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", ca.nickname, "-i", str(ca.path)]


def nss_find(database: Path, ca: LocalCA) -> list[str]:
    return [CERTUTIL, "-d", f"sql:{database}", "-L", "-n", ca.nickname]


def nss_delete(database: Path, ca: LocalCA) -> list[str]:
    return [CERTUTIL, "-d", f"sql:{database}", "-D", "-n", ca.nickname]


def nss_databases(home: Path) -> list[tuple[Path, str]]:
    """(directory, what reads it): Chromium's, whether it exists yet or not, the snap's (Ubuntu's Chromium) when it
    exists, then every Firefox profile's."""
    snap = home / CHROMIUM_SNAP
    profiles = sorted(
        database.parent for directory in FIREFOX_PROFILES for database in (home / directory).glob("*/cert9.db")
    )
    return [
        (home / ".pki" / "nssdb", "Chromium"),
        *([(snap, "Chromium snap")] if (snap / "cert9.db").exists() else []),
        *((profile, f"Firefox profile {profile.name}") for profile in profiles),
    ]


def _run(connector: Connector, argv: list[str]) -> None:
    result = connector.run(argv)
    if not result.ok:
        raise CommandFailed(" ".join(argv), result)


def _require_certutil() -> None:
    if shutil.which(CERTUTIL) is None:
        raise DjshipError("certutil not found, which writes the browsers' NSS databases; install it with: "
                          "sudo apt-get install libnss3-tools")


def trust(ca: LocalCA, home: Path, connector: Connector, root: bool) -> list[str]:
    _require_certutil()
    present = ca.system_file.exists()
    for argv in system_add(ca, root):
        _run(connector, argv)
    changes = [f"system store: {'kept' if present else 'added'} {ca.system_file} (curl, wget, Python and other "
               "OpenSSL programs trust it)"]
    for database, reader in nss_databases(home):
        created = not (database / "cert9.db").exists()
        if created:
            connector.makedirs(database, mode=0o700)
            _run(connector, nss_create(database))
        _run(connector, nss_add(database, ca))
        changes.append(f"NSS database {database} ({reader}): {'created, ' if created else ''}added {ca.nickname!r}")
    return changes


def untrust(ca: LocalCA, home: Path, connector: Connector, root: bool) -> list[str]:
    _require_certutil()
    changes = []
    if ca.system_file.exists():
        for argv in system_remove(ca, root):
            _run(connector, argv)
        changes.append(f"system store: removed {ca.system_file}")
    for database, reader in nss_databases(home):
        if (database / "cert9.db").exists() and connector.run(nss_find(database, ca)).ok:
            _run(connector, nss_delete(database, ca))
            changes.append(f"NSS database {database} ({reader}): removed {ca.nickname!r}")
    return changes or [f"{ca.nickname!r} was not trusted anywhere on this machine; nothing changed"]


def trusted(ca_path: Path) -> bool:
    """Whether `djship trust` has put this CA into the system store."""
    return LocalCA.load(ca_path).system_file.exists()
