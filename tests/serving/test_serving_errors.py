"""What a client can send wrong beyond tests/test_serving_oip.py's cases: an oversized message
is INVALID_ARGUMENT saying so (not gRPC's bare RESOURCE_EXHAUSTED), and nothing a client
sends — garbage bytes, mutated requests, absurd shapes — crashes the server."""

from __future__ import annotations

import random

import grpc
import numpy as np

from driftline.v1 import serving_pb2
from inference import grpc_service_pb2 as pb
from serving_stack import MODEL, as_numpy, infer_request, predict
from tiny_models import expected_scores

ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]
LIMIT = 200_000  # DRIFTLINE_MAX_MESSAGE_BYTES for these tests


def code_and_details(call, request, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_an_oversized_message_is_invalid_argument_saying_what_was_wrong(stack):
    stack.publish(1)
    stack.aliases["production"] = 1
    with stack.serving(max_message_bytes=str(LIMIT)) as s:
        predictor, oip = s.stubs()
        s.wait_version(predictor, 1)
        big = np.random.default_rng(0).normal(size=(20_000, 3)).astype(np.float32)  # 240 kB raw

        code, details = code_and_details(oip.ModelInfer, infer_request(big))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert f"at most {LIMIT} are accepted" in details and "bytes" in details
        code, details = code_and_details(
            predictor.Predict, serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=r)
                                                                                 for r in big.tolist()]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {LIMIT} are accepted" in details

        # Just under the limit is served.
        fits = big[:10_000]
        np.testing.assert_allclose(as_numpy(oip.ModelInfer(infer_request(fits), timeout=10)),
                                   expected_scores(1, fits), rtol=1e-4, atol=1e-6)
        # Far beyond gRPC's own receive limit (2 × limit + 1 MiB) gRPC refuses before reading it;
        # the server is unharmed.
        huge = np.zeros((200_000, 3), np.float32)  # 2.4 MB
        code, _ = code_and_details(oip.ModelInfer, infer_request(huge))
        assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        assert predict(predictor, ROWS).model_version == 1
        assert s.metric("driftline_serving_requests_total", model=MODEL, api="infer",
                        outcome="invalid_argument") >= 1


def test_nothing_a_client_sends_crashes_the_server(stack):
    stack.publish(1)
    stack.aliases["production"] = 1
    with stack.serving(max_message_bytes=str(LIMIT), max_request_rows="1000") as s:
        predictor, oip = s.stubs()
        s.wait_version(predictor, 1)
        channel = s.channel()
        rng = random.Random(4)
        raw_methods = [channel.unary_unary(f"/{service}/{method}")
                       for service, method in [("driftline.v1.Predictor", "Predict"),
                                               ("inference.GRPCInferenceService", "ModelInfer"),
                                               ("inference.GRPCInferenceService", "ModelMetadata"),
                                               ("inference.GRPCInferenceService", "ModelReady")]]
        valid_infer = infer_request(ROWS).SerializeToString()
        valid_predict = serving_pb2.PredictRequest(
            model_name=MODEL, rows=[serving_pb2.Row(values=r) for r in ROWS]).SerializeToString()
        seen: dict[str, int] = {}
        unknown: list[str] = []

        def mutate(data: bytes) -> bytes:
            data = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            return bytes(data)

        for i in range(300):
            method = raw_methods[i % len(raw_methods)]
            kind = i % 3
            if kind == 0:
                payload = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
            else:
                payload = mutate(valid_infer if i % 2 else valid_predict)
            code, details = code_and_details(method, payload, timeout=5)
            seen[code.name] = seen.get(code.name, 0) + 1
            if code == grpc.StatusCode.UNKNOWN:
                unknown.append(details)

        # Absurd but well-formed requests.
        odd = []
        for shape in ([2**40, 3], [1, 2**40], [-1, 3], [0, 3], [2, 3, 1], [], [2**62, 2**62]):
            request = infer_request(ROWS)
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(shape)
            odd.append(request)
        typed_and_raw = infer_request(ROWS)
        typed_and_raw.inputs[0].contents.fp32_contents.extend([1.0] * 6)
        odd.append(typed_and_raw)
        wrong_typed = infer_request(ROWS)
        del wrong_typed.raw_input_contents[:]
        wrong_typed.inputs[0].contents.int64_contents.extend([1] * 6)
        odd.append(wrong_typed)
        for request in odd:
            code, details = code_and_details(oip.ModelInfer, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (list(request.inputs[0].shape), code, details)
        for request in (serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=[1e39] * 3)]),
                        serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row()] * 3),
                        serving_pb2.PredictRequest(model_name=MODEL,
                                                   rows=[serving_pb2.Row(values=[0, 0, 0])] * 1001)):
            code, _ = code_and_details(predictor.Predict, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, request.rows[:1])

        s.run.assert_running()
        assert oip.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert predict(predictor, ROWS).model_version == 1
        # No request reached an unhandled error in a servicer (those surface as UNKNOWN).
        assert "UNKNOWN" not in seen, (seen, sorted(set(unknown))[:10])
        assert set(seen) <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}, seen
        print(f"\nfuzzed calls by status: {seen}")
