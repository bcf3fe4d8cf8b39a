"""Certificates: inspection, `files` mode validation (each failure with its own message), renewal timing."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from djship.errors import DjshipError
from djship.tls import acme, files, renewal
from djship.tls.certificates import CertificateInfo

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.timezone.utc)
CERT_FILE, KEY_FILE = Path("/srv/site/site.crt"), Path("/srv/site/site.key")
DOMAINS = ("shop.example.com", "www.shop.example.com")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer: str, key, signing_key, names=(), ca=False, days=(-1, 89)) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + datetime.timedelta(days=days[0]))
        .not_valid_after(NOW + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class Chain:
    """root -> intermediate -> leaf for DOMAINS, valid from a day ago for 89 days."""

    def __init__(self, names=DOMAINS, days=(-1, 89)):
        self.root_key, self.intermediate_key, self.key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        self.root = _certificate("Test Root", "Test Root", self.root_key, self.root_key, ca=True, days=(-10, 3650))
        self.intermediate = _certificate("Test Intermediate", "Test Root", self.intermediate_key, self.root_key, ca=True,
                                         days=(-10, 1000))
        self.leaf = _certificate(names[0], "Test Intermediate", self.key, self.intermediate_key, names, days=days)


def _validate(cert_pem: bytes, key_pem: bytes, domains=DOMAINS) -> bytes:
    return files.validate(cert_pem, key_pem, domains, CERT_FILE, KEY_FILE, at=NOW)


def test_valid_files_become_chain_then_key():
    chain = Chain()

    bundle = _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key))

    assert x509.load_pem_x509_certificates(bundle) == [chain.leaf, chain.intermediate]
    assert bundle.rstrip().endswith(b"-----END PRIVATE KEY-----")


def test_mismatched_key_is_refused():
    chain = Chain()
    other_key = ec.generate_private_key(ec.SECP256R1())

    with pytest.raises(DjshipError, match=r"^tls.key_file: /srv/site/site.key does not match the certificate in "
                                          r"/srv/site/site.crt; use the private key that certificate was issued for$"):
        _validate(_pem(chain.leaf, chain.intermediate), _key_pem(other_key))


def test_expired_certificate_is_refused():
    chain = Chain(days=(-100, -10))

    with pytest.raises(DjshipError, match=r"^tls.cert_file: the certificate in /srv/site/site.crt expired on "
                                          r"2026-11-15 12:00 UTC; renew it with your CA"):
        _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key))


def test_not_yet_valid_certificate_is_refused():
    chain = Chain(days=(2, 90))

    with pytest.raises(DjshipError, match=r"is not valid before 2026-11-27 12:00 UTC; check this machine's clock"):
        _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key))


def test_certificate_for_another_name_is_refused():
    chain = Chain(names=("other.example.org",))

    with pytest.raises(DjshipError, match=r"^tls.cert_file: the certificate in /srv/site/site.crt is for "
                                          r"other.example.org, not shop.example.com, www.shop.example.com; get a "
                                          r"certificate that names every domain in site.domains"):
        _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key))


def test_wildcard_covers_one_label_only():
    chain = Chain(names=("*.example.com",))

    _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key), domains=("shop.example.com",))
    with pytest.raises(DjshipError, match="is for \\*.example.com, not www.shop.example.com"):
        _validate(_pem(chain.leaf, chain.intermediate), _key_pem(chain.key), domains=("www.shop.example.com",))


def test_leaf_without_its_intermediate_is_an_incomplete_chain():
    chain = Chain()

    with pytest.raises(DjshipError, match=r"^tls.cert_file: chain incomplete: /srv/site/site.crt holds only the "
                                          r"certificate, issued by CN=Test Intermediate; append the intermediate"):
        _validate(_pem(chain.leaf), _key_pem(chain.key))


def test_chain_in_the_wrong_order_is_refused():
    chain = Chain()

    with pytest.raises(DjshipError, match=r"CN=shop.example.com is not signed by the certificate after it "
                                          r"\(CN=Test Root\); put the certificate first, then each issuer in order"):
        _validate(_pem(chain.leaf, chain.root, chain.intermediate), _key_pem(chain.key))


def test_not_pem_is_refused_with_the_key_path():
    chain = Chain()

    with pytest.raises(DjshipError, match=r"^tls.cert_file: /srv/site/site.crt holds no PEM certificate"):
        _validate(b"hello", _key_pem(chain.key))
    with pytest.raises(DjshipError, match=r"^tls.key_file: /srv/site/site.key is not an unencrypted PEM private key"):
        _validate(_pem(chain.leaf, chain.intermediate), b"hello")


def test_certificate_info_names_issuer_and_days_left():
    info = CertificateInfo.of(Chain().leaf)

    assert info.names == DOMAINS
    assert info.issuer == "CN=Test Intermediate"
    assert info.days_left(NOW) == pytest.approx(89)
    assert info.ocsp_url is None and not info.self_signed


@pytest.mark.parametrize(
    ("lifetime", "renew_before"),
    [
        (datetime.timedelta(days=90), datetime.timedelta(days=30)),  # Let's Encrypt: 30 days before expiry
        (datetime.timedelta(days=397), datetime.timedelta(days=30)),  # long-lived: never later than 30 days before
        (datetime.timedelta(days=6), datetime.timedelta(days=2)),  # short-lived: at two thirds
        (datetime.timedelta(seconds=120), datetime.timedelta(seconds=40)),
    ],
)
def test_renewal_is_due_at_two_thirds_or_30_days_before_expiry(lifetime, renew_before):
    info = CertificateInfo("CN=x", "CN=ca", ("x",), NOW, NOW + lifetime, False, None)

    assert info.not_after - info.renew_at == renew_before


def test_failed_renewals_back_off_from_a_minute_doubling_to_six_hours():
    assert [renewal.backoff(n) for n in (1, 2, 3, 4)] == [datetime.timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert renewal.backoff(20) == datetime.timedelta(hours=6)


def test_next_attempt_after_success_failure_and_without_certificate():
    info = CertificateInfo("CN=x", "CN=ca", ("x",), NOW, NOW + datetime.timedelta(days=90), False, None)
    failed = renewal.RenewalState(last_attempt=NOW.isoformat(), last_error="boom", failures=3)

    assert renewal.next_attempt(renewal.RenewalState(), info, True, NOW) == NOW + datetime.timedelta(days=60)
    assert renewal.next_attempt(failed, info, False, NOW) == NOW + datetime.timedelta(minutes=4)
    assert renewal.next_attempt(renewal.RenewalState(), None, False, NOW) == NOW


def test_watch_records_a_failure_and_sleeps_for_the_back_off(make_plan, tmp_path):
    from djship.connectors.local import LocalConnector

    plan = make_plan(project_dir=tmp_path, tls={"mode": "acme"}, site={"domains": ["shop.example.com"]})
    connector, sleeps, lines, rounds = LocalConnector(), [], [], iter(range(2))

    def renew() -> None:
        raise DjshipError("ACME directory https://ca.test/dir: cannot reach it (ConnectionError)")

    renewal.watch(plan, connector, lambda: (None, False), lambda: renewal.attempt(plan, connector, renew), lines.append,
                  sleeps.append, lambda: next(rounds, None) is not None)

    state = renewal.load(plan, connector)
    assert state.failures == 1 and state.last_success is None
    assert state.last_error == "ACME directory https://ca.test/dir: cannot reach it (ConnectionError)"
    next_attempt = datetime.datetime.fromisoformat(state.next_attempt) - datetime.datetime.fromisoformat(state.last_attempt)
    assert next_attempt == datetime.timedelta(minutes=1)
    assert len(sleeps) == 1 and 0 < sleeps[0] <= renewal.MAX_SLEEP
    assert any("renewal failed (1 in a row; next try in 0:01:00)" in line for line in lines)


def _ocsp_response(chain: Chain, this_update: datetime.datetime, leaf: x509.Certificate | None = None) -> bytes:
    from cryptography.x509 import ocsp as x509_ocsp

    return (
        x509_ocsp.OCSPResponseBuilder()
        .add_response(cert=leaf or chain.leaf, issuer=chain.intermediate, algorithm=hashes.SHA1(),
                      cert_status=x509_ocsp.OCSPCertStatus.GOOD, this_update=this_update,
                      next_update=this_update + datetime.timedelta(days=4), revocation_time=None, revocation_reason=None)
        .responder_id(x509_ocsp.OCSPResponderEncoding.HASH, chain.intermediate)
        .sign(chain.intermediate_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_ocsp_response_is_refreshed_at_half_its_validity_and_for_a_new_certificate():
    from djship.tls import ocsp

    chain, other = Chain(), Chain()
    response = _ocsp_response(chain, NOW)

    assert ocsp.is_fresh_for(response, chain.leaf, NOW + datetime.timedelta(days=1))
    assert not ocsp.is_fresh_for(response, chain.leaf, NOW + datetime.timedelta(days=2))
    assert not ocsp.is_fresh_for(response, other.leaf, NOW)
    assert not ocsp.is_fresh_for(b"not OCSP", chain.leaf, NOW)
    assert ocsp.is_valid_for(response, chain.leaf, NOW + datetime.timedelta(days=3))
    assert not ocsp.is_valid_for(response, chain.leaf, NOW + datetime.timedelta(days=4))
    assert not ocsp.is_valid_for(response, other.leaf, NOW)


def _leaf_with_unreachable_responder(chain: Chain) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("http://127.0.0.1:9/"),
    )])
    return (
        x509.CertificateBuilder().subject_name(chain.leaf.subject).issuer_name(chain.leaf.issuer)
        .public_key(chain.key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(aia, critical=False).sign(chain.intermediate_key, hashes.SHA256())
    )


def test_ocsp_is_fetched_only_for_certificates_that_name_a_responder():
    from djship.tls import ocsp

    chain = Chain()
    assert ocsp.fetch([chain.leaf, chain.intermediate]) is None

    leaf = _leaf_with_unreachable_responder(chain)
    with pytest.raises(DjshipError, match=r"^OCSP responder http://127.0.0.1:9/: no usable answer"):
        ocsp.fetch([leaf, chain.intermediate])
    with pytest.raises(DjshipError, match="its issuer is not in the chain"):
        ocsp.fetch([leaf])


def test_a_failing_responder_keeps_the_staple_while_it_is_valid_for_the_certificate(make_plan, tmp_path):
    from djship.connectors.local import LocalConnector
    from djship.tls import site

    plan, connector, notes = make_plan(project_dir=tmp_path), LocalConnector(), []
    chain = Chain()
    leaf = _leaf_with_unreachable_responder(chain)
    bundle = _pem(leaf, chain.intermediate)
    now = datetime.datetime.now(datetime.timezone.utc)

    connector.put(plan.paths.site_ocsp, _ocsp_response(chain, now - datetime.timedelta(days=3), leaf))
    assert site.fetch_staple(plan, connector, bundle, notes.append) == connector.get(plan.paths.site_ocsp)
    connector.put(plan.paths.site_ocsp, _ocsp_response(chain, now - datetime.timedelta(days=5), leaf))  # expired
    assert site.fetch_staple(plan, connector, bundle, notes.append) is None
    connector.put(plan.paths.site_ocsp, _ocsp_response(chain, now))  # for another certificate
    assert site.fetch_staple(plan, connector, bundle, notes.append) is None
    assert len(notes) == 3 and notes[0].startswith("no new OCSP response to staple: OCSP responder http://127.0.0.1:9/")


def test_only_the_certificate_djship_obtained_from_the_configured_directory_counts_as_acme(make_plan, tmp_path):
    from djship.connectors.local import LocalConnector
    from djship.tls.site import acme_certificate_is_current

    plan, connector = make_plan(project_dir=tmp_path, tls={"mode": "acme"}, site={"domains": list(DOMAINS)}), LocalConnector()
    now = datetime.datetime.now(datetime.timezone.utc)
    info = CertificateInfo("CN=x", "CN=ca", DOMAINS, now, now + datetime.timedelta(days=90), False, None, "1F")

    def state(**fields) -> None:
        renewal.save(plan, connector, renewal.RenewalState(**fields))

    assert not acme_certificate_is_current(plan, connector, info)  # nothing obtained yet: a placeholder or files
    state(directory=plan.tls.acme_directory, serial="1F")
    assert acme_certificate_is_current(plan, connector, info)
    state(directory="https://acme-staging-v02.api.letsencrypt.org/directory", serial="1F")
    assert not acme_certificate_is_current(plan, connector, info)  # the directory changed: obtain anew
    state(directory=plan.tls.acme_directory, serial="2A")
    assert not acme_certificate_is_current(plan, connector, info)
    state(directory=plan.tls.acme_directory, serial="1F")
    due = CertificateInfo("CN=x", "CN=ca", DOMAINS, now - datetime.timedelta(days=61), now + datetime.timedelta(days=29),
                          False, None, "1F")
    assert not acme_certificate_is_current(plan, connector, due)
    renamed = CertificateInfo("CN=x", "CN=ca", DOMAINS[:1], now, now + datetime.timedelta(days=90), False, None, "1F")
    assert not acme_certificate_is_current(plan, connector, renamed)


@pytest.mark.parametrize("rejections, obtained", [(2, True), (3, False)])
def test_an_order_whose_nonce_the_ca_rejects_is_placed_again_up_to_three_times(monkeypatch, rejections, obtained):
    placed = []

    def order(*args):
        placed.append(args)
        if len(placed) <= rejections:
            raise messages.Error.with_code("badNonce", detail="JWS has an invalid anti-replay nonce")
        return b"chain and key"

    monkeypatch.setattr(acme, "_order", order)

    def obtain() -> bytes:
        return acme.obtain("https://127.0.0.1:14000/dir", None, None, b"", ("shop.test",), b"", lambda answers: None,
                           lambda paths: None)

    if obtained:
        assert obtain() == b"chain and key" and len(placed) == 3
    else:
        with pytest.raises(DjshipError, match="the CA refused: JWS has an invalid anti-replay nonce"):
            obtain()
        assert len(placed) == 3
