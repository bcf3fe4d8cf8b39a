"""The site certificate the balancers serve, in every tls.mode: made, validated, obtained, installed and listed.

Installation and ACME challenges go to every balancer host given ("the balancer host(s)"), so the same code path
serves one machine today and several load balancers later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from djship.components.balancer import Balancer
from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import Plan
from djship.tls import files, local_ca, ocsp, renewal
from djship.tls.certificates import CertificateInfo, load_chain, now


@dataclass(frozen=True)
class BalancerHost:
    connector: Connector
    runtime: Balancer


def site_info(plan: Plan, connector: Connector) -> CertificateInfo | None:
    bundle = connector.get(plan.paths.site_pem)
    chain = load_chain(bundle) if bundle else []
    return CertificateInfo.of(chain[0]) if chain else None


def _write(plan: Plan, connector: Connector, bundle: bytes) -> bool:
    access = plan.file_access(plan.paths.site_pem)
    return connector.put(plan.paths.site_pem, bundle, mode=access.mode, owner=access.owner)


def read_authority(plan: Plan, connector: Connector) -> local_ca.Authority | None:
    """djship's CA, when it has been made."""
    cert, key = connector.get(plan.paths.ca_cert), connector.get(plan.paths.ca_key)
    return local_ca.load_authority(cert, key) if cert and key else None


def ensure_authority(plan: Plan, connector: Connector) -> local_ca.Authority:
    """djship's CA: the site certificate's issuer in local mode, and in every mode the issuer of the certificates
    of the links between hosts. Made once; it lives as long as the state directory."""
    authority = read_authority(plan, connector)
    if authority is None:
        authority = local_ca.new_authority(plan.project_dir.name)
        connector.makedirs(plan.paths.tls, mode=0o711)
        connector.put(plan.paths.ca_key, authority.key_pem(), mode=0o600)
        connector.put(plan.paths.ca_cert, authority.cert_pem(), mode=0o644)
    return authority


def _ensure_local(plan: Plan, connector: Connector) -> bool:
    authority = ensure_authority(plan, connector)
    bundle = connector.get(plan.paths.site_pem)
    if bundle and local_ca.site_certificate_is_current(bundle, authority, plan.domains):
        return False
    return _write(plan, connector, local_ca.issue_site_certificate(authority, plan.domains))


def validated_files(plan: Plan, connector: Connector) -> bytes:
    """tls.mode = "files": the user's chain and key as one bundle, or DjshipError naming the problem and the fix."""
    cert_file, key_file = plan.tls.cert_file, plan.tls.key_file
    contents = {}
    for key, path in (("tls.cert_file", cert_file), ("tls.key_file", key_file)):
        content = connector.get(path) if not path.is_dir() else None
        if content is None:
            raise DjshipError(f"{key}: {path} does not exist or is not a file; set {key} to the PEM file's path")
        contents[key] = content
    return files.validate(contents["tls.cert_file"], contents["tls.key_file"], plan.domains, cert_file, key_file)


def acme_certificate_is_current(plan: Plan, connector: Connector, info: CertificateInfo | None) -> bool:
    """Whether the served certificate is the one djship last obtained from tls.acme_directory (not a placeholder,
    nor one from files or another directory), names exactly the domains, and is not due for renewal."""
    issued = renewal.load(plan, connector)
    return (
        info is not None
        and (issued.serial, issued.directory) == (info.serial, plan.tls.acme_directory)
        and sorted(info.names) == sorted(plan.domains)
        and now() < info.renew_at
    )


def ensure_certificate(plan: Plan, connector: Connector) -> bool:
    """A certificate HAProxy can start with; returns whether site.pem changed.

    local: djship's CA and a current site certificate. files: the validated user files. acme: the certificate
    obtained before, or, before the first order, a placeholder from a throwaway CA so the balancer can start and
    answer the challenge (obtain_acme replaces it right after).
    """
    connector.makedirs(plan.paths.tls, mode=0o711)
    if plan.tls.mode == "local":
        return _ensure_local(plan, connector)
    if plan.tls.mode == "files":
        return _write(plan, connector, validated_files(plan, connector))
    if site_info(plan, connector) is not None:
        return False
    return _write(plan, connector, local_ca.issue_site_certificate(local_ca.new_authority("placeholder"), plan.domains))


