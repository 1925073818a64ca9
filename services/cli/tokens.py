"""`driftline tokens create --role R … | list | revoke JTI`: the platform's bearer tokens.

This command is the issuer: it holds the Ed25519 private key and signs tokens that every
service verifies with the public key alone (services/common/auth.py). The key pair is made on
first use under `$DRIFTLINE_HOME/auth/` (the private key readable by its owner only, so the
right to mint tokens, including admin ones, is the right to read that file):

    $DRIFTLINE_HOME/auth/
      private.pem     the issuer's key (DRIFTLINE_AUTH_PRIVATE_KEY_FILE overrides)
      public.pem      what the services verify with (DRIFTLINE_AUTH_PUBLIC_KEY_FILE)
      revoked         revoked token ids, one a line (DRIFTLINE_AUTH_REVOKED_FILE), which the
                      services re-read when it changes
      tokens.json     the ledger: jti, sub, roles, iat, exp, revoked of every token issued here,
                      never a token itself (it is printed once, by `create`)

>>> ttl_seconds("30d"), ttl_seconds("12h"), ttl_seconds("90"), ttl_seconds(None)
(2592000, 43200, 90, None)
>>> ttl_seconds("soon")
Traceback (most recent call last):
...
services.cli.errors.CliError: --ttl 'soon': a number with an optional unit s, m, h, d or w (30d, 12h, 900)
"""

from __future__ import annotations

import getpass
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from services.common import auth

from . import output
from .errors import CliError
from .state import Platform, read_json, write_json

app = typer.Typer(help="Bearer tokens: create (printed once), list, revoke.", no_args_is_help=True)
JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TTL = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def ttl_seconds(text: str | None) -> int | None:
    if text is None:
        return None
    match = _TTL.match(text)
    if not match:
        raise CliError(f"--ttl {text!r}: a number with an optional unit s, m, h, d or w (30d, 12h, 900)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class Issuer:
    """The key pair, the revocation list and the ledger of one platform."""

    private_key: Path
    public_key: Path
    revoked: Path
    ledger: Path

    @classmethod
    def of(cls, platform: Platform) -> "Issuer":
        settings, folder = platform.settings, platform.home / "auth"
        private = Path(settings.auth_private_key_file or folder / "private.pem")
        return cls(private, Path(settings.auth_public_key_file or private.with_name("public.pem")),
                   Path(settings.auth_revoked_file or folder / "revoked"), folder / "tokens.json")

    def ensure_keys(self) -> None:
        """Makes the key pair when there is none (first use)."""
        if self.private_key.exists():
            if not self.public_key.exists():
                raise CliError(f"{self.private_key} exists but {self.public_key} does not: the services cannot "
                               "verify what this key signs")
            return
        if self.public_key.exists():
            raise CliError(f"{self.public_key} exists without its private key {self.private_key}: "
                           "tokens cannot be issued for it here")
        auth.write_keypair(self.private_key, self.public_key)

    def create(self, subject: str, roles: list[str], ttl_s: int | None) -> tuple[str, dict]:
        """A new token and its ledger entry."""
        self.ensure_keys()
        try:
            token, claims = auth.issue(auth.load_private_key(self.private_key), subject, roles, ttl_s)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        entry = {"jti": claims["jti"], "sub": claims["sub"], "roles": claims["roles"], "iat": claims["iat"],
                 "exp": claims.get("exp"), "revoked": False}
        doc = read_json(self.ledger)
        write_json(self.ledger, {"tokens": [*doc.get("tokens", []), entry]})
        return token, entry

    def entries(self) -> list[dict]:
        return list(read_json(self.ledger).get("tokens", []))

    def revoke(self, jti: str) -> dict:
        entries = self.entries()
        found = next((e for e in entries if e["jti"] == jti), None)
        if found is None:
            raise CliError(f"no token with id {jti!r} in {self.ledger} (driftline tokens list)")
        if not found["revoked"]:
            self.revoked.parent.mkdir(parents=True, exist_ok=True)
            with self.revoked.open("a") as f:  # appended: a service re-reads the whole list when it changes
                f.write(jti + "\n")
            found["revoked"] = True
            write_json(self.ledger, {"tokens": entries})
        return found


def _iso(epoch_s: int | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s)) if epoch_s else "-"


@app.command("create")
def create(role: Annotated[list[str], typer.Option("--role", help=f"A role ({', '.join(auth.ROLES)}); repeat for more.")],
           subject: Annotated[str | None, typer.Option("--subject", help="Who holds it (default: your user name).")] = None,
           ttl: Annotated[str | None, typer.Option("--ttl", help="Lifetime: 30d, 12h, 900 (seconds); default: none.")] = None,
           json_out: JsonOut = False) -> None:
    """Issue a token; it is printed once (only its id is kept)."""
    token, entry = Issuer.of(Platform.load()).create(subject or getpass.getuser(), role, ttl_seconds(ttl))
    if json_out:
        return output.emit_json({**entry, "token": token})
    output.err.print(f"token {entry['jti']} for {entry['sub']} ({', '.join(entry['roles'])}), "
                     f"expires {_iso(entry['exp'])}; it is not shown again:", markup=False)
    output.say(token)


@app.command("list")
def list_tokens(json_out: JsonOut = False) -> None:
    """Every token issued here: id, subject, roles, issued, expires, revoked (never the token)."""
    entries = Issuer.of(Platform.load()).entries()
    if json_out:
        return output.emit_json(entries)
    now = time.time()
    output.table(["jti", "subject", "roles", "issued", "expires", "state"],
                 [(e["jti"], e["sub"], ",".join(e["roles"]), _iso(e["iat"]), _iso(e["exp"]),
                   "revoked" if e["revoked"] else "expired" if e["exp"] and e["exp"] <= now else "valid")
                  for e in entries])


@app.command("revoke")
def revoke(jti: Annotated[str, typer.Argument(help="The token's id (driftline tokens list).")],
           json_out: JsonOut = False) -> None:
    """Revoke a token: every service refuses it once it has re-read the revocation list (≤ 1 s)."""
    entry = Issuer.of(Platform.load()).revoke(jti)
    if json_out:
        return output.emit_json(entry)
    output.say(f"revoked {entry['jti']} ({entry['sub']})")
