import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from remote_docker_operator import certs

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def bundle() -> certs.TLSBundle:
    return certs.issue(
        ["engine.bj-1.svc", "engine", "localhost"],
        ["10.96.0.20"],
        datetime.timedelta(hours=2),
        now=NOW,
    )


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_chain_verifies(bundle: certs.TLSBundle) -> None:
    ca = load(bundle.ca_cert)
    for leaf_pem in (bundle.server_cert, bundle.client_cert):
        leaf = load(leaf_pem)
        leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_server_names_and_usages(bundle: certs.TLSBundle) -> None:
    server = load(bundle.server_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["engine.bj-1.svc", "engine", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.96.0.20")]
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    client_usages = (
        load(bundle.client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert list(client_usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_validity_covers_the_deadline(bundle: certs.TLSBundle) -> None:
    for pem in (bundle.ca_cert, bundle.server_cert, bundle.client_cert):
        cert = load(pem)
        assert cert.not_valid_before_utc == NOW - certs.CLOCK_SKEW
        assert cert.not_valid_after_utc == NOW + datetime.timedelta(hours=2)


def test_keys_match_certificates(bundle: certs.TLSBundle) -> None:
    for cert_pem, key_pem in (
        (bundle.server_cert, bundle.server_key),
        (bundle.client_cert, bundle.client_key),
    ):
        key = serialization.load_pem_private_key(key_pem.encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == load(cert_pem).public_key()


def test_each_issue_is_a_fresh_ca(bundle: certs.TLSBundle) -> None:
    other = certs.issue(["engine"], [], datetime.timedelta(hours=1), now=NOW)
    assert other.ca_fingerprint != bundle.ca_fingerprint
    with pytest.raises(InvalidSignature):  # a certificate from one job's CA is not another's
        load(other.client_cert).verify_directly_issued_by(load(bundle.ca_cert))


def test_no_ca_key_anywhere(bundle: certs.TLSBundle) -> None:
    ca_public = load(bundle.ca_cert).public_key()
    for key_pem in (bundle.server_key, bundle.client_key):
        key = serialization.load_pem_private_key(key_pem.encode(), None)
        assert key.public_key() != ca_public
