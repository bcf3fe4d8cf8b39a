"""HTTPS for real domains: an ACME certificate from Pebble (Let's Encrypt's test CA) obtained through the balancer,
renewed by hand and by the renewal timer with zero failed requests, a TLS scan, and `files` mode refusing bad files.

Pebble, its DNS server pebble-challtestsrv and the djship system run on loopback only; the test domain
shop.djship.test resolves to 127.0.0.1 through challtestsrv (for Pebble) and is reached by the tests on 127.0.0.1
with SNI and Host set to it. Every process is stopped by PID by the fixture that started it, also on failure.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter

from djship.config import with_values
from tests.e2e.conftest import INTERMEDIATE_CIPHERS, OFFSET, ONLY_TLS12_AND_13, Ports, RequestLoop, Site, alive, \
    kill_process_group, make_project, run_djship, searchable_directory, sslscan

pytestmark = pytest.mark.e2e

DOMAIN = "shop.djship.test"
TLS_PORTS = Ports.of(https=21443, http=21080, database=28432, app_prefix="127.0.41", database_address="127.0.42.1")
PEBBLE_DIRECTORY_PORT, PEBBLE_MANAGEMENT_PORT, PEBBLE_TLS_ALPN_PORT = (
    port + OFFSET for port in (21400, 21500, 21001))
CHALLTESTSRV_DNS_PORT, CHALLTESTSRV_MANAGEMENT_PORT = 21053 + OFFSET, 21055 + OFFSET
OCSP_PORT = 21090 + OFFSET
# Short enough that the renewal timer renews during the test (at two thirds: 100 s after issuance).
CERTIFICATE_LIFETIME = 150
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(subject: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool = False,
                 hours: tuple[float, float] = (-1, 48), extensions: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    """A certificate for subject valid from/to these hours from now; self-signed when issuer is None."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(hours=hours[0])).not_valid_after(now + datetime.timedelta(hours=hours[1]))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_of(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _api_certificate(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for address for Pebble's own HTTPS API (Debian's pebble ships none)."""
    ca_key, key = _key(), _key()
    ca = _certificate("djship test: Pebble API CA", ca_key, None, ca_key, ca=True)
    names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName("localhost")])
    certificate = _certificate(address, key, ca, ca_key, extensions=(names,))
    paths = directory / "api-ca.pem", directory / "api-cert.pem", directory / "api-key.pem"
    paths[0].write_bytes(_pem_of(ca))
    paths[1].write_bytes(_pem_of(certificate))
    paths[2].write_bytes(_key_pem(key))
    return paths


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    try:
        yield process
    finally:
        kill_process_group(process.pid)
        process.wait(timeout=10)


def _wait_for(what: str, check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not ready after {timeout}s"
        time.sleep(0.2)


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    api_ca: Path
    root: Path
    """Pebble's issuing root for this run (a new one on every start)."""


@contextmanager
def pebble(directory: Path, listen: str = "127.0.0.1", balancer: str = "127.0.0.1",
           http_port: int = TLS_PORTS.http) -> Iterator[Pebble]:
    """Pebble's API on listen; the test domain resolves to balancer, whose HTTP port validates HTTP-01."""
    api_ca, api_cert, api_key = _api_certificate(directory, listen)
    config = directory / "pebble-config.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"{listen}:{PEBBLE_DIRECTORY_PORT}",
        "managementListenAddress": f"{listen}:{PEBBLE_MANAGEMENT_PORT}",
        "certificate": str(api_cert),
        "privateKey": str(api_key),
        "httpPort": http_port,
        "tlsPort": PEBBLE_TLS_ALPN_PORT,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "certificateValidityPeriod": CERTIFICATE_LIFETIME,
    }}))
    dns = [
        "pebble-challtestsrv", "-defaultIPv4", balancer, "-defaultIPv6", "",
        "-dns01", f"127.0.0.1:{CHALLTESTSRV_DNS_PORT}", "-management", f"127.0.0.1:{CHALLTESTSRV_MANAGEMENT_PORT}",
        "-http01", "", "-https01", "", "-tlsalpn01", "",
    ]
    server = ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{CHALLTESTSRV_DNS_PORT}"]
    with _process(dns, directory / "challtestsrv.log"), _process(
        server, directory / "pebble.log", env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}
    ):
        root_url = f"https://{listen}:{PEBBLE_MANAGEMENT_PORT}/roots/0"

        def root_served() -> bool:
            try:
                return requests.get(root_url, verify=str(api_ca), timeout=2).ok
            except requests.RequestException:
                return False

        _wait_for("Pebble", root_served)
        root = directory / "pebble-root.pem"
        root.write_text(requests.get(root_url, verify=str(api_ca), timeout=5).text)
        yield Pebble(f"https://{listen}:{PEBBLE_DIRECTORY_PORT}/dir", api_ca, root)


