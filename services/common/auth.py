"""Bearer tokens and roles: who may call what, checked before a handler runs.

A token is a JWT signed with Ed25519 by the deployment's issuer (`driftline tokens create`,
which alone holds the private key). Every server verifies it with the public key alone
(`auth_public_key_file`), so no token database sits on the request path; revocation is a
small file of revoked token ids (`auth_revoked_file`), re-read when it changes. Claims: `sub`
(who), `roles`, `jti` (the token's id), `iat`, `exp` (optional) and `iss` = "driftline".

Each gRPC method and HTTP path needs one role (`METHOD_ROLES`, `HTTP_ROLES`; health checking,
reflection and /healthz stay open for probes and grpcurl), and `admin` holds every role. No
token, or one that does not verify: UNAUTHENTICATED (HTTP 401); a token without the role:
PERMISSION_DENIED (403); each message says what was wrong. Authentication is on when the
public key is set; without it a server answers everyone as "anonymous", and only on loopback
(`check_bind`). The caller of the running call is `current_principal()`.

>>> role_for("/driftline.v1.Registry/SetAlias"), role_for("/grpc.health.v1.Health/Check")
('admin', None)
>>> Principal("ci", frozenset({"train"})).allows("train"), Principal("ops", frozenset({"admin"})).allows("predict")
(True, True)
>>> bearer("Bearer abc.def"), bearer("basic abc"), bearer(None)
('abc.def', None, None)
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import PermissionDenied, ServiceError, Unauthenticated

if TYPE_CHECKING:
    from .settings import CommonSettings

log = logging.getLogger(__name__)

ISSUER = "driftline"
ALGORITHM = "EdDSA"
ROLES = ("predict", "ingest", "read", "train", "promote", "admin")
ANONYMOUS_SUBJECT = "anonymous"

_REGISTRY, _OIP = "/driftline.v1.Registry/", "/inference.GRPCInferenceService/"
# The one table of who may call what: full method path -> the role it needs. A method of the
# contracts missing here is refused to all but admin (tests/security checks none is missing).
METHOD_ROLES: dict[str, str] = {
    **{_REGISTRY + m: "read" for m in ("GetModelVersion", "ListModelVersions", "GetAlias", "GetGateDecisions",
                                       "GetAuditLog")},
    _REGISTRY + "RegisterModelVersion": "train",
    _REGISTRY + "Promote": "promote",  # through the gate
    _REGISTRY + "SetAlias": "admin",  # past the gate, with a reason
    "/driftline.v1.Ingest/IngestBatch": "ingest",
    "/driftline.v1.FeatureStore/GetOnlineFeatures": "read",
    "/driftline.v1.Predictor/Predict": "predict",
    **{_OIP + m: "predict" for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                                     "ModelInfer")},
    "/driftline.v1.Monitor/GetDriftReport": "read",
    "/driftline.v1.Monitor/WatchDriftStats": "read",
}
# Each service's own principal: the roles of the token it calls other services with (ingest,
# feature and registry call no one); the command line uses the operator's token.
SERVICE_ROLES: dict[str, tuple[str, ...]] = {"serving": ("read",), "monitor": ("read",),
                                             "trainer": ("read", "train", "promote")}
# Open to anyone: Kubernetes probes and grpcurl's discovery carry no token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
# The monitor's dashboard and the Prometheus endpoints; /healthz stays open.
HTTP_ROLES: dict[str, str] = {"/": "read", "/api/state": "read", "/events": "read", "/metrics": "read"}
HTTP_OPEN = ("/healthz",)
COOKIE = "driftline_token"  # the dashboard's browser sends its token this way (EventSource sets no header)


def role_for(method: str) -> str | None:
    """The role a full gRPC method path needs; None for the open services; admin when unknown."""
    if method.startswith(OPEN_SERVICES):
        return None
    return METHOD_ROLES.get(method, "admin")


def bearer(value: str | None) -> str | None:
    """The token of an `authorization` value "Bearer <token>", None when it is not one."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# -- keys and tokens -----------------------------------------------------------------------

