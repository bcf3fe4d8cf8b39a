"""The balancer's TLS policy as a client sees it, on one machine: Mozilla "intermediate" 6.0 (sslscan: TLS 1.2 and 1.3
only, no DHE suite, even with an RSA certificate that DHE-RSA suites could use), HSTS that pins nothing beyond
localhost, the HTTP redirect to the configured domain whatever Host the client sends, and every log file 0640.

The site runs in `files` mode with a self-signed RSA certificate for localhost, on loopback
ports of its own; every process is stopped by PID by the fixture, also on failure.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from djship.config import with_values
from tests.e2e.conftest import INTERMEDIATE_CIPHERS, ONLY_TLS12_AND_13, Ports, Site, make_project, \
    searchable_directory, sslscan

pytestmark = pytest.mark.e2e

POLICY_PORTS = Ports.of(https=26443, http=26080, database=23432, app_prefix="127.0.91", database_address="127.0.92.1")

def _rsa_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate for localhost (files mode accepts one alone): (certificate, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "rsa-site.crt", directory / "rsa-site.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def rsa_site() -> Iterator[tuple[Site, Path]]:
    """The example up in files mode with a self-signed RSA certificate for localhost; (site, that certificate)."""
    with searchable_directory() as directory:
        project = make_project(directory, POLICY_PORTS)
        root, key = _rsa_certificate(project)
        config = project / "djship.toml"
        config.write_text(with_values(config.read_text(), {
            "tls.mode": "files", "tls.cert_file": root.name, "tls.key_file": key.name}))
        running = Site(project, POLICY_PORTS)
        try:
            running.up()
            yield running, root
        finally:
            running.stop_everything()


def test_sslscan_finds_tls12_and_13_only_and_no_dhe_suite_even_with_an_rsa_key(rsa_site):
    scan = sslscan("127.0.0.1", POLICY_PORTS.https)

    assert scan.protocols == ONLY_TLS12_AND_13, scan.output
    assert {version for version, _ in scan.accepted} == {"TLSv1.2", "TLSv1.3"}, scan.output
    ciphers = {cipher for _, cipher in scan.accepted}
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ciphers, scan.output  # the RSA key is what the scan sees
    assert not [cipher for cipher in ciphers if cipher.startswith("DHE-")], scan.output
    assert ciphers <= INTERMEDIATE_CIPHERS, scan.output
    assert scan.groups and set(scan.groups) <= {"x25519", "secp256r1", "secp384r1", "X25519MLKEM768"}, scan.output


def test_hsts_for_localhost_pins_neither_subdomains_nor_the_preload_list(rsa_site):
    site, root = rsa_site
    session = site.session()
    session.verify = str(root)

    response = session.get(site.url + "/accounts/login/", timeout=30)

    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"] == "max-age=3600"


# The ids name no port: each pytest-xdist worker has ports of its own, and all must collect the same tests.
@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{POLICY_PORTS.http}", "localhost.evil.example"],
                         ids=["evil.example", "evil.example:port", "localhost.evil.example"])
def test_http_redirects_to_the_configured_domain_whatever_host_the_client_sends(rsa_site, host):
    connection = http.client.HTTPConnection("127.0.0.1", POLICY_PORTS.http, timeout=10)
    try:
        connection.request("GET", "/posts/?page=2", headers={"Host": host})
        response = connection.getresponse()
    finally:
        connection.close()

    assert response.status == 301
    assert response.getheader("Location") == f"https://localhost:{POLICY_PORTS.https}/posts/?page=2"


def test_every_log_file_is_0640(rsa_site):
    site, _ = rsa_site
    site.session().get(site.url + "/", verify=str(rsa_site[1]), timeout=30)  # something in every access log
    logs = sorted(path for path in (site.project / ".djship" / "logs").rglob("*") if path.is_file())

    assert {"supervisord.log", "haproxy.log", "postgres.log", "app1-gunicorn.log", "app1-nginx-access.log"} <= {
        path.name for path in logs}
    assert any(path.name.startswith("release-") for path in logs)
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in logs}
    assert {name: mode for name, mode in modes.items() if mode != "0o640"} == {}