def served_certificate(address: str, port: int) -> x509.Certificate:
    """The certificate the balancer at address:port presents for the test domain."""
    result = subprocess.run(["openssl", "s_client", "-connect", f"{address}:{port}", "-servername", DOMAIN],
                            input="", capture_output=True, text=True, timeout=30)
    return x509.load_pem_x509_certificate(re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.stdout, re.S).group(0).encode())


class _HostAdapter(HTTPAdapter):
    """Connects to 127.0.0.1 but sends SNI for, and verifies the certificate against, the test domain."""

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=DOMAIN, assert_hostname=DOMAIN)
        super().init_poolmanager(*args, **kwargs)


@dataclass
class DomainSite(Site):
    root: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports.https}"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.root)
        session.mount("https://", _HostAdapter())
        session.headers["Host"] = f"{DOMAIN}:{self.ports.https}"
        return session

    def served_certificate(self) -> x509.Certificate:
        return served_certificate("127.0.0.1", self.ports.https)

    def certs(self) -> list[dict]:
        result = self.djship("certs", "--json", check=False)
        assert result.returncode in (0, 2), result.stderr  # 2: one expires within 14 days, as Pebble's here do
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def acme_site() -> Iterator[DomainSite]:
    """The example on https://shop.djship.test:21443 with a certificate from Pebble."""
    with searchable_directory() as directory, pebble(directory) as ca:
        project = make_project(directory, TLS_PORTS)
        config = project / "djship.toml"
        config.write_text(with_values(config.read_text(), {
            "site.domains": [DOMAIN],
            "tls.mode": "acme",
            "tls.acme_directory": ca.directory_url,
            "tls.acme_ca_bundle": str(ca.api_ca),
            "tls.acme_email": "admin@djship.test",
        }))
        site = DomainSite(project, TLS_PORTS, root=ca.root)
        try:
            site.up()
            yield site
        finally:
            site.stop_everything()


def test_certificate_from_the_acme_directory_is_served_and_verifies(acme_site):
    response = acme_site.session().get(acme_site.url + "/api/posts/", timeout=30)

    assert response.status_code == 200  # verified against Pebble's root, for shop.djship.test
    assert response.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"  # no preload unasked
    assert "Server" not in response.headers
    served = acme_site.served_certificate()
    assert "Pebble Intermediate" in served.issuer.rfc4514_string()
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [DOMAIN]
    state = acme_site.project / ".djship" / "tls"
    assert (state / "site.pem").stat().st_mode & 0o777 == 0o600
    assert (state / "acme-account.key").stat().st_mode & 0o777 == 0o600


def test_http_redirects_to_https_except_acme_challenges(acme_site):
    base = f"http://127.0.0.1:{TLS_PORTS.http}"
    headers = {"Host": f"{DOMAIN}:{TLS_PORTS.http}"}

    redirect = requests.get(base + "/accounts/login/", headers=headers, allow_redirects=False, timeout=10)
    challenge = requests.get(base + "/.well-known/acme-challenge/unknown-token", headers=headers,
                             allow_redirects=False, timeout=10)

    assert redirect.status_code == 301
    assert redirect.headers["Location"] == f"https://{DOMAIN}:{TLS_PORTS.https}/accounts/login/"
    assert challenge.status_code == 404


