"""Per-BuildJob mutual TLS: a fresh CA that signs one server and one client certificate.

The CA's private key lives only in an `Authority` object and is never serialised: once both
leaves are signed and the object is dropped nobody, the operator included, can issue another
certificate that the engine trusts. A cold engine's Authority lives for one call (`issue`); a
warm engine's (pool.py) until the claim that issues its client certificate. ECDSA P-256 keys
are generated in microseconds (the official dind entrypoint spends seconds on 4096-bit RSA at
every start).
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
class Issued:
    """One certificate and its key, with the CA certificate that verifies the peer."""

    ca_cert: str
    ca_fingerprint: str
    cert: str
    key: str


@dataclass(frozen=True)
class TLSBundle:
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    # SHA-256 of the CA certificate: ties the engine's and the client's secrets together.
    ca_fingerprint: str

    @property
    def server(self) -> Issued:
        return Issued(self.ca_cert, self.ca_fingerprint, self.server_cert, self.server_key)

    @property
    def client(self) -> Issued:
        return Issued(self.ca_cert, self.ca_fingerprint, self.client_cert, self.client_key)


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


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and revocation lists); a leaf signs and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


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
            _key_usage(ca=False),
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


class Authority:
    """A new CA, valid from `now` (less the clock skew) for `valid_for`; its key never leaves
    this object."""

    def __init__(self, valid_for: datetime.timedelta, now: datetime.datetime | None = None):
        now = now or datetime.datetime.now(datetime.UTC)
        self.not_after = now + valid_for
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name("remote-docker-operator job CA"))
            .issuer_name(_name("remote-docker-operator job CA"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(ca=True),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_cert = _pem_cert(self._cert)
        self.fingerprint = hashlib.sha256(self.ca_cert.encode()).hexdigest()[:32]

    def _issued(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
        return Issued(self.ca_cert, self.fingerprint, _pem_cert(cert), _pem_key(key))

    def server(self, dns_names: list[str], ip_addresses: list[str]) -> Issued:
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        cert, key = _leaf(
            # clientAuth as well: the engine's readiness probe connects to itself with this pair.
            dns_names[0] if dns_names else "engine",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            sans,
            self._key,
            self._cert,
            self.not_after,
        )
        return self._issued(cert, key)

    def client(self, not_after: datetime.datetime | None = None) -> Issued:
        """A client certificate, valid until not_after (never past the CA's own end)."""
        end = min(not_after or self.not_after, self.not_after)
        cert, key = _leaf("job", [ExtendedKeyUsageOID.CLIENT_AUTH], [], self._key, self._cert, end)
        return self._issued(cert, key)


def issue(
    dns_names: list[str],
    ip_addresses: list[str],
    valid_for: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> TLSBundle:
    """A new CA, a server certificate for the given names and IPs, and a client certificate."""
    ca = Authority(valid_for, now)
    server, client = ca.server(dns_names, ip_addresses), ca.client()
    return TLSBundle(
        ca_cert=ca.ca_cert,
        server_cert=server.cert,
        server_key=server.key,
        client_cert=client.cert,
        client_key=client.key,
        ca_fingerprint=ca.fingerprint,
    )
