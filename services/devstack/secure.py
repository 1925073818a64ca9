"""A secure loop on this machine: what `driftline up --secure` and `python -m services.demo --secure`
give every process, made (or reused) under one folder.

`SecureLoop.prepare(folder)` makes a development CA and a certificate per service and one for the
operator's command line (services/common/certificates.py, in `folder/certs`), the token issuer's
Ed25519 key pair (`folder/auth`) and one token per principal: each service of
`auth.SERVICE_ROLES` gets one with only its roles, the operator one with `admin`, each in a 0600
file under `folder/auth/tokens`. A token there is reused while it still verifies (the key is the
same, it is not revoked, its roles are the ones wanted). `secure_env` then joins that with the
secure stack's logins (`Endpoints.env(principal)`: SASL_SSL as the principal's own SCRAM user,
the stack's CA, https S3): the variables every process shares (the CA, mTLS, the public key, the
revocation list), each service's own (its certificate and key, its token, its Kafka login) and
the operator's. Tokens are minted by `mint(subject, roles)`; `driftline up` passes the issuer of
services/cli/tokens.py so they appear in its ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.common import auth
from services.common.certificates import init_certs, write_private
from services.common.settings import CommonSettings

from .supervisor import SERVICES

OPERATOR = "operator"  # the command line and the demo: one Kafka principal, one admin token
CLIENT_CERT = "cli"  # the operator's client certificate (mTLS), as `driftline certs init` names it
SUMMARY = "TLS, tokens, SASL_SSL"  # what `driftline status` says a secure platform has

Mint = Callable[[str, tuple[str, ...]], str]


def principal_roles() -> dict[str, tuple[str, ...]]:
    """The roles of each token a secure loop issues: the services that call others, and the operator.

    >>> principal_roles()["trainer"], principal_roles()["operator"]
    (('read', 'train', 'promote'), ('admin',))
    """
    return {**auth.SERVICE_ROLES, OPERATOR: ("admin",)}


@dataclass(frozen=True)
class SecureLoop:
    folder: Path

    @property
    def certs(self) -> Path:
        return self.folder / "certs"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def private_key(self) -> Path:
        return self.folder / "auth" / "private.pem"

    @property
    def public_key(self) -> Path:
        return self.folder / "auth" / "public.pem"

    @property
    def revoked(self) -> Path:
        return self.folder / "auth" / "revoked"

    def token_file(self, principal: str) -> Path:
        return self.folder / "auth" / "tokens" / f"{principal}.token"

    @classmethod
    def prepare(cls, folder: Path, mint: Mint | None = None, hosts: Iterable[str] = ()) -> "SecureLoop":
        """Certificates, keys and tokens under `folder` (kept where still good)."""
        loop = cls(Path(folder).resolve())
        init_certs(loop.certs, [*SERVICES, CLIENT_CERT], hosts)
        if not loop.private_key.exists():
            loop.public_key.unlink(missing_ok=True)  # a public key without its private key verifies nothing issued here
            auth.write_keypair(loop.private_key, loop.public_key)
        mint = mint or loop._mint
        verifier = auth.Verifier(auth.load_public_key(loop.public_key), auth.RevocationList(loop.revoked, 0.0))
        for principal, roles in principal_roles().items():
            path = loop.token_file(principal)
            if not loop._still_good(verifier, path, roles):
                write_private(path, mint(principal, roles).encode())
        return loop

    def _mint(self, subject: str, roles: tuple[str, ...]) -> str:
        return auth.issue(auth.load_private_key(self.private_key), subject, roles)[0]

    @staticmethod
    def _still_good(verifier: auth.Verifier, path: Path, roles: tuple[str, ...]) -> bool:
        try:
            principal = verifier.principal(path.read_text().strip())
        except (OSError, auth.Unauthenticated):
            return False
        return principal.roles == frozenset(roles)

    # -- environments ---------------------------------------------------------------------------

    def shared_env(self) -> dict[str, str]:
        return {"DRIFTLINE_TLS_CA_FILE": str(self.ca_file), "DRIFTLINE_TLS_CLIENT_AUTH": "true",
                "DRIFTLINE_AUTH_PUBLIC_KEY_FILE": str(self.public_key),
                "DRIFTLINE_AUTH_REVOKED_FILE": str(self.revoked)}

    def identity_env(self, principal: str) -> dict[str, str]:
        """A process's own certificate, key and (when it calls others) token."""
        cert = CLIENT_CERT if principal == OPERATOR else principal
        found = {"DRIFTLINE_TLS_CERT_FILE": str(self.certs / f"{cert}.pem"),
                 "DRIFTLINE_TLS_KEY_FILE": str(self.certs / f"{cert}.key")}
        if principal in principal_roles():
            found["DRIFTLINE_TOKEN_FILE"] = str(self.token_file(principal))
        return found


def secure_env(loop: SecureLoop, stack, services: Iterable[str] = SERVICES
               ) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, str]]:
    """(shared, {service: its own}, the operator's) variables of a secure loop on `stack` (the
    secure local stack's `Endpoints`)."""
    shared = {**{k: v for k, v in stack.env(OPERATOR).items() if "SASL_USERNAME" not in k and "SASL_PASSWORD" not in k},
              **loop.shared_env()}
    own = {name: {**stack.env(name), **loop.identity_env(name)} for name in services}
    return shared, own, {**stack.env(OPERATOR), **loop.shared_env(), **loop.identity_env(OPERATOR)}


def settings_of(env: dict[str, str]) -> CommonSettings:
    """The CommonSettings of a process with these DRIFTLINE_* variables (over its own environment)."""
    known = CommonSettings.model_fields
    fields = {key[len("DRIFTLINE_"):].lower(): value for key, value in env.items() if key.startswith("DRIFTLINE_")}
    return CommonSettings(**{k: v for k, v in fields.items() if k in known})