def test_certs_and_status_show_the_certificate_and_the_renewal_timer(acme_site):
    certs = acme_site.certs()
    status = acme_site.status()
    listing = acme_site.djship("certs", check=False).stdout

    assert [(c["name"], c["names"]) for c in certs] == [("site", [DOMAIN])]
    assert "Pebble Intermediate" in certs[0]["issuer"]
    assert 0 < certs[0]["days_left"] <= CERTIFICATE_LIFETIME / 86400
    assert status["ca_path"] is None
    assert status["tls"]["mode"] == "acme" and status["tls"]["certificate"]["names"] == [DOMAIN]
    renewal = status["tls"]["renewal"]
    assert renewal["state"] == "RUNNING" and renewal["pid"]
    assert renewal["failures"] == 0 and renewal["last_error"] is None and renewal["last_success"]
    assert renewal["next_attempt"] == certs[0]["renew_at"]
    assert "site" in listing and DOMAIN in listing
    again = acme_site.djship("up").stdout
    assert "Already up and unchanged" in again and "CA cert" not in again


def test_expiring_certificate_makes_certs_warn_and_exit_2(acme_site):
    # Pebble's certificates here live 150 s, far below 14 days.
    result = acme_site.djship("certs", check=False)

    assert result.returncode == 2
    assert re.search(r"warning: the site certificate \(.*site\.pem\) expires in 0\.0 days", result.stderr)


def test_forced_renewal_is_served_with_zero_failed_requests(acme_site):
    before = acme_site.served_certificate()

    with RequestLoop(acme_site) as load:
        acme_site.djship("certs", "renew", "--force")
        after = acme_site.served_certificate()
        load.wait_for(load.served + 20)

    assert after.serial_number != before.serial_number
    assert "Pebble Intermediate" in after.issuer.rfc4514_string()
    assert load.failures == [], load.failures[:5]
    assert acme_site.status()["tls"]["renewal"]["last_error"] is None


def test_renewal_timer_renews_at_two_thirds_of_the_lifetime_without_a_failed_request(acme_site):
    before = acme_site.served_certificate()
    renew_at = before.not_valid_before_utc + (before.not_valid_after_utc - before.not_valid_before_utc) * 2 / 3

    with RequestLoop(acme_site, max_seconds=CERTIFICATE_LIFETIME + 60) as load:
        _wait_for("the renewal timer's new certificate",
                  lambda: acme_site.served_certificate().serial_number != before.serial_number,
                  timeout=CERTIFICATE_LIFETIME)
        load.wait_for(load.served + 20)
    renewed_at = datetime.datetime.now(datetime.timezone.utc)

    renewed = acme_site.served_certificate()
    time.sleep(3)  # one renewal, then the timer sleeps until the new certificate is due
    certs, renewal = acme_site.certs(), acme_site.status()["tls"]["renewal"]
    log = (acme_site.project / ".djship" / "logs" / "renewal.log").read_text()

    assert load.failures == [], load.failures[:5]
    assert renewed_at >= renew_at - datetime.timedelta(seconds=5)
    assert acme_site.served_certificate().serial_number == renewed.serial_number, log
    assert log.count("renewed and installed") == 1, log
    assert renewal["serial"] == certs[0]["serial"] == f"{renewed.serial_number:X}"
    assert renewal["next_attempt"] == certs[0]["renew_at"] and renewal["failures"] == 0


