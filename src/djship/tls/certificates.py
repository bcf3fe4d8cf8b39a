"""Reading certificates: names, issuer, lifetime and when to renew; shared by `djship certs`, status, renewal and
the validation of user-provided files."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# Renew when a third of the lifetime is left, but never later than this before expiry (Let's Encrypt's 90 days:
# 30 days before).
RENEW_BEFORE_AT_MOST = datetime.timedelta(days=30)
# `djship certs` warns (and exits 2) below this many days left.
WARN_DAYS = 14


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    self_signed: bool
    ocsp_url: str | None
    serial: str = ""
    """Hexadecimal, as OpenSSL shows it."""

    @classmethod
    def of(cls, certificate: x509.Certificate) -> CertificateInfo:
        try:
            alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = tuple(alt_names.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(
            subject=certificate.subject.rfc4514_string(),
            issuer=certificate.issuer.rfc4514_string(),
            names=names,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            self_signed=certificate.issuer == certificate.subject,
            ocsp_url=_ocsp_url(certificate),
            serial=f"{certificate.serial_number:X}",
        )

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before

    @property
    def renew_at(self) -> datetime.datetime:
        """Two thirds into the lifetime, or 30 days before expiry if that comes first."""
        return self.not_after - min(self.lifetime / 3, RENEW_BEFORE_AT_MOST)

    def days_left(self, at: datetime.datetime | None = None) -> float:
        return (self.not_after - (at or now())).total_seconds() / 86400

    def covers(self, domain: str) -> bool:
        return any(_matches(name, domain) for name in self.names)

    def to_json(self, at: datetime.datetime | None = None) -> dict:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "names": list(self.names),
            "not_before": self.not_before.isoformat(timespec="seconds"),
            "not_after": self.not_after.isoformat(timespec="seconds"),
            "days_left": round(self.days_left(at), 4),
            "renew_at": self.renew_at.isoformat(timespec="seconds"),
        }


def _ocsp_url(certificate: x509.Certificate) -> str | None:
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == x509.oid.AuthorityInformationAccessOID.OCSP:
            return description.access_location.value
    return None


def _matches(name: str, domain: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard standing for exactly one left-most label."""
    name, domain = name.lower(), domain.lower()
    if name == domain:
        return True
    return name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM text (a bundle may hold a key too); empty when there is none."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return []
    return x509.load_pem_x509_certificates(pem)


def leaf_der(pem: bytes) -> bytes:
    """The DER of a bundle's first certificate, as a TLS server sends it."""
    return load_chain(pem)[0].public_bytes(serialization.Encoding.DER)


def same_key(chain: bytes, key_pem: bytes) -> bool:
    """Whether the first certificate of chain is for the private key key_pem."""
    public = serialization.load_pem_private_key(key_pem, password=None).public_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return load_chain(chain)[0].public_key().public_bytes(*spki) == public.public_bytes(*spki)
