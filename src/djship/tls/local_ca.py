"""djship's own certificate authority for the local target: one CA, one site certificate signed by it.

The CA lives as long as the state directory so a browser or curl told to trust ca.crt keeps trusting it;
the site certificate is reissued when its names change or it is within RENEW_BEFORE of expiry.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
SITE_LIFETIME = datetime.timedelta(days=397)
RENEW_BEFORE = datetime.timedelta(days=30)
LOOPBACK_NAMES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_authority(label: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "djship local CA"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"djship local CA for {label}"[:64]),
    ])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def load_authority(cert_pem: bytes, key_pem: bytes) -> Authority:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return Authority(x509.load_pem_x509_certificate(cert_pem), key)


def _alt_names(domains: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(domain) for domain in domains]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in LOOPBACK_NAMES]
    return names


def _host_alt_names(address: str) -> list[x509.GeneralName]:
    """A host's address as a DNS name, and as an IP address when it is one: HAProxy 2.6's verifyhost compares DNS
    names only, while OpenSSL, Python and libpq match an IP address against the IP entries."""
    names: list[x509.GeneralName] = [x509.DNSName(address)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        pass
    return names


def _issue(authority: Authority, common_name: str, alt_names: list[x509.GeneralName]) -> tuple[bytes, bytes]:
    """A server certificate signed by the CA: (the certificate then the CA certificate, the private key), PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SITE_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + authority.cert_pem(), _key_pem(key)


def issue_site_certificate(authority: Authority, domains: tuple[str, ...]) -> bytes:
    """A PEM bundle as HAProxy wants it: the certificate, the CA certificate, then the private key."""
    chain, key = _issue(authority, domains[0], _alt_names(domains))
    return chain + key


def issue_host_certificate(authority: Authority, address: str) -> tuple[bytes, bytes]:
    """A host's certificate for its address, for the links between hosts (nginx and PostgreSQL present it):
    (the certificate then the CA certificate, the private key), PEM."""
    return _issue(authority, address, _host_alt_names(address))


def _is_current(chain: bytes, authority: Authority, alt_names: list[x509.GeneralName]) -> bool:
    """Whether the chain's certificate is signed by this CA, names exactly these, and is not near expiry."""
    certificate = x509.load_pem_x509_certificates(chain)[0]
    try:
        certificate.verify_directly_issued_by(authority.certificate)
    except (InvalidSignature, ValueError, TypeError):
        return False
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if sorted(map(str, names)) != sorted(map(str, alt_names)):
        return False
    return certificate.not_valid_after_utc - _now() > RENEW_BEFORE


def site_certificate_is_current(bundle: bytes, authority: Authority, domains: tuple[str, ...]) -> bool:
    """Whether the bundle is signed by this CA, names exactly these domains, and is not near expiry."""
    return _is_current(bundle, authority, _alt_names(domains))


def host_certificate(authority: Authority, address: str, held: list[tuple[bytes | None, bytes | None]]
                     ) -> tuple[bytes, bytes]:
    """A host's (chain, key): the first pair it holds that is current for this CA and address, else a new one."""
    for chain, key in held:
        if chain and key and _is_current(chain, authority, _host_alt_names(address)):
            return chain, key
    return issue_host_certificate(authority, address)
