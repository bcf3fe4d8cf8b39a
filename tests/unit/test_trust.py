"""`djship trust`: the exact commands for the system store and NSS, and real certutil on throwaway databases."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from djship.connectors import Result
from djship.connectors.local import LocalConnector
from djship.errors import DjshipError
from djship.tls import trust
from djship.tls.local_ca import new_authority


@pytest.fixture
def ca_file(tmp_path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(new_authority("board").cert_pem())
    return path


@pytest.fixture
def ca(ca_file, tmp_path) -> trust.LocalCA:
    loaded = trust.LocalCA.load(ca_file)
    return trust.LocalCA(loaded.path, loaded.nickname, tmp_path / "system" / loaded.system_file.name)


class SystemStoreStub:
    """Runs certutil for real; records the system-store commands and acts them out on ca.system_file."""

    def __init__(self, ca: trust.LocalCA):
        self.ca = ca
        self.local = LocalConnector()
        self.argvs: list[list[str]] = []

    def run(self, argv, **kwargs) -> Result:
        argv = list(argv)
        self.argvs.append(argv)
        if argv[0] == trust.CERTUTIL:
            return self.local.run(argv, **kwargs)
        if "install" in argv:
            self.ca.system_file.parent.mkdir(exist_ok=True)
            self.ca.system_file.write_bytes(self.ca.path.read_bytes())
        if "rm" in argv:
            self.ca.system_file.unlink()
        return Result(tuple(argv), 0, "", "")

    def makedirs(self, path: Path, *, mode: int = 0o755, owner: str | None = None) -> None:
        self.local.makedirs(path, mode=mode, owner=owner)


def _listing(database: Path) -> str:
    return subprocess.run([trust.CERTUTIL, "-d", f"sql:{database}", "-L"], capture_output=True, text=True,
                          check=True).stdout


def test_the_ca_is_named_by_its_common_name_and_fingerprint(ca_file):
    loaded = trust.LocalCA.load(ca_file)
    fingerprint = loaded.nickname.rsplit(" ", 1)[1]
    assert loaded.nickname == f"djship local CA for board {fingerprint}" and len(fingerprint) == 16
    assert loaded.system_file == Path(f"/usr/local/share/ca-certificates/djship-{fingerprint}.crt")


def test_system_store_commands_as_root_and_through_sudo(ca):
    assert trust.system_add(ca, root=True) == [
        ["install", "-m", "0644", str(ca.path), str(ca.system_file)], ["update-ca-certificates"]]
    assert trust.system_remove(ca, root=False) == [
        ["sudo", "rm", "-f", str(ca.system_file)], ["sudo", "update-ca-certificates", "--fresh"]]


def test_nss_commands(ca):
    database = Path("/home/ann/.pki/nssdb")
    assert trust.nss_create(database) == ["certutil", "-d", "sql:/home/ann/.pki/nssdb", "-N", "--empty-password"]
    assert trust.nss_add(database, ca) == [
        "certutil", "-d", "sql:/home/ann/.pki/nssdb", "-A", "-t", "C,,", "-n", ca.nickname, "-i", str(ca.path)]
    assert trust.nss_find(database, ca) == ["certutil", "-d", "sql:/home/ann/.pki/nssdb", "-L", "-n", ca.nickname]
    assert trust.nss_delete(database, ca) == ["certutil", "-d", "sql:/home/ann/.pki/nssdb", "-D", "-n", ca.nickname]


def test_chromium_s_database_and_every_firefox_profile(tmp_path):
    assert trust.nss_databases(tmp_path) == [(tmp_path / ".pki/nssdb", "Chromium")]
    for profile in (".mozilla/firefox/abc.default-release", "snap/firefox/common/.mozilla/firefox/x.default",
                    "snap/chromium/current/.pki/nssdb"):
        (tmp_path / profile).mkdir(parents=True)
        (tmp_path / profile / "cert9.db").touch()
    (tmp_path / ".mozilla/firefox/no-database").mkdir()
    assert trust.nss_databases(tmp_path) == [
        (tmp_path / ".pki/nssdb", "Chromium"),
        (tmp_path / "snap/chromium/current/.pki/nssdb", "Chromium snap"),
        (tmp_path / ".mozilla/firefox/abc.default-release", "Firefox profile abc.default-release"),
        (tmp_path / "snap/firefox/common/.mozilla/firefox/x.default", "Firefox profile x.default"),
    ]


def test_trust_then_remove_with_real_certutil(ca, tmp_path):
    home = tmp_path / "home"
    firefox = home / ".mozilla/firefox/p.default"
    firefox.mkdir(parents=True)
    subprocess.run(trust.nss_create(firefox), check=True, capture_output=True)
    connector = SystemStoreStub(ca)

    changes = trust.trust(ca, home, connector, root=True)

    assert changes == [
        f"system store: added {ca.system_file} (curl, wget, Python and other OpenSSL programs trust it)",
        f"NSS database {home}/.pki/nssdb (Chromium): created, added {ca.nickname!r}",
        f"NSS database {firefox} (Firefox profile p.default): added {ca.nickname!r}",
    ]
    assert connector.argvs[:2] == trust.system_add(ca, root=True)
    for database in (home / ".pki/nssdb", firefox):
        assert ca.nickname in _listing(database) and "C,," in _listing(database)

    changes = trust.untrust(ca, home, connector, root=True)

    assert changes == [
        f"system store: removed {ca.system_file}",
        f"NSS database {home}/.pki/nssdb (Chromium): removed {ca.nickname!r}",
        f"NSS database {firefox} (Firefox profile p.default): removed {ca.nickname!r}",
    ]
    assert trust.system_remove(ca, root=True) == connector.argvs[-6:-4]
    assert not ca.system_file.exists()
    for database in (home / ".pki/nssdb", firefox):
        assert ca.nickname not in _listing(database)
    assert trust.untrust(ca, home, connector, root=True) == [
        f"{ca.nickname!r} was not trusted anywhere on this machine; nothing changed"]


@pytest.mark.parametrize(("tls", "source"), [
    ({"mode": "acme"}, "an ACME CA"),
    ({"mode": "files", "cert_file": "site.crt", "key_file": "site.key"}, r"your own files \(tls.cert_file\)"),
])
def test_trust_is_refused_when_the_certificate_is_not_djship_s(make_plan, tmp_path, tls, source):
    with pytest.raises(DjshipError, match=rf"^tls.mode is '{tls['mode']}': the certificate comes from {source}, so "
                                          r"there is no djship CA to trust$"):
        trust.local_ca(make_plan(project_dir=tmp_path, site={"domains": ["shop.example.com"]}, tls=tls))


def test_trust_before_up_says_there_is_no_ca_yet(make_plan, tmp_path):
    with pytest.raises(DjshipError, match=r"^no local CA at .*/tls/ca.crt yet; `djship up` makes it$"):
        trust.local_ca(make_plan(project_dir=tmp_path))