def test_up_after_changing_the_acme_directory_gets_a_new_certificate_and_restarts_the_timer(acme_site):
    # The same Pebble under another URL: for djship another directory, whose certificate it does not have yet.
    other_directory = f"https://localhost:{PEBBLE_DIRECTORY_PORT}/dir"
    before, timer = acme_site.served_certificate(), acme_site.status()["tls"]["renewal"]["pid"]
    config = acme_site.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {"tls.acme_directory": other_directory}))

    with RequestLoop(acme_site) as load:
        acme_site.djship("up")
        load.wait_for(load.served + 20)
    renewal = acme_site.status()["tls"]["renewal"]

    assert load.failures == [], load.failures[:5]
    assert acme_site.served_certificate().serial_number != before.serial_number
    assert renewal["directory"] == other_directory and renewal["state"] == "RUNNING" and renewal["pid"] != timer
    assert "Already up and unchanged" in acme_site.djship("up").stdout


def test_tls_scan_finds_only_tls12_and_13_with_strong_ciphers_and_h2(acme_site):
    scan = sslscan("127.0.0.1", TLS_PORTS.https, sni=DOMAIN)
    alpn = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{TLS_PORTS.https}", "-servername", DOMAIN, "-alpn", "h2"],
        input="", capture_output=True, text=True, timeout=30,
    )

    assert scan.protocols == ONLY_TLS12_AND_13, scan.output
    assert scan.accepted, scan.output
    assert {version for version, _ in scan.accepted} == {"TLSv1.2", "TLSv1.3"}
    assert {cipher for _, cipher in scan.accepted} <= INTERMEDIATE_CIPHERS, scan.accepted
    assert not re.search(r"NULL|EXPORT|RC4|3DES|DES-CBC|MD5|anon", " ".join(c for _, c in scan.accepted))
    assert "ALPN protocol: h2" in alpn.stdout
    hsts = acme_site.session().get(acme_site.url + "/accounts/login/", timeout=30).headers
    assert hsts["Strict-Transport-Security"].startswith("max-age=63072000")


def _point_test_domain_at(address: str) -> None:
    requests.post(f"http://127.0.0.1:{CHALLTESTSRV_MANAGEMENT_PORT}/set-default-ipv4", json={"ip": address},
                  timeout=5).raise_for_status()


def test_failed_renewal_is_one_line_and_shown_by_status_while_the_old_certificate_serves(acme_site):
    before = acme_site.served_certificate()
    _point_test_domain_at("127.0.0.2")  # loopback, but nothing listens there: the CA's HTTP-01 check fails
    try:
        result = acme_site.djship("certs", "renew", "--force", check=False)
        renewal = acme_site.status()["tls"]["renewal"]
    finally:
        _point_test_domain_at("127.0.0.1")

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(  # the directory's URL depends on whether the test above ran
        rf"error: ACME directory https://(127\.0\.0\.1|localhost):{PEBBLE_DIRECTORY_PORT}/dir: HTTP-01 challenge failed "
        rf"\({re.escape(DOMAIN)}: .*connection refused.*\); the domain must resolve to this balancer", lines[0]
    ), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert renewal["failures"] >= 1 and "HTTP-01 challenge failed" in renewal["last_error"]
    assert acme_site.session().get(acme_site.url + "/api/posts/", timeout=30).status_code == 200
    log = (acme_site.project / ".djship" / "logs" / "renewal.log").read_text()
    assert acme_site.served_certificate().serial_number == before.serial_number, log


def _ca_with_ocsp_responder(directory: Path) -> tuple[Path, Path, Path, type[http.server.BaseHTTPRequestHandler]]:
    """A root and a certificate for DOMAIN naming an OCSP responder at OCSP_PORT: (chain file, key file, root, the
    responder's request handler)."""
    root_key, key = _key(), _key()
    root = _certificate("djship test: files-mode root", root_key, None, root_key, ca=True)
    responder = x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(f"http://127.0.0.1:{OCSP_PORT}/"),
    )])
    leaf = _certificate(DOMAIN, key, root, root_key, extensions=(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), responder))

    class Responder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            assert request.serial_number == leaf.serial_number
            answer = (
                ocsp.OCSPResponseBuilder()
                .add_response(cert=leaf, issuer=root, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                              this_update=datetime.datetime.now(datetime.timezone.utc),
                              next_update=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1),
                              revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, root).sign(root_key, hashes.SHA256())
                .public_bytes(serialization.Encoding.DER)
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    paths = directory / "files-site.crt", directory / "files-site.key", directory / "files-root.pem"
    paths[0].write_bytes(_pem_of(leaf, root))
    paths[1].write_bytes(_key_pem(key))
    paths[2].write_bytes(_pem_of(root))
    return (*paths, Responder)