def write_keypair(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair as PEM files; the private one readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def issue(key: Ed25519PrivateKey, subject: str, roles: Iterable[str], ttl_s: float | None = None,
          now: float | None = None) -> tuple[str, dict]:
    """A signed token and its claims. `now` is for tokens issued in the past (tests)."""
    roles = sorted(set(roles))
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"roles must be some of {', '.join(ROLES)}; got {', '.join(unknown) or 'none'}")
    if not subject:
        raise ValueError("a token needs a subject")
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "sub": subject, "roles": roles, "jti": uuid.uuid4().hex, "iat": issued}
    if ttl_s is not None:
        claims["exp"] = issued + int(ttl_s)
    return jwt.encode(claims, key, algorithm=ALGORITHM), claims


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a verified token's subject and roles."""

    subject: str
    roles: frozenset[str]
    jti: str = ""
    expires_at: float | None = None

    def allows(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


ANONYMOUS = Principal(ANONYMOUS_SUBJECT, frozenset(ROLES))
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("driftline_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The caller of the call being handled; ANONYMOUS when the server has no authentication."""
    return _current.get()


class RevocationList:
    """The revoked token ids: one per line of `path`, re-read when the file changes (looked at
    no more than every `min_interval_s`, so a call costs a clock read)."""

    def __init__(self, path: str | Path | None, min_interval_s: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.min_interval_s = min_interval_s
        self._ids: frozenset[str] = frozenset()
        self._mtime: float | None = None
        self._checked_at = float("-inf")

    def __contains__(self, jti: str) -> bool:
        self._refresh()
        return jti in self._ids

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked_at < self.min_interval_s:
            return
        self._checked_at = now
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._ids = frozenset(line.strip() for line in self.path.read_text().splitlines() if line.strip())
                self._mtime = mtime
        except FileNotFoundError:
            self._ids, self._mtime = frozenset(), None
        except OSError as exc:  # keep the ids known so far: a refusal list must not empty itself
            log.error("cannot read the revoked tokens", extra={"path": str(self.path), "error": str(exc)})


class Verifier:
    """Checks tokens against the deployment's public key and the revocation list.

    A token's signature is checked once; its principal is then cached by the token's text, so a
    client that sends the same token on every call pays a dictionary look-up, the expiry and the
    revocation check (a revoked or expired token is refused from the next call on)."""

    CACHE_SIZE = 4096

    def __init__(self, public_key: Ed25519PublicKey, revoked: RevocationList | None = None) -> None:
        self.public_key = public_key
        self.revoked = revoked or RevocationList(None)
        self._cache: dict[str, Principal] = {}

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> "Verifier | None":
        """The verifier of `auth_public_key_file`; None when authentication is off."""
        if not getattr(settings, "auth_public_key_file", ""):
            return None
        return cls(load_public_key(settings.auth_public_key_file),
                   RevocationList(settings.auth_revoked_file or None))

    def principal(self, token: str) -> Principal:
        """The verified caller; raises Unauthenticated saying why the token is refused."""
        found = self._cache.get(token)
        if found is None:
            found = self._decode(token)
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[token] = found
        if found.expires_at is not None and time.time() >= found.expires_at:
            raise Unauthenticated(f"token refused: expired at {_iso(found.expires_at)} (subject {found.subject!r})")
        if found.jti in self.revoked:
            raise Unauthenticated(f"token refused: revoked (jti {found.jti}, subject {found.subject!r})")
        return found

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self.public_key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["sub", "jti", "iat", "iss"], "verify_exp": False})
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token refused: bad signature (not signed by this deployment's issuer)") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token refused: {exc}") from None
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token refused: its 'roles' claim is not a list of role names")
        exp = claims.get("exp")
        if exp is not None and not isinstance(exp, (int, float)):
            raise Unauthenticated("token refused: its 'exp' claim is not a time")
        return Principal(str(claims["sub"]), frozenset(roles), str(claims["jti"]), exp)

    def authorize(self, authorization: str | None, role: str, what: str) -> Principal:
        """The caller of `what` (a method or path) if its `authorization` value carries a valid
        token with `role`; Unauthenticated or PermissionDenied otherwise."""
        token = bearer(authorization)
        if token is None:
            if authorization:
                raise Unauthenticated("the authorization value is not 'Bearer <token>'")
            raise Unauthenticated(f"no token: {what} needs one with role {role!r}, sent as "
                                  "'authorization: Bearer <token>' (DRIFTLINE_TOKEN; `driftline tokens create`)")
        principal = self.principal(token)
        if not principal.allows(role):
            raise PermissionDenied(f"{what} needs role {role!r}; the token of {principal.subject!r} has "
                                   f"{', '.join(sorted(principal.roles)) or 'no roles'}")
        return principal


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def check_bind(bind: str, settings: CommonSettings, verifier: Verifier | None,
               host_setting: str = "DRIFTLINE_GRPC_HOST") -> None:
    """Refuses (tls.InsecureBind) to serve `bind` beyond loopback without authentication, unless
    `allow_insecure`: the TLS rule and message (tls.refuse_beyond_loopback); `host_setting` is the
    setting that would move this server to loopback."""
    if verifier is not None:
        return
    from . import tls

    tls.refuse_beyond_loopback(bind, settings, lacking="without authentication", fix=(
        "Set DRIFTLINE_AUTH_PUBLIC_KEY_FILE (the token issuer's public key; `driftline tokens create` "
        "makes the key pair under $DRIFTLINE_HOME/auth/)"), host_setting=host_setting)


def client_token(settings: CommonSettings) -> str:
    """The token this process sends: `token` (DRIFTLINE_TOKEN), else the contents of `token_file`;
    empty when it has none."""
    token = settings.token.get_secret_value() if hasattr(settings, "token") else ""
    if not token and getattr(settings, "token_file", ""):
        token = Path(settings.token_file).read_text().strip()
    return token


# -- gRPC ----------------------------------------------------------------------------------

def with_token(credentials: grpc.ChannelCredentials | None, token: str, address: str) -> grpc.ChannelCredentials:
    """`credentials` (TLS; None: plaintext) that also send `token` on every call. Plaintext is
    only allowed on loopback, where a local channel carries it; beyond, a ValueError says why."""
    if credentials is None:
        from . import tls

        target = address.rpartition("///")[2]
        host = target.rpartition(":")[0] if ":" in target else target
        if not tls.is_loopback(host):
            raise ValueError(f"refusing to send a bearer token to {address} in plaintext: set DRIFTLINE_TLS_CA_FILE "
                             "(the CA that signed its certificate)")
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    return grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))


