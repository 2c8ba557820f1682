"""Per-peer identities: a run CA, one key and certificate per node, frame signatures and TLS.

`gossipser keys --peers N --out DIR` writes

    DIR/ca.pem, DIR/ca.key            the run's certificate authority (keep ca.key offline)
    DIR/peer-I.pem, DIR/peer-I.key    one per peer, common name peer-I
    DIR/server.pem, DIR/server.key    the FedAvg server, common name server
    DIR/broker.pem, DIR/broker.key    the MQTT broker (TLS listener), common name broker

Keys are ECDSA P-256 (every TLS stack and mosquitto take them); certificates name 127.0.0.1,
::1 and localhost, plus any `--host`. A node needs the CA certificate, every certificate (public)
and its own key, nothing else: `Keyring.load(DIR, node)`.

A signed frame carries an ECDSA signature (64 bytes, r || s) over everything before it, made
with the sender's key; the receiver checks it against the certificate of the node the frame
claims to come from, so a node holding a valid key cannot speak for another
(`gossipser.gossip.wire`, "sender does not match its key" / "bad signature").
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from gossipser.errors import ConfigError
from gossipser.gossip.message import SERVER_ID

SIG_LEN = 64
VALID_DAYS = 825


def node_name(node: int) -> str:
    """The certificate common name of a node: peer-3, server."""
    return "server" if node == SERVER_ID else f"peer-{node}"


def node_of(name: str) -> int | None:
    """The node id a common name stands for (None: not a node, e.g. broker)."""
    if name == "server":
        return SERVER_ID
    if name.startswith("peer-") and name[5:].isdigit():
        return int(name[5:])
    return None


# --- making keys ----------------------------------------------------------------------------
def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool,
          hosts: tuple[str, ...]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        names: list[x509.GeneralName] = [x509.DNSName(subject)]
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_keys(out: Path, peers: int, *, hosts: tuple[str, ...] = ()) -> list[Path]:
    """Write a run CA and a key and certificate for every peer, the server and the broker."""
    if peers < 1:
        raise ConfigError("keys: --peers must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.pem").exists():
        raise ConfigError(f"keys: {out} already holds a CA (ca.pem); use a new folder")
    hosts = tuple(dict.fromkeys(("127.0.0.1", "::1", "localhost", *hosts)))
    ca_key = _new_key()
    ca = _cert("gossipser run CA", ca_key, "gossipser run CA", ca_key, ca=True, hosts=())
    written = [out / "ca.pem", out / "ca.key"]
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key)
    for name in [node_name(i) for i in range(peers)] + ["server", "broker"]:
        key = _new_key()
        cert = _cert(name, key, "gossipser run CA", ca_key, ca=False, hosts=hosts)
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(out / f"{name}.key", key)
        written += [out / f"{name}.pem", out / f"{name}.key"]
    return written


# --- using keys -----------------------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"keys: cannot read {what} {path}: {exc.strerror or exc}") from None


@dataclass
class Keyring:
    """What one node holds: the CA, every node's public key (from certificates the CA signed,
    named by their common name) and its own private key."""

    folder: Path
    node: int
    ca_file: Path
    public: dict[int, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    private: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def load(cls, folder: Path | str, node: int) -> Keyring:
        folder = Path(folder)
        try:
            ca = x509.load_pem_x509_certificate(_read(folder / "ca.pem", "the CA certificate"))
        except ValueError:
            raise ConfigError(f"keys: {folder / 'ca.pem'} is not a PEM certificate") from None
        ring = cls(folder=folder, node=node, ca_file=folder / "ca.pem")
        for pem in sorted(folder.glob("*.pem")):
            if pem.name == "ca.pem":
                continue
            try:
                cert = x509.load_pem_x509_certificate(pem.read_bytes())
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature, OSError):
                raise ConfigError(f"keys: {pem} is not a certificate of this run's CA") from None
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            who = node_of(str(names[0].value)) if names else None
            if who is not None and isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
                ring.public[who] = cert.public_key()
        key_file = folder / f"{node_name(node)}.key"
        try:
            key = serialization.load_pem_private_key(_read(key_file, "this node's key"), None)
        except (ValueError, TypeError):
            raise ConfigError(f"keys: {key_file} is not an unencrypted PEM key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or node not in ring.public or (
                key.public_key().public_numbers() != ring.public[node].public_numbers()):
            raise ConfigError(f"keys: {key_file} does not match {node_name(node)}.pem")
        ring.private = key
        return ring

    # frame signatures
    def sign(self, data: bytes | memoryview) -> bytes:
        r, s = decode_dss_signature(self.private.sign(bytes(data), ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, node: int, signature: bytes | memoryview,
               data: bytes | memoryview) -> bool:
        key = self.public.get(node)
        if key is None or len(signature) != SIG_LEN:
            return False
        sig = bytes(signature)
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                   int.from_bytes(sig[32:], "big"))
        try:
            key.verify(der, bytes(data), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    # TLS
    def _files(self, name: str | None = None) -> tuple[str, str]:
        name = name or node_name(self.node)
        return str(self.folder / f"{name}.pem"), str(self.folder / f"{name}.key")

    def server_context(self) -> ssl.SSLContext:
        """Mutual TLS, listening side: the client must show a certificate of this run's CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(*self._files())
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Mutual TLS, connecting side: the other end must show a certificate of the run's
        CA (its name is checked against the node id by `peer_node`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(*self._files())
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.check_hostname = False  # peers are named by id (peer_node), not by host name
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def peer_node(ssl_object: ssl.SSLObject | None) -> int | None:
    """The node id in the certificate the other end of a TLS connection showed."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return node_of(value)
    return None