def staple_due(plan: Plan, connector: Connector) -> bool:
    """Whether site.pem.ocsp must be fetched (missing, for another certificate, or half its validity gone) or
    removed (the certificate names no responder)."""
    bundle, response = connector.get(plan.paths.site_pem), connector.get(plan.paths.site_ocsp)
    chain = load_chain(bundle) if bundle else []
    if not chain or CertificateInfo.of(chain[0]).ocsp_url is None:
        return response is not None
    return response is None or not ocsp.is_fresh_for(response, chain[0])


def fetch_staple(plan: Plan, connector: Connector, bundle: bytes, note: Callable[[str], None]) -> bytes | None:
    """The OCSP response to staple for this bundle's certificate; None when it names no OCSP responder. When the
    responder fails (noted, never fatal: clients then ask the CA themselves) the current staple is kept while it
    is still valid for this certificate."""
    chain = load_chain(bundle)
    try:
        return ocsp.fetch(chain)
    except DjshipError as error:
        note(f"no new OCSP response to staple: {error}")
    current = connector.get(plan.paths.site_ocsp)
    return current if current and ocsp.is_valid_for(current, chain[0]) else None


def write_staple(plan: Plan, connector: Connector, response: bytes | None) -> bool:
    """site.pem.ocsp, which HAProxy loads with site.pem; removed when there is nothing to staple. Returns whether
    it changed."""
    if response is not None:
        access = plan.file_access(plan.paths.site_ocsp)
        return connector.put(plan.paths.site_ocsp, response, mode=access.mode, owner=access.owner)
    if connector.get(plan.paths.site_ocsp) is None:
        return False
    connector.run(["rm", "-f", str(plan.paths.site_ocsp)])
    return True


def install(plan: Plan, hosts: list[BalancerHost], bundle: bytes, staple: bytes | None) -> None:
    """Write the bundle (and its OCSP response) on every balancer host and swap them into the running HAProxy: no
    reload, nothing dropped."""
    for host in hosts:
        _write(plan, host.connector, bundle)
        write_staple(plan, host.connector, staple)
        host.runtime.replace_certificate(plan.paths.site_pem, bundle, staple)


def obtain_acme(plan: Plan, connector: Connector, hosts: list[BalancerHost]) -> bytes:
    """A new certificate from the ACME directory for the site key (every lb host has it), the HTTP-01 challenges
    answered by the balancer hosts given (the others pass theirs to the renewer)."""
    from djship.tls import acme  # here: only ACME mode loads the ACME client (0.08 s of every command)

    account_key = connector.get(plan.paths.acme_account_key)
    if account_key is None:
        account_key = acme.new_account_key()
        connector.put(plan.paths.acme_account_key, account_key, mode=0o600)
    site_key = connector.get(plan.paths.acme_site_key)
    if site_key is None:
        raise DjshipError(f"{plan.paths.acme_site_key} is missing; run `djship up` from the control machine")

    def publish(answers: dict[str, str]) -> None:
        for host in hosts:
            host.runtime.add_map_entries(plan.paths.challenge_map, answers)

    def withdraw(paths: list[str]) -> None:
        for host in hosts:
            host.runtime.delete_map_entries(plan.paths.challenge_map, paths)

    return acme.obtain(
        plan.tls.acme_directory, plan.tls.acme_ca_bundle, plan.tls.acme_email, account_key, plan.domains, site_key,
        publish, withdraw,
    )


def certificates(plan: Plan, connector: Connector) -> list[dict]:
    """Every certificate djship serves or signs with, for `djship certs` and `djship status`."""
    listed = []
    site = site_info(plan, connector)
    if site is not None:
        listed.append({"name": "site", "path": str(plan.paths.site_pem), "mode": plan.tls.mode, **site.to_json()})
    if plan.tls.mode == "local":
        ca = connector.get(plan.paths.ca_cert)
        if ca:
            listed.append({
                "name": "local CA", "path": str(plan.paths.ca_cert), "mode": plan.tls.mode,
                **CertificateInfo.of(load_chain(ca)[0]).to_json(),
            })
    return listed
