"""Hot swap under load: Predict and ModelInfer callers never fail while `production` moves
three times — once to an artifact that cannot load — and every answer comes from a version
that was production (in serving) at some point during its call.

"Production at some point during the call", precisely: version v is production from the
moment the registry moved the alias to it until serving installed its successor. A move to
an artifact that fails to load installs nothing (the old version keeps serving, by design),
so its version never answers. Serving's install time is observed, not trusted: it lies
before the end of the first call its successor answered. So an answer by v from a call
[start, end] is right when `move(v) <= end` and `start <= first answer of successor(v)`.
"""

from __future__ import annotations

import json
import os
import threading
import time

import grpc
import numpy as np

from support import wait_for
from serving_stack import MODEL, as_numpy, infer_request, predict
from tiny_models import expected_scores

ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]
CLIENTS_PER_API = 3


def json_line(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}


def corrupt_onnx() -> bytes:
    """Bytes that are no ONNX model; registered with their own sha256, so the hash check passes."""
    return b"\x08\x09" + os.urandom(4096)


def test_hot_swap_under_load_fails_no_call_and_answers_only_from_production(stack):
    stack.publish(1)
    stack.move("production", 1)
    for version in (2, 4):
        stack.publish(version)
    stack.publish(3, corrupt_onnx())

    with stack.serving(max_queue_delay_ms="2", log_json="true") as s:
        predictor, oip = s.stubs()
        s.wait_version(predictor, 1)

        calls: list[tuple[str, float, float, int, str]] = []  # (api, start, end, version, caller)
        failures: list[str] = []
        wrong_scores: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(api: str) -> None:
            # One channel per client, so the callers are as independent as separate processes.
            my_predictor, my_oip = s.stubs(s.channel())
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if api == "predict":
                        answer = predict(my_predictor, ROWS, timeout=10)
                        version = answer.model_version
                        scores = np.array([p.scores for p in answer.predictions])
                    else:
                        answer = my_oip.ModelInfer(infer_request(ROWS), timeout=10)
                        version = int(answer.model_version)
                        scores = as_numpy(answer)
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{api} {exc.code().name}: {exc.details()}")
                    continue
                ended = time.monotonic()
                if version not in (1, 2, 4) or not np.allclose(scores, expected_scores(version, ROWS), rtol=1e-5):
                    wrong_scores.append(f"{api} v{version}: {scores.tolist()}")
                with lock:
                    calls.append((api, started, ended, version, threading.current_thread().name))

        def answered(version: int, api: str, after: float = 0.0) -> int:
            with lock:
                return sum(1 for a, start, _, v, _ in calls if v == version and a == api and start >= after)

        threads = [threading.Thread(target=client, args=(api,), name=f"{api}-{i}")
                   for api in ("predict", "infer") for i in range(CLIENTS_PER_API)]
        moves: dict[int, float] = {1: 0.0}
        try:
            for thread in threads:
                thread.start()
            wait_for(lambda: answered(1, "predict") >= 30 and answered(1, "infer") >= 30, 30, "load on v1")

            moves[2] = time.monotonic()
            stack.move("production", 2)  # 1st move: a good version
            wait_for(lambda: answered(2, "predict") >= 30 and answered(2, "infer") >= 30, 30, "load on v2")

            moves[3] = time.monotonic()
            stack.move("production", 3)  # 2nd move: hash matches, the artifact is no model
            wait_for(lambda: s.metric("driftline_serving_model_loads_total", model=MODEL,
                                      outcome="refused_invalid") == 1, 30, "the failed load to be counted")
            refused_at = time.monotonic()
            wait_for(lambda: answered(2, "predict", refused_at) >= 30 and answered(2, "infer", refused_at) >= 30,
                     30, "v2 to keep answering after the failed load")

            moves[4] = time.monotonic()
            stack.move("production", 4)  # 3rd move: the event consumer kept going, a good version again
            wait_for(lambda: answered(4, "predict") >= 30 and answered(4, "infer") >= 30, 30, "load on v4")
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)

        assert failures == [], failures[:10]
        assert wrong_scores == [], wrong_scores[:10]
        assert {c[3] for c in calls} == {1, 2, 4}, "the artifact that failed to load never answered"

        # Every answer from a version that was production (in serving) at some point during the call.
        successor = {1: 2, 2: 4}
        first_end = {v: min(end for _, _, end, version, _ in calls if version == v) for v in (2, 4)}
        late = [(api, v, round(start - first_end[successor[v]], 4)) for api, start, end, v, _ in calls
                if v in successor and start > first_end[successor[v]]]
        early = [(api, v) for api, start, end, v, _ in calls if end < moves[v]]
        assert late == [], f"answers from a version already replaced when the call began: {late[:10]}"
        assert early == [], f"answers from a version before production moved to it: {early[:10]}"

        # Each caller's answers only move forward: 1 → 2 → 4, never back.
        for thread in threads:
            versions = [v for *_, v, caller in sorted(calls, key=lambda c: c[1]) if caller == thread.name]
            assert versions == sorted(versions) and set(versions) == {1, 2, 4}, (thread.name, versions[:5])

        # The failed load is reported (metric + log) and did not stop the event consumer.
        assert s.metric("driftline_serving_alias_loads_total", model=MODEL, alias="production",
                        outcome="refused_invalid") == 1
        assert s.metric("driftline_serving_model_loads_total", model=MODEL, outcome="loaded") == 3
        assert s.metric("driftline_serving_model_version", model=MODEL) == 4
        refusals = [entry for entry in map(json_line, s.log_text().splitlines())
                    if entry.get("msg") == "artifact refused; the current model keeps serving"]
        assert [(r["version"], r["outcome"], r["serving_version"]) for r in refusals] == [(3, "refused_invalid", 2)]
        assert "is not an ONNX model" in refusals[0]["reason"]  # refused by the artifact check
        counts = {api: sum(1 for c in calls if c[0] == api) for api in ("predict", "infer")}
        per_version = {v: sum(1 for c in calls if c[3] == v) for v in (1, 2, 4)}
        print(f"\nhot swap: {len(calls)} calls ({counts}), 0 failed; answers per version {per_version}; "
              f"3 moves (v2, v3 refused_invalid, v4)")