def _authorization(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


def guarding(verifier: Verifier, method: str, behavior: Callable) -> Callable:
    """`behavior` (a handler's function, any kind) called only for a caller with the role
    `method` needs, as `current_principal()` while it runs. A refusal ends the call with its
    status before the handler does any work, also before a request that did not decode is
    refused (errors.translating): a caller without a token learns nothing about the method."""
    role = role_for(method)
    if role is None:
        return behavior

    def admit(context) -> tuple[contextvars.Token | None, ServiceError | None]:
        try:
            return _current.set(verifier.authorize(_authorization(context), role, method)), None
        except ServiceError as exc:
            return None, exc

    if inspect.isasyncgenfunction(behavior):
        async def streaming(request, context):
            _, refused = admit(context)  # the call's own task: the principal ends with it
            if refused:
                await context.abort(refused.code, refused.message)
            async for response in behavior(request, context):
                yield response
        return streaming
    if inspect.iscoroutinefunction(behavior):
        async def unary(request, context):
            _, refused = admit(context)
            if refused:
                await context.abort(refused.code, refused.message)
            return await behavior(request, context)
        return unary
    if inspect.isgeneratorfunction(behavior):
        def sync_streaming(request, context):
            admitted, refused = admit(context)
            if refused:
                context.abort(refused.code, refused.message)
            try:
                yield from behavior(request, context)
            finally:
                _current.reset(admitted)
        return sync_streaming

    def sync_unary(request, context):
        admitted, refused = admit(context)
        if refused:
            context.abort(refused.code, refused.message)
        try:
            return behavior(request, context)
        finally:
            _current.reset(admitted)
    return sync_unary


_KINDS = {"unary_unary": grpc.unary_unary_rpc_method_handler, "unary_stream": grpc.unary_stream_rpc_method_handler,
          "stream_unary": grpc.stream_unary_rpc_method_handler, "stream_stream": grpc.stream_stream_rpc_method_handler}


def guarded(verifier: Verifier, service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The method handler with its behavior under `guarding` (applied once, at registration, over
    the handler `errors.translating` made, whose deserializer it keeps)."""
    path = f"/{service}/{method}"
    if role_for(path) is None:
        return handler
    for kind, build in _KINDS.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            return build(guarding(verifier, path, behavior), request_deserializer=handler.request_deserializer,
                         response_serializer=handler.response_serializer)
    return handler


# -- HTTP ----------------------------------------------------------------------------------

def http_refusal(verifier: Verifier | None, path: str, authorization: str | None,
                 cookie: str | None = None) -> tuple[int, str] | None:
    """(HTTP status, message) refusing a request for `path`, or None to let it through. The token
    comes from the authorization header, else from the dashboard's cookie."""
    if verifier is None or path in HTTP_OPEN:
        return None
    role = HTTP_ROLES.get(path, "admin")
    if bearer(authorization) is None and not authorization and cookie:
        authorization = f"Bearer {cookie}"
    try:
        verifier.authorize(authorization, role, path)
    except Unauthenticated as exc:
        return 401, exc.message
    except PermissionDenied as exc:
        return 403, exc.message
    return None


def aiohttp_middleware(verifier: Verifier | None):
    """An aiohttp middleware enforcing `HTTP_ROLES`. A browser opens the dashboard once as
    `/?token=<token>`: the token is moved into an HttpOnly cookie and the address bar loses it."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler):
        if verifier is not None and "token" in request.query and request.path == "/":
            refusal = http_refusal(verifier, "/", f"Bearer {request.query['token']}")
            if refusal is None:
                response = web.HTTPSeeOther("/")
                response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict")
                return response
        else:
            refusal = http_refusal(verifier, request.path, request.headers.get("Authorization"),
                                   request.cookies.get(COOKIE))
        if refusal is not None:
            status, message = refusal
            return web.json_response({"error": message}, status=status,
                                     headers={"WWW-Authenticate": 'Bearer realm="driftline"'})
        return await handler(request)

    return check


def wsgi_guard(app: Callable, verifier: Verifier | None) -> Callable:
    """A WSGI app (the Prometheus endpoint's) behind `HTTP_ROLES`."""
    if verifier is None:
        return app

    def guarded_app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path in HTTP_OPEN:
            # The open probe answers for itself: the Prometheus app serves its metrics on any path.
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok"]
        refusal = http_refusal(verifier, path, environ.get("HTTP_AUTHORIZATION"))
        if refusal is None:
            return app(environ, start_response)
        status, message = refusal
        start_response(f"{status} {'Unauthorized' if status == 401 else 'Forbidden'}",
                       [("Content-Type", "text/plain; charset=utf-8"),
                        ("WWW-Authenticate", 'Bearer realm="driftline"')])
        return [message.encode()]

    return guarded_app
