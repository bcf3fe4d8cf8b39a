"""tls.mode = "files": a certificate chain and key the user provides, validated before anything starts."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from djship.errors import DjshipError
from djship.tls.certificates import CertificateInfo, load_chain, now


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_chain(chain: list[x509.Certificate], cert_file: Path) -> None:
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError):
            raise DjshipError(
                f"tls.cert_file: in {cert_file}, {child.subject.rfc4514_string()} is not signed by the certificate "
                f"after it ({parent.subject.rfc4514_string()}); put the certificate first, then each issuer in order"
            ) from None
    last = chain[-1]
    if last.issuer != last.subject and len(chain) == 1:
        raise DjshipError(
            f"tls.cert_file: chain incomplete: {cert_file} holds only the certificate, issued by "
            f"{last.issuer.rfc4514_string()}; append the intermediate certificate(s) your CA gave you "
            "(use the \"fullchain\" file)"
        )


def validate(cert_pem: bytes, key_pem: bytes, domains: tuple[str, ...], cert_file: Path, key_file: Path,
             at: datetime.datetime | None = None) -> bytes:
    """The PEM bundle HAProxy wants (chain, then key), or DjshipError naming the problem and the fix."""
    try:
        chain = load_chain(cert_pem)
    except ValueError:
        chain = []
    if not chain:
        raise DjshipError(f"tls.cert_file: {cert_file} holds no PEM certificate; point it at the certificate chain file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise DjshipError(
            f"tls.key_file: {key_file} is not an unencrypted PEM private key; point it at the key the certificate "
            "was issued for (remove a passphrase with `openssl pkey -in KEY -out KEY.plain`)"
        ) from None
    leaf = chain[0]
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise DjshipError(
            f"tls.key_file: {key_file} does not match the certificate in {cert_file}; use the private key that "
            "certificate was issued for"
        )
    _check_chain(chain, cert_file)
    info = CertificateInfo.of(leaf)
    uncovered = [domain for domain in domains if not info.covers(domain)]
    if uncovered:
        raise DjshipError(
            f"tls.cert_file: the certificate in {cert_file} is for {', '.join(info.names) or info.subject}, not "
            f"{', '.join(uncovered)}; get a certificate that names every domain in site.domains, or change site.domains"
        )
    at = at or now()
    if at < info.not_before:
        raise DjshipError(
            f"tls.cert_file: the certificate in {cert_file} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC; "
            "check this machine's clock or use a certificate valid now"
        )
    if at >= info.not_after:
        raise DjshipError(
            f"tls.cert_file: the certificate in {cert_file} expired on {info.not_after:%Y-%m-%d %H:%M} UTC; "
            "renew it with your CA and point tls.cert_file at the new one"
        )
    certificates = b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in chain)
    return certificates + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
