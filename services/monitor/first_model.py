"""The platform starts itself: a stream whose model has no production version asks for its first.

Per stream of the catalogue (`services.common.streams.StreamCatalog`: a stream names its model,
`StreamSchema.model_name`), the monitor counts labelled feature records (a FeatureRecord's
`feature_set` is its stream; an empty one is the default stream). Once a stream has counted
`first_model_min_rows` of them, its model has no `production` version and no first-model request
of that model is outstanding, ONE TrainingRequest goes out: that model and stream, the window
from the first labelled row counted, `min_rows` = the setting, no params (the trainer's defaults).
The trainer trains, registers and Promotes it to `production` like any request, and with nothing
in production the gate promotes it (`services/registry/gate.py`: "pointed nowhere").

Whether a model has a production version is known from the registry's events (ALIAS_MOVED of
`production`) and from `Registry.GetAlias`, asked at start and every `first_model_check_s` until
one exists (`ProductionLookups`). A registry that does not answer is not a "no": a request goes
out only after the registry said the alias points nowhere. A result that failed or was not
promoted re-arms the stream: it asks again once it has counted as many NEW labelled rows (data,
not a timer, decides). The state is in memory: a restarted monitor counts afresh.

>>> import tempfile, pathlib
>>> from services.common.streams import StreamCatalog
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "sea.json").write_text('{"stream": "sea", "model": "sea-model", "fields": [{"name": "x", "type": "number"}]}')
>>> first = FirstModels(StreamCatalog(folder, default="sea"), min_rows=100)
>>> first.add("sea", 150, lambda: 1_700_000_000_000); first.due()  # the registry has not answered yet
[]
>>> first.absent("sea-model"); [(r.model_name, r.stream, r.min_rows) for r in first.due()]
[('sea-model', 'sea', 100)]
>>> first.add("", 500, lambda: 0); first.due()  # the default stream, but one request is outstanding
[]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from driftline.v1 import training_pb2
from services.common.registry_client import RegistryClient
from services.common.streams import StreamCatalog
from services.common.threads import Backoff, StoppableThread

from .metrics import FIRST_MODEL_REQUESTS, FIRST_MODEL_ROWS, TRAINING_REQUESTS
from .retraining import RequestIds

log = logging.getLogger(__name__)

PRODUCTION = "production"
REQUEST_PREFIX = "first-model-"  # request ids; the reason starts with "first model"


@dataclass
class _Stream:
    model: str
    rows: int = 0                # labelled rows counted since the stream was (re-)armed
    total: int = 0               # every labelled row counted
    first_ms: int | None = None  # event time of the first one: the training window's start
    attempts: int = 0            # first-model requests published
    last_error: str = ""         # why the previous attempt did not give a production version


class FirstModels:
    """The first-model rule, per stream of the catalogue (pure state: the monitor feeds it under
    its lock and publishes what `due` returns)."""

    def __init__(self, catalog: StreamCatalog, min_rows: int) -> None:
        self.catalog = catalog
        self.min_rows = min_rows
        self._models: dict[str, str] = {}          # stream → its model, as of the catalogue's last read
        self._streams: dict[str, _Stream] = {}
        self._production: dict[str, int] = {}      # model → its production version, once known
        self._absent: set[str] = set()             # models the registry said have none
        self._outstanding: dict[str, tuple[str, str]] = {}  # request id → (model, stream)
        self._waiting_logged: set[str] = set()
        # Request ids are derived, not drawn: the same decision replayed from a snapshot (after a
        # restart) gives the same id, so the trainer can tell a repeat from a new request.
        self._ids = RequestIds()
        self.counting = False  # whether any stream still needs its first model (else nothing is counted)
        self.refresh(force=True)

    # -- what the monitor tells it -----------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Re-reads the catalogue (it only stats the folder, at most once a second)."""
        self.catalog.refresh(force)
        # (compared, not taken from refresh's answer: another reader of the catalogue may have had it)
        models = {schema.stream: schema.model_name for schema in self.catalog}
        if models != self._models or force:
            self._models = models
            self._recount()

    def add(self, stream: str, rows: int, first_ms: Callable[[], int]) -> None:
        """`rows` labelled feature records of `stream` ("" = the default stream); `first_ms` reads the
        event time of the first of them, called only for a stream's first rows."""
        stream = stream or self.catalog.default
        model = self._models.get(stream)
        if model is None or model in self._production:
            return  # not a stream of the catalogue, or its model serves already
        state = self._streams.get(stream)
        if state is None or state.model != model:
            state = self._streams[stream] = _Stream(model)
        if state.first_ms is None:
            state.first_ms = first_ms() or None
        state.rows += rows
        state.total += rows
        FIRST_MODEL_ROWS.labels(stream).set(state.rows)

    def production(self, model: str, version: int) -> None:
        """`model`'s production alias points at `version` (a registry event or a lookup)."""
        if version <= 0 or model in self._production:
            return
        self._production[model] = version
        self._absent.discard(model)
        for stream, state in list(self._streams.items()):
            if state.model == model:
                del self._streams[stream]
                _remove_gauge(stream)
        self._recount()

    def absent(self, model: str) -> None:
        """The registry answered that `model`'s production alias points nowhere."""
        if model not in self._production:
            self._absent.add(model)

    def on_result(self, result: training_pb2.TrainingResult) -> bool:
        """The trainer's answer to a first-model request (False: not one of them). Promoted: the model
        serves. Failed or not promoted: the stream asks again after as many new labelled rows."""
        asked = self._outstanding.pop(result.request_id, None)
        if asked is None:
            return False
        model, stream = asked
        if result.status == training_pb2.TrainingResult.SUCCEEDED and result.promoted:
            log.info("first model promoted", extra={"model": model, "stream": stream, "version": result.version,
                                                    "request_id": result.request_id})
            self.production(model, result.version)
            return True
        state = self._streams.get(stream)
        why = result.error or (f"v{result.version} was not promoted"
                               if result.status == training_pb2.TrainingResult.SUCCEEDED else "no result")
        if state is not None and model not in self._production:
            state.rows = 0
            state.last_error = why
            FIRST_MODEL_ROWS.labels(stream).set(0)
        log.warning("first model not in production; asking again after new labelled rows", extra={
            "model": model, "stream": stream, "request_id": result.request_id, "rows_needed": self.min_rows,
            "status": training_pb2.TrainingResult.Status.Name(result.status), "error": why})
        return True

    # -- what it answers -----------------------------------------------------------------------

    def waiting(self) -> list[str]:
        """The models of the catalogue's streams with no known production version: what the
        registry is asked about."""
        return sorted({m for m in self._models.values() if m not in self._production})

    def due(self) -> list[training_pb2.TrainingRequest]:
        """The first-model requests to publish now (each recorded as outstanding)."""
        requests = []
        for stream, model in sorted(self._models.items()):
            state = self._streams.get(stream)
            if state is None or state.model != model or state.rows < self.min_rows or model in self._production:
                continue
            if any(m == model for m, _ in self._outstanding.values()):
                continue
            if model not in self._absent:
                if model not in self._waiting_logged:  # the registry has not said "none" yet
                    self._waiting_logged.add(model)
                    log.info("first model: waiting for the registry to say whether a production version exists",
                             extra={"model": model, "stream": stream, "rows": state.total})
                continue
            requests.append(self._request(stream, state))
        return requests

    def status(self) -> list[dict]:
        """Per stream of the catalogue: its model and where its first model stands (the dashboard)."""
        found = []
        for stream, model in sorted(self._models.items()):
            state = self._streams.get(stream)
            if model in self._production:
                where = f"production v{self._production[model]}"
            elif any(m == model for m, _ in self._outstanding.values()):
                where = "first model requested"
            elif model in self._absent:
                where = "counting labelled rows"
            else:
                where = "waiting for the registry"
            found.append({"stream": stream, "model": model, "state": where,
                          "rows": state.rows if state else 0, "min_rows": self.min_rows})
        return found

    # -- inside ----------------------------------------------------------------------------------

    def _request(self, stream: str, state: _Stream) -> training_pb2.TrainingRequest:
        state.attempts += 1
        again = f"; attempt {state.attempts}, the last one: {state.last_error}" if state.attempts > 1 else ""
        request = training_pb2.TrainingRequest(
            request_id=f"{REQUEST_PREFIX}{self._ids.next(state.model, stream).hex}", model_name=state.model, stream=stream,
            min_rows=self.min_rows, trigger=training_pb2.TrainingRequest.FIRST_MODEL,
            reason=(f"first model: stream {stream!r} has {state.total:,} labelled rows "
                    f"(first_model_min_rows {self.min_rows:,}) and {state.model!r} has no production version"
                    f"{again}"))
        if state.first_ms:
            request.window_start.FromMilliseconds(state.first_ms)
        request.requested_at.GetCurrentTime()
        self._outstanding[request.request_id] = (state.model, stream)
        FIRST_MODEL_REQUESTS.labels(state.model, stream).inc()
        TRAINING_REQUESTS.labels(state.model).inc()
        log.warning("no production model; first model requested", extra={
            "model": state.model, "stream": stream, "request_id": request.request_id, "rows": state.total,
            "attempt": state.attempts})
        return request

    def _recount(self) -> None:
        self.counting = any(m not in self._production for m in self._models.values())


