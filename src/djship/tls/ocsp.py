"""OCSP stapling: the CA's signed "this certificate is good" answer, fetched by djship and sent by the balancer in
the TLS handshake, so clients need not ask the CA themselves. Only for certificates that name an OCSP responder."""

from __future__ import annotations

import datetime
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from djship.errors import DjshipError
from djship.tls.certificates import CertificateInfo, now

TIMEOUT = 10


def fetch(chain: list[x509.Certificate], at: datetime.datetime | None = None) -> bytes | None:
    """A current "good" OCSP response (DER) for the chain's first certificate, from the responder its AIA names;
    None when it names none. DjshipError when the responder fails or answers anything but "good"."""
    url = CertificateInfo.of(chain[0]).ocsp_url
    if url is None:
        return None
    if len(chain) < 2:
        raise DjshipError(f"OCSP: the certificate names the responder {url} but its issuer is not in the chain")
    leaf, issuer = chain[0], chain[1]
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(
                url, data=request.public_bytes(serialization.Encoding.DER),
                headers={"Content-Type": "application/ocsp-request"},
            ),
            timeout=TIMEOUT,
        ) as answer:
            body = answer.read()
        response = ocsp.load_der_ocsp_response(body)
    except (OSError, urllib.error.URLError, ValueError) as error:
        raise DjshipError(f"OCSP responder {url}: no usable answer ({error})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise DjshipError(f"OCSP responder {url} answered {response.response_status.name}")
    if response.serial_number != leaf.serial_number or response.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise DjshipError(f"OCSP responder {url} does not vouch for this certificate ({response.certificate_status.name})")
    at = at or now()
    if response.next_update_utc is not None and response.next_update_utc <= at:
        raise DjshipError(f"OCSP responder {url} answered with a response that expired at {response.next_update_utc}")
    return body


def _parsed_for(response: bytes, certificate: x509.Certificate) -> ocsp.OCSPResponse | None:
    try:
        parsed = ocsp.load_der_ocsp_response(response)
        return parsed if parsed.serial_number == certificate.serial_number else None
    except ValueError:
        return None


def _next_update(parsed: ocsp.OCSPResponse) -> datetime.datetime:
    # A response without nextUpdate counts as valid for two days.
    return parsed.next_update_utc or parsed.this_update_utc + datetime.timedelta(days=2)


def is_fresh_for(response: bytes, certificate: x509.Certificate, at: datetime.datetime | None = None) -> bool:
    """Whether the response is about this certificate and less than half its validity is gone."""
    parsed = _parsed_for(response, certificate)
    if parsed is None:
        return False
    return (at or now()) < parsed.this_update_utc + (_next_update(parsed) - parsed.this_update_utc) / 2


def is_valid_for(response: bytes, certificate: x509.Certificate, at: datetime.datetime | None = None) -> bool:
    """Whether the response is about this certificate and not expired: still worth stapling."""
    parsed = _parsed_for(response, certificate)
    return parsed is not None and (at or now()) < _next_update(parsed)
