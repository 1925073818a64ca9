"""The secure local stack's private CA, server certificates and generated secrets.

A development CA (`ca.pem`, services/common/certificates.py, the one implementation that
`driftline certs init` uses too) signs one certificate per server (the broker, MinIO) for the
loopback names; the broker's certificate also serves as its client certificate on the KRaft
controller listener. Passwords are generated once per stack with `secrets` and kept 0600 beside
the certificates: the secure stack has no default password anywhere.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from services.common.certificates import issued, write_private

_VALID_DAYS = 825


def ensure_server_cert(directory: Path, name: str, ca_dir: Path | None = None) -> tuple[Path, Path]:
    """(<name>.pem, <name>.key) in `directory`, signed by the CA there (made on the first call),
    valid for the loopback names as server and client. `ca_dir` is `directory`: one folder holds
    the CA and what it signed."""
    if ca_dir is not None and Path(ca_dir) != Path(directory):
        raise ValueError(f"the CA lives beside its certificates: {ca_dir} is not {directory}")
    return issued(Path(directory), name, _VALID_DAYS)


def secret_file(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{name: password} from the 0600 JSON file at `path`; names it lacks get a new random one."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [n for n in names if n not in known]
    if missing:
        known.update({n: secrets.token_urlsafe(24) for n in missing})
        write_private(path, json.dumps(known, indent=2, sort_keys=True).encode())
    return {n: known[n] for n in names}
