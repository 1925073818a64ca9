"""`driftline certs init [--dir DIR] [--hosts H …] [--days N] [--force]`: a development CA and one
certificate per service, for TLS and mTLS on every gRPC server and client (services/common/tls.py).

The folder (default `$DRIFTLINE_HOME/certs`) gets `ca.pem`/`ca.key` (a self-signed CA,
CA:true, key usage certSign) and `<name>.pem`/`<name>.key` for each of registry, ingest,
feature, serving, monitor, trainer and cli, signed by that CA. Every certificate names
localhost, 127.0.0.1, ::1, its service's name and each `--hosts` entry (an IP address or a DNS
name) as subject alternative names and is good for both ends of a connection (serverAuth and
clientAuth), since a service is a server to some and a client of others. Keys are ECDSA P-256
(quick to make, and what every TLS stack speaks), written 0600. Run again, it keeps the CA and
every certificate that the CA signed, that names every wanted host and that is not near its
end; `--force` makes everything anew. A service then runs with

    DRIFTLINE_TLS_CERT_FILE=DIR/registry.pem DRIFTLINE_TLS_KEY_FILE=DIR/registry.key
    DRIFTLINE_TLS_CA_FILE=DIR/ca.pem [DRIFTLINE_TLS_CLIENT_AUTH=true]

The certificates themselves are made by services/common/certificates.py, which
`driftline up --secure` and the secure local stack use too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.common.certificates import CertificateError, Written, init_certs as _init_certs

from . import output
from .errors import CliError
from .state import home

app = typer.Typer(help="Certificates for TLS between the services (a development CA).", no_args_is_help=True)

SERVICES = ("registry", "ingest", "feature", "serving", "monitor", "trainer", "cli")


def init_certs(folder: Path, hosts: list[str] = (), days: int = 365, force: bool = False,
               services: tuple[str, ...] = SERVICES) -> list[Written]:
    """The CA and every service's certificate in `folder` (CliError when they cannot be kept)."""
    try:
        return _init_certs(folder, services, hosts, days, force)
    except CertificateError as exc:
        raise CliError(str(exc)) from None


@app.command("init")
def init(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to write them (default $DRIFTLINE_HOME/certs).")] = None,
    hosts: Annotated[list[str] | None, typer.Option(
        "--hosts", help="More names every certificate answers to (repeat it, or comma-separate).")] = None,
    days: Annotated[int, typer.Option("--days", help="How long each service's certificate lasts.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Make a new CA and new certificates.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """A development CA and a certificate per service, for TLS and mTLS between them."""
    folder = (directory or home() / "certs").expanduser().resolve()
    rows = init_certs(folder, hosts or [], days, force)
    if json_out:
        return output.emit_json([vars(r) for r in rows])
    output.table(["file", "subject", "names", "not after", ""],
                 [(r.file, r.subject, r.names, r.not_after, r.state) for r in rows], title=f"certificates in {folder}")
    output.say(f"keys (.key, mode 0600) beside each certificate; serve with DRIFTLINE_TLS_CERT_FILE, "
               f"DRIFTLINE_TLS_KEY_FILE and DRIFTLINE_TLS_CA_FILE={folder / 'ca.pem'}")
