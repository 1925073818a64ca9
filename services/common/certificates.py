"""A development CA and the certificates it signs: one implementation for `driftline certs init`,
`driftline up --secure` and the secure local stack (its broker and S3 server).

`init_certs(folder, names)` writes `ca.pem`/`ca.key` (a self-signed CA, CA:true, key usage
certSign, a name of its own so two development CAs never pass for each other) and one
`<name>.pem`/`<name>.key` per name, signed by that CA. Every certificate names localhost,
127.0.0.1, ::1, its own name and each extra host (an IP address or a DNS name) as subject
alternative names and is good for both ends of a connection (serverAuth and clientAuth), since
a service is a server to some and a client of others, and the broker's certificate is also its
client certificate on the KRaft controller listener. The subject's common name is the name,
which is how Kafka maps a certificate to a principal. Keys are ECDSA P-256 in PKCS#8 (quick to
make, and what gRPC, Kafka's PEM keystore and MinIO all read), written 0600. Run again, it keeps
the CA and every certificate that the CA signed, that names every wanted host and that is not
near its end; `force` makes everything anew.

>>> sorted(str(n.value) for n in alt_names("registry", ["10.0.0.5", "registry.driftline.svc"]))
['10.0.0.5', '127.0.0.1', '::1', 'localhost', 'registry', 'registry.driftline.svc']
>>> split_hosts(["a,b", " c ", ""])
['a', 'b', 'c']
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# A certificate this close to its end is made again rather than kept.
RENEW_BEFORE = dt.timedelta(days=30)


class CertificateError(ValueError):
    """The folder holds something that cannot be kept and must not be silently replaced."""


@dataclass
class Written:
    file: str
    subject: str
    names: str
    not_after: str
    state: str  # written | kept


def split_hosts(hosts: Iterable[str]) -> list[str]:
    return [h.strip() for value in hosts for h in value.split(",") if h.strip()]


def alt_names(name: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*LOOPBACK_NAMES, name, *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def write_private(path: Path, data: bytes) -> None:
    """`data` in a file only its owner can read (also when the file was there with another mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Driftline (development)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    name = _name(f"Driftline development CA {serial:x}"[:37])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(name: str, hosts: Iterable[str], days: int, ca_key: ec.EllipticCurvePrivateKey,
              ca_cert: x509.Certificate) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names(name, hosts)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _load(cert_path: Path, key_path: Path):
    """The certificate and key in these files, or None when either is missing or unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return cert, key


def _keepable(cert: x509.Certificate, key, ca_cert: x509.Certificate, names: list[x509.GeneralName]) -> bool:
    """Signed by `ca_cert`, its own key's, naming every one of `names`, and not near its end."""
    if cert.public_key() != key.public_key() or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return set(names) <= set(present)


def _row(path: Path, cert: x509.Certificate, state: str) -> Written:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        shown = ", ".join(str(n.value) for n in names)
    except x509.ExtensionNotFound:
        shown = ""
    subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return Written(str(path), str(subject), shown, cert.not_valid_after_utc.strftime("%Y-%m-%d"), state)


def init_certs(folder: Path, names: Iterable[str], hosts: Iterable[str] = (), days: int = 365,
               force: bool = False) -> list[Written]:
    """Writes (or keeps) the CA and the certificate of each of `names` in `folder`; what it did,
    per file. CertificateError when the CA there is broken (made anew, it would silently stop
    every certificate it signed from verifying)."""
    if days < 1:
        raise CertificateError(f"--days {days}: a certificate must be valid for at least one day")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    hosts = split_hosts(hosts)
    rows = []
    ca_path, ca_key_path = folder / "ca.pem", folder / "ca.key"
    found = None if force else _load(ca_path, ca_key_path)
    if not force and (found is None and (ca_path.exists() or ca_key_path.exists())
                      or found is not None and found[0].public_key() != found[1].public_key()):
        raise CertificateError(f"{ca_path} and {ca_key_path} are not a CA and its key: fix or remove them, "
                               "or pass --force to make a new CA")
    if found is not None:
        ca_cert, ca_key = found
        rows.append(_row(ca_path, ca_cert, "kept"))
    else:
        ca_key, ca_cert = make_ca()
        _write_key(ca_key_path, ca_key)
        _write_cert(ca_path, ca_cert)
        rows.append(_row(ca_path, ca_cert, "written"))
    for name in names:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        wanted = alt_names(name, hosts)
        existing = None if force else _load(cert_path, key_path)
        if existing and _keepable(existing[0], existing[1], ca_cert, wanted):
            rows.append(_row(cert_path, existing[0], "kept"))
            continue
        key, cert = make_leaf(name, hosts, days, ca_key, ca_cert)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        rows.append(_row(cert_path, cert, "written"))
    return rows


def issued(folder: Path, name: str, days: int = 825) -> tuple[Path, Path]:
    """(<name>.pem, <name>.key) in `folder`, signed by the CA there (both made when missing)."""
    init_certs(folder, [name], days=days)
    return folder / f"{name}.pem", folder / f"{name}.key"
