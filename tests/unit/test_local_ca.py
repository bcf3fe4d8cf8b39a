"""djship's local CA: the site certificate HAProxy serves, and when it must be reissued."""

from __future__ import annotations

import ipaddress
import re

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from djship.tls import local_ca

DOMAINS = ("localhost",)


@pytest.fixture(scope="module")
def authority() -> local_ca.Authority:
    return local_ca.new_authority("board")


@pytest.fixture(scope="module")
def bundle(authority) -> bytes:
    return local_ca.issue_site_certificate(authority, DOMAINS)


@pytest.fixture(scope="module")
def site_certificate(bundle) -> x509.Certificate:
    return x509.load_pem_x509_certificates(bundle)[0]


def test_site_certificate_is_signed_by_the_authority(authority, site_certificate):
    site_certificate.verify_directly_issued_by(authority.certificate)


def test_site_certificate_does_not_verify_against_another_authority(site_certificate):
    with pytest.raises(InvalidSignature):
        site_certificate.verify_directly_issued_by(local_ca.new_authority("board").certificate)


def test_site_certificate_names_the_domains_and_loopback(site_certificate):
    names = site_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)


def test_site_certificate_is_for_servers_only(site_certificate):
    usage = site_certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    constraints = site_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value

    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert constraints.ca is False


def test_bundle_is_certificate_then_ca_certificate_then_key(authority, bundle, site_certificate):
    certificates = x509.load_pem_x509_certificates(bundle)
    key = serialization.load_pem_private_key(bundle[bundle.index(b"-----BEGIN PRIVATE KEY-----"):], password=None)

    assert re.findall(rb"-----BEGIN ([A-Z ]+)-----", bundle) == [b"CERTIFICATE", b"CERTIFICATE", b"PRIVATE KEY"]
    assert certificates == [site_certificate, authority.certificate]
    assert key.public_key() == site_certificate.public_key()


def test_authority_survives_a_round_trip_through_pem(authority):
    loaded = local_ca.load_authority(authority.cert_pem(), authority.key_pem())

    assert loaded.certificate == authority.certificate
    assert loaded.key.public_key() == authority.key.public_key()


def test_fresh_certificate_is_current(authority, bundle):
    assert local_ca.site_certificate_is_current(bundle, authority, DOMAINS)


def test_certificate_for_other_domains_is_not_current(authority, bundle):
    assert not local_ca.site_certificate_is_current(bundle, authority, ("localhost", "example.com"))
    assert not local_ca.site_certificate_is_current(bundle, authority, ("example.com",))


def test_certificate_from_another_authority_is_not_current(bundle):
    assert not local_ca.site_certificate_is_current(bundle, local_ca.new_authority("shop"), DOMAINS)


def test_certificate_from_a_new_authority_with_the_same_label_is_not_current(bundle):
    assert not local_ca.site_certificate_is_current(bundle, local_ca.new_authority("board"), DOMAINS)
