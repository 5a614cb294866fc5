"""Per-BuildJob mutual TLS: a fresh CA that signs one server and one client certificate.

The CA's private key lives only in this function's frame and is never serialised: once both
leaves are signed nobody, the operator included, can issue another certificate that the engine
trusts. ECDSA P-256 keys are generated in microseconds (the official dind entrypoint spends
seconds on 4096-bit RSA at every start).
"""

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Clocks of nodes drift; a certificate valid from "now" may be "not yet valid" on another node.
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class TLSBundle:
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    # SHA-256 of the CA certificate: ties the engine's and the client's secrets together.
    ca_fingerprint: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "remote-docker-operator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _leaf(
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_after: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca_cert.not_valid_before_utc)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue(
    dns_names: list[str],
    ip_addresses: list[str],
    valid_for: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> TLSBundle:
    """A new CA, a server certificate for the given names and IPs, and a client certificate."""
    now = now or datetime.datetime.now(datetime.UTC)
    not_before = now - CLOCK_SKEW
    not_after = now + valid_for
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("remote-docker-operator job CA"))
        .issuer_name(_name("remote-docker-operator job CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    server_cert, server_key = _leaf(
        # clientAuth as well: the engine's readiness probe connects to itself with this keypair.
        dns_names[0] if dns_names else "engine",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans,
        ca_key,
        ca_cert,
        not_after,
    )
    client_cert, client_key = _leaf(
        "job", [ExtendedKeyUsageOID.CLIENT_AUTH], [], ca_key, ca_cert, not_after
    )
    ca_pem = _pem_cert(ca_cert)
    return TLSBundle(
        ca_cert=ca_pem,
        server_cert=_pem_cert(server_cert),
        server_key=_pem_key(server_key),
        client_cert=_pem_cert(client_cert),
        client_key=_pem_key(client_key),
        ca_fingerprint=hashlib.sha256(ca_pem.encode()).hexdigest()[:32],
    )
