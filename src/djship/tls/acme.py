"""ACME (RFC 8555) with the HTTP-01 challenge, through the `acme` library of the certbot project.

The challenge answers are published by the caller (into the load balancers, which serve
/.well-known/acme-challenge/ on their HTTP port); this module only speaks ACME.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import josepy
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from djship import __version__
from djship.errors import DjshipError

ORDER_TIMEOUT = datetime.timedelta(seconds=120)
# A CA may reject any nonce (RFC 8555 6.5: the client retries); the acme library retries a request once, so a second
# rejection in a row ends the order, which is then placed again.
NONCE_ATTEMPTS = 3
# Publish {challenge path: key authorization}; withdraw the paths again once the order is done.
Publish = Callable[[dict[str, str]], None]
Withdraw = Callable[[list[str]], None]


def new_account_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def new_site_key() -> bytes:
    """The certificate's key (P-256), kept across renewals (as certbot's --reuse-key) so that every lb host has it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _client(directory_url: str, ca_bundle: Path | None, account_key_pem: bytes, email: str | None) -> client.ClientV2:
    key = josepy.JWKRSA(key=serialization.load_pem_private_key(account_key_pem, password=None))
    network = client.ClientNetwork(
        key, alg=josepy.RS256, verify_ssl=str(ca_bundle) if ca_bundle else True, user_agent=f"djship/{__version__}"
    )
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, network), network)
    registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:  # this key has an account already: sign with its URL from now on
        network.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
    return acme


def _failure(error: Exception) -> str:
    if isinstance(error, errors.ValidationError):
        details = [
            f"{authorization.body.identifier.value}: {challenge.error.detail if challenge.error else challenge.status}"
            for authorization in error.failed_authzrs
            for challenge in authorization.body.challenges
            if isinstance(challenge.chall, challenges.HTTP01)
        ]
        return "HTTP-01 challenge failed (" + "; ".join(details) + "); the domain must resolve to this balancer and " \
            "its HTTP port must be reachable from the CA on port 80"
    if isinstance(error, errors.TimeoutError):
        return f"the CA did not finish the order within {ORDER_TIMEOUT.seconds}s"
    if isinstance(error, messages.Error):
        return f"the CA refused: {error.detail or error.code}"
    if isinstance(error, requests.exceptions.SSLError):
        return "its HTTPS certificate is not trusted; set tls.acme_ca_bundle to the CA bundle that signs it"
    if isinstance(error, requests.RequestException):
        return f"cannot reach it ({type(error).__name__})"
    return str(error) or type(error).__name__


def obtain(
    directory_url: str,
    ca_bundle: Path | None,
    email: str | None,
    account_key_pem: bytes,
    domains: tuple[str, ...],
    site_key_pem: bytes,
    publish: Publish,
    withdraw: Withdraw,
) -> bytes:
    """A certificate for domains and the site key: the PEM bundle HAProxy wants (full chain, then the key)."""
    attempt = 1
    while True:
        try:
            return _order(directory_url, ca_bundle, email, account_key_pem, domains, site_key_pem, publish, withdraw)
        except DjshipError:
            raise
        except messages.Error as error:
            if error.code == "badNonce" and attempt < NONCE_ATTEMPTS:
                attempt += 1
                continue
            raise DjshipError(f"ACME directory {directory_url}: {_failure(error)}") from None
        except Exception as error:  # the acme library raises many kinds; every one becomes one line
            raise DjshipError(f"ACME directory {directory_url}: {_failure(error)}") from None


def _order(directory_url: str, ca_bundle: Path | None, email: str | None, account_key_pem: bytes,
           domains: tuple[str, ...], site_key_pem: bytes, publish: Publish, withdraw: Withdraw) -> bytes:
    published: list[str] = []
    try:
        acme = _client(directory_url, ca_bundle, account_key_pem, email)
        order = acme.new_order(crypto_util.make_csr(site_key_pem, list(domains)))
        answers = {}
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:  # the CA reuses an authorization it validated
                continue
            challenge = next(
                (c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
            )
            if challenge is None:
                raise DjshipError(f"the CA offers no HTTP-01 challenge for {authorization.body.identifier.value}")
            response, validation = challenge.chall.response_and_validation(acme.net.key)
            answers[challenge.chall.path] = (challenge, response, validation)
        publish({path: validation for path, (_, _, validation) in answers.items()})
        published = list(answers)
        for challenge, response, _ in answers.values():
            acme.answer_challenge(challenge, response)
        done = acme.poll_and_finalize(order, datetime.datetime.now() + ORDER_TIMEOUT)
    finally:
        if published:
            withdraw(published)
    return done.fullchain_pem.encode() + site_key_pem