def test_switch_to_files_mode_while_serving_staples_ocsp_and_stops_the_renewal_timer(acme_site):
    chain, key, root, responder = _ca_with_ocsp_responder(acme_site.project)
    renewal_pid = acme_site.status()["tls"]["renewal"]["pid"]
    both_roots = acme_site.project / "both-roots.pem"
    both_roots.write_bytes(acme_site.root.read_bytes() + root.read_bytes())
    acme_site.root = both_roots  # the requests in flight trust the old and the new issuer
    config = acme_site.project / "djship.toml"
    config.write_text(with_values(config.read_text(), {
        "tls.mode": "files", "tls.cert_file": chain.name, "tls.key_file": key.name,
    }))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", OCSP_PORT), responder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with RequestLoop(acme_site) as load:
            acme_site.djship("up")
            load.wait_for(load.served + 20)
    finally:
        server.shutdown()
        server.server_close()
    stapled = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{TLS_PORTS.https}", "-servername", DOMAIN, "-status"],
        input="", capture_output=True, text=True, timeout=30,
    ).stdout
    status = acme_site.status()

    assert load.failures == [], load.failures[:5]
    assert acme_site.served_certificate().issuer.rfc4514_string() == "CN=djship test: files-mode root"
    assert "OCSP Response Status: successful" in stapled and "Cert Status: good" in stapled, stapled
    assert status["tls"]["mode"] == "files" and status["tls"]["renewal"] is None
    assert not alive(renewal_pid)
    assert "no component 'renewal'" in acme_site.djship("logs", "renewal", check=False).stderr


def test_files_mode_refuses_bad_files_before_starting_anything(workdir):
    project = make_project(workdir, TLS_PORTS)
    key, other_key = _key(), _key()

    def self_signed(name: str, hours: tuple[float, float]) -> bytes:
        names = x509.SubjectAlternativeName([x509.DNSName(name)])
        return _pem_of(_certificate(name, key, None, key, hours=hours, extensions=(names,)))

    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {
        "site.domains": [DOMAIN], "tls.mode": "files", "tls.cert_file": "site.crt", "tls.key_file": "site.key",
    }))
    cases = [
        (self_signed(DOMAIN, (-1, 2000)), _key_pem(other_key), "tls.key_file: ", "does not match the certificate"),
        (self_signed(DOMAIN, (-2000, -1)), _key_pem(key), "tls.cert_file: ", "expired on"),
        (self_signed("other.example.org", (-1, 2000)), _key_pem(key), "tls.cert_file: ",
         f"is for other.example.org, not {DOMAIN}"),
    ]
    for certificate, private_key, key_path, problem in cases:
        (project / "site.crt").write_bytes(certificate)
        (project / "site.key").write_bytes(private_key)

        result = run_djship(project, "up", check=False)

        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {key_path}") and problem in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (project / ".djship").exists()


def test_acme_mode_refuses_a_missing_ca_bundle_before_starting_anything(workdir):
    project = make_project(workdir, TLS_PORTS)
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {
        "site.domains": [DOMAIN], "tls.mode": "acme", "tls.acme_ca_bundle": "no-such-bundle.pem",
    }))

    result = run_djship(project, "up", check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: tls.acme_ca_bundle: {project / 'no-such-bundle.pem'} is not a file; point it at the PEM CA bundle "
        "that verifies the ACME directory's HTTPS certificate, or remove the key to use the system's"
    )
    assert not (project / ".djship").exists()
