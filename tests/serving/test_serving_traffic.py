"""Traffic between variants: a `canary` alias answers a deterministic, key-sticky share of the
requests (DRIFTLINE_CANARY_WEIGHT); a `shadow` alias gets every answered request mirrored,
its answer only logged; every prediction log names variant and version; moving an alias
back is a rollback. Real serving process, broker, object store and ONNX models."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from driftline.v1 import serving_pb2
from inference import grpc_service_pb2 as pb
from services.common.kafka import Consumer
from services.monitor.codec import prediction_columns
from services.serving.traffic import bucket
from support import wait_for
from serving_stack import MODEL, as_numpy, infer_request, predict
from tiny_models import expected_scores

WEIGHT = 0.2
CALLS = 2000
ROW = [[1.0, 2.0, 3.0]]


def test_canary_split_is_deterministic_by_key_and_sticky_across_apis(stack):
    for version in (1, 2):
        stack.publish(version)
    stack.aliases.update(production=1, canary=2)  # found by GetAlias at start, no event needed

    with stack.serving(canary_weight=str(WEIGHT)) as s:
        predictor, oip = s.stubs()
        s.wait_version(predictor, 1)
        wait_for(lambda: s.metric("driftline_serving_variant_info", model=MODEL, variant="canary", version="2",
                                  provider="CPUExecutionProvider") == 1, 30, "the canary to load")

        keys = [f"caller-{i}" for i in range(CALLS)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda k: predict(predictor, ROW, key=k), keys))
        variants = {key: a.variant for key, a in zip(keys, answers)}
        for answer in answers:
            version = {"production": 1, "canary": 2}[answer.variant]
            assert answer.model_version == version
            np.testing.assert_allclose([answer.predictions[0].scores], expected_scores(version, ROW), rtol=1e-5)
        share = sum(v == "canary" for v in variants.values()) / CALLS
        print(f"\ncanary share over {CALLS} keyed calls at weight {WEIGHT}: {share:.2%}")
        assert abs(share - WEIGHT) <= 0.05
        # The split is the documented function of the key, so any process routes a key alike.
        assert all((variants[k] == "canary") == (bucket(k) < WEIGHT) for k in keys)

        # The same key always gets the same variant: again, by Predict, and by ModelInfer (id or parameter).
        sample = keys[:150]
        again = [predict(predictor, ROW, key=k).variant for k in sample]
        by_id = [oip.ModelInfer(infer_request(ROW, request_id=k), timeout=10) for k in sample]
        by_parameter = [oip.ModelInfer(infer_request(ROW, request_id=uuid.uuid4().hex, key=k), timeout=10)
                        for k in sample]
        expected = [variants[k] for k in sample]
        assert again == expected
        for answers_ in (by_id, by_parameter):
            assert [a.parameters["variant"].string_param for a in answers_] == expected
            assert [a.model_version for a in answers_] == [{"production": "1", "canary": "2"}[v] for v in expected]
        # Metadata lists production first, then the canary; an explicit version reaches either.
        meta, call = oip.ModelMetadata.with_call(pb.ModelMetadataRequest(name=MODEL))
        assert list(meta.versions) == ["1", "2"]
        assert dict(call.trailing_metadata()) == {"driftline-execution-provider": "CPUExecutionProvider",
                                                  "driftline-variant": "production",
                                                  "driftline-canary-version": "2"}
        request = infer_request(ROW, request_id=sample[0])
        request.model_version = "2"
        pinned = oip.ModelInfer(request, timeout=10)
        assert (pinned.model_version, pinned.parameters["variant"].string_param) == ("2", "canary")
        np.testing.assert_allclose(as_numpy(pinned), expected_scores(2, ROW), rtol=1e-5)

        # Rollback: the canary alias moves back to production's version → no canary at all.
        stack.move("canary", 1)
        wait_for(lambda: all(predict(predictor, ROW, key=k).variant == "production" for k in sample[:40]),
                 30, "the canary rollback")
        assert s.metric("driftline_serving_alias_loads_total", model=MODEL, alias="canary", outcome="reused") == 1
        # ... and forward again; then the alias points nowhere (an event with no version): no canary.
        stack.move("canary", 2)
        canary_key = next(k for k in keys if variants[k] == "canary")
        wait_for(lambda: predict(predictor, ROW, key=canary_key).variant == "canary", 30, "the canary again")
        stack.move("canary", 0)
        wait_for(lambda: predict(predictor, ROW, key=canary_key).variant == "production", 30, "no canary")
        assert s.metric("driftline_serving_alias_loads_total", model=MODEL, alias="canary", outcome="cleared") == 1

        # Rolling production back to an earlier version swaps it in from the cache (no download).
        stack.move("production", 2)
        s.wait_version(predictor, 2)
        stack.move("production", 1)
        s.wait_version(predictor, 1)
        assert s.metric("driftline_serving_alias_loads_total", model=MODEL, alias="production",
                        outcome="reused") >= 1


def test_shadow_answers_are_logged_and_never_reach_the_caller(stack):
    for version in (1, 2, 3):
        stack.publish(version)
    stack.aliases.update(production=1, canary=2)
    consumer = Consumer(stack.bootstrap, f"test-{uuid.uuid4().hex}", [stack.topics.predictions])
    try:
        with stack.serving(canary_weight="0.5") as s:
            predictor, oip = s.stubs()
            s.wait_version(predictor, 1)
            stack.move("shadow", 3)  # the shadow alias followed by its event
            wait_for(lambda: s.metric("driftline_serving_variant_info", model=MODEL, variant="shadow",
                                      version="3", provider="CPUExecutionProvider") == 1, 30, "the shadow to load")

            rows = np.random.default_rng(3).normal(size=(2, 3)).tolist()
            answers = {}
            for i in range(60):
                key = f"k{i}"
                if i % 2:
                    a = predict(predictor, rows, key=key)
                    answers[a.request_id] = (a.variant, a.model_version, np.array([p.scores for p in a.predictions]))
                else:
                    request_id = f"infer-{i}"
                    a = oip.ModelInfer(infer_request(rows, request_id=request_id, key=key), timeout=10)
                    answers[request_id] = (a.parameters["variant"].string_param, int(a.model_version), as_numpy(a))
            # The caller only ever sees production or canary, with their own scores.
            assert {variant for variant, _, _ in answers.values()} == {"production", "canary"}
            for variant, version, scores in answers.values():
                assert version == {"production": 1, "canary": 2}[variant]
                np.testing.assert_allclose(scores, expected_scores(version, rows), rtol=1e-5)

            logs: dict[tuple[str, str], serving_pb2.PredictionLog] = {}

            def logged() -> bool:
                for record in consumer.poll_batch(serving_pb2.PredictionLog, timeout=0.5):
                    logs[(record.value.request_id, record.value.variant)] = record.value
                return all((rid, "shadow") in logs and (rid, variant) in logs
                           for rid, (variant, _, _) in answers.items())

            wait_for(logged, 30, "the caller's and the shadow's prediction logs")
            assert s.metric("driftline_serving_shadow_requests_total", model=MODEL, outcome="ok") >= len(answers)

            # Rollback of the shadow: the alias points nowhere → nothing more is mirrored.
            stack.move("shadow", 0)
            wait_for(lambda: s.metric("driftline_serving_alias_loads_total", model=MODEL, alias="shadow",
                                      outcome="cleared") == 1, 30, "the shadow to be cleared")
            last = predict(predictor, rows, key="after")
            wait_for(lambda: [logged(), (last.request_id, last.variant) in logs][1], 30, "the last log")
            for _ in range(4):
                logged()  # a moment more for a mirrored log that should not come
    finally:
        consumer.close()

    for request_id, (variant, version, scores) in answers.items():
        primary, shadow = logs[(request_id, variant)], logs[(request_id, "shadow")]
        assert (primary.model_name, primary.model_version) == (MODEL, version)
        primary_rows, shadow_rows = prediction_columns(primary), prediction_columns(shadow)
        np.testing.assert_allclose(primary_rows.scores, scores, rtol=1e-6)
        assert (shadow.model_name, shadow.model_version) == (MODEL, 3)
        np.testing.assert_allclose(shadow_rows.scores, expected_scores(3, rows), rtol=1e-5)
        assert np.array_equal(shadow_rows.features, primary_rows.features)
    # Every log names its variant and version; nothing mirrored after the shadow was cleared.
    assert {(log.variant, log.model_version) for log in logs.values()} <= {("production", 1), ("canary", 2),
                                                                          ("shadow", 3)}
    assert (last.request_id, "shadow") not in logs
