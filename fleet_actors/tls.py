"""TLS for the gRPC gateway: its server credentials, its clients' channels, and dev up's self-signed pair.

Files are read and checked here once, so a missing, unreadable or mismatched file is a
:class:`~fleet_actors.errors.ConfigurationError` naming the setting and the path, never a
traceback from deep inside gRPC.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.settings import Settings

#: names a self-signed gateway certificate is valid for (clients dial 127.0.0.1:PORT or localhost:PORT)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: days a self-signed certificate is valid; dev up makes a new one when less than a day is left
SELF_SIGNED_DAYS = 365


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{setting}: cannot read {path}: {error.strerror or error}") from None


def read_certificates(path: str, setting: str) -> bytes:
    """The PEM bytes of ``path`` after checking they hold at least one certificate."""
    data = _read(path, setting)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(f"{setting}: {path} holds no PEM certificate") from None
    return data


def read_key_pair(cert_path: str, key_path: str, cert_setting: str, key_setting: str) -> tuple[bytes, bytes]:
    """(certificate chain, private key) PEM bytes, checked to belong together."""
    chain = read_certificates(cert_path, cert_setting)
    key_data = _read(key_path, key_setting)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{key_setting}: {key_path} holds no unencrypted PEM private key") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ConfigurationError(f"{key_setting}: {key_path} is not the key of the certificate in {cert_path}")
    return chain, key_data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gateway's TLS credentials (mutual TLS with ``gateway_tls_client_ca``); None: plaintext."""
    if not settings.gateway_serves_tls:
        return None
    chain, key = read_key_pair(
        settings.gateway_tls_cert, settings.gateway_tls_key, "FLEET_GATEWAY_TLS_CERT", "FLEET_GATEWAY_TLS_KEY"
    )
    client_ca = None
    if settings.gateway_tls_client_ca:
        client_ca = read_certificates(settings.gateway_tls_client_ca, "FLEET_GATEWAY_TLS_CLIENT_CA")
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=bool(client_ca))


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """What a client dials the gateway with; None: plaintext."""
    if not settings.gateway_client_tls:
        return None
    roots = read_certificates(settings.gateway_tls_ca, "FLEET_GATEWAY_TLS_CA") if settings.gateway_tls_ca else None
    chain = key = None
    if settings.gateway_tls_client_cert:
        chain, key = read_key_pair(
            settings.gateway_tls_client_cert,
            settings.gateway_tls_client_key,
            "FLEET_GATEWAY_TLS_CLIENT_CERT",
            "FLEET_GATEWAY_TLS_CLIENT_KEY",
        )
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def gateway_channel(settings: Settings, address: str | None = None) -> grpc.Channel:
    """A blocking channel to the gateway (``address`` or ``gateway_address``), with TLS when configured."""
    target = address or settings.gateway_address
    credentials = channel_credentials(settings)
    return grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)


def gateway_aio_channel(settings: Settings, address: str | None = None) -> grpc.aio.Channel:
    """As :func:`gateway_channel`, for asyncio."""
    target = address or settings.gateway_address
    credentials = channel_credentials(settings)
    return grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)


def gateway_health(settings: Settings, address: str | None = None, service: str = "", timeout: float = 10.0) -> str:
    """The gateway's grpc.health.v1 status of ``service`` ("" = the server) as a name, e.g. ``SERVING``.

    Raises:
        BackendUnavailable: no answer (down, refused the TLS handshake, or plaintext against TLS).
        ConfigurationError: a TLS file in the settings is missing or invalid.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = address or settings.gateway_address
    with gateway_channel(settings, target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            how = "TLS" if settings.gateway_client_tls else "plaintext"
            raise BackendUnavailable(
                f"the gRPC gateway at {target} does not answer a health check over {how}: "
                f"{error.code().name} {error.details()}"
            ) from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


@dataclass(frozen=True)
class CertificatePair:
    """A certificate and its private key on disk (PEM). A self-signed one is also its own CA."""

    cert: Path
    key: Path


def write_self_signed(
    directory: str | os.PathLike[str],
    name: str = "gateway",
    *,
    hosts: tuple[str, ...] = LOCAL_HOSTS,
    client: bool = False,
    days: int = SELF_SIGNED_DAYS,
) -> CertificatePair:
    """Make a self-signed certificate (its own CA) and an EC P-256 key: ``NAME.pem`` and ``NAME-key.pem``.

    The key is written 0600 (created so, never readable by others in between); the directory 0700.
    ``client`` marks it for client authentication (mutual TLS) instead of a server's.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fleet-actors {name}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        # its own trust anchor: clients load this same file as their CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    pair = CertificatePair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(pair.key, key_pem)
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return pair


def _write_private(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    partial.replace(path)


def ensure_self_signed(directory: str | os.PathLike[str], name: str = "gateway") -> CertificatePair:
    """The pair in ``directory`` if it is usable for another day (clients that trust it keep working
    across restarts), else a new one."""
    folder = Path(directory)
    pair = CertificatePair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    try:
        read_key_pair(str(pair.cert), str(pair.key), "certificate", "key")
        leaf = x509.load_pem_x509_certificates(pair.cert.read_bytes())[0]
        if leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=1):
            pair.key.chmod(0o600)
            return pair
    except ConfigurationError:
        pass
    return write_self_signed(folder, name)