def _remove_gauge(stream: str) -> None:
    try:
        FIRST_MODEL_ROWS.remove(stream)
    except KeyError:  # never set
        pass


class ProductionLookups(StoppableThread):
    """Asks the registry, at start and every `every_s`, whether each waiting model has a
    `production` version, until it has; a registry that is not up yet is asked again sooner
    (back-off from 0.5 s to 2 s), and its failures are logged once per streak, never raised."""

    def __init__(self, models: Callable[[], list[str]], found: Callable[[str, int | None], None],
                 registry: RegistryClient, every_s: float) -> None:
        super().__init__("production-lookups")
        self.models = models
        self.found = found
        self.registry = registry
        self.every_s = every_s
        self._failing = False

    def run(self) -> None:
        backoff = Backoff(0.5, min(2.0, self.every_s))
        while not self.stopping:
            failed = False
            for model in self.models():
                try:
                    version = self.registry.alias(model, PRODUCTION)
                except Exception as exc:  # grpc.RpcError mostly: the registry is not up (yet)
                    failed = True
                    if not self._failing:
                        log.warning("cannot ask the registry for production versions yet; retrying",
                                    extra={"model": model, "error": _why(exc)})
                    break
                self.found(model, version.version if version is not None else None)
            if failed:
                self._failing = True
                self.wait(backoff.next())
            else:
                if self._failing:
                    log.info("the registry answers production lookups again")
                self._failing = False
                backoff.reset()
                self.wait(self.every_s)
        self.registry.close()


def _why(exc: Exception) -> str:
    """A gRPC error's code and details (its str() is a multi-line dump), else the exception."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return repr(exc)
