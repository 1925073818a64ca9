"""Every gRPC method of the contracts, against the real service process, with inputs hypothesis
makes from the method's descriptor and then breaks (fuzzkit.bodies), after the cases no generator
should be trusted to find (fuzzkit.targeted: huge strings, claimed shapes of gigabytes, 100,000-deep
nesting). No input may crash the server, hang a call past its deadline, or be answered UNKNOWN or
INTERNAL; the server's peak memory may not grow by anything near what a claimed shape would cost."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from fuzzkit import FINE, MODEL, Prober, bodies, call, examples, memory, methods, reset_peak, targeted

METHODS = methods()
INPUTS = [m.input for m in METHODS]
# The make-test form: reproducible (derandomized, no example database), bounded: 50 per method after
# the targeted cases (a streaming call that is accepted waits out its 0.5 s deadline, so Monitor.
# WatchDriftStats costs about 0.3 s an input); DRIFTLINE_FUZZ_EXAMPLES=N for more, bench/fuzz.py
# for randomized rounds.
EXAMPLES = examples(50)
# A claimed gigabyte that allocated would show as ≥ 1 GiB of peak growth. Below it: the allocator's
# retained buffers of the run's messages of up to 9 MiB (serving takes up to 129 MiB), seen up to
# 234 MiB (ModelInfer). test_a_claimed_shape_allocates_nothing_before_it_is_checked is the precise check.
PEAK_LIMIT = 512 << 20

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("method", METHODS, ids=[m.api for m in METHODS])
def test_method_survives_bad_input(fuzz_platform, fuzz_report, method):
    server = method.server
    prober = Prober(method, fuzz_platform.address(server), fuzz_platform.pid(server),
                    lambda: fuzz_platform.alive(server))
    for kind, body in targeted(method, MODEL):
        prober.send(kind, body)

    @FUZZ
    @given(bodies(method, INPUTS))
    def fuzz(case):
        prober.send(*case)

    fuzz()
    tally = prober.finish()
    fuzz_report.append(tally)
    assert tally.crashes == 0 and tally.hangs == 0, (tally.failures, fuzz_platform.log_tails())
    assert set(tally.codes) <= FINE, tally.failures
    assert tally.peak_growth < PEAK_LIMIT, tally.to_json()


# What a claimed shape may cost the server before it is refused: its message and a copy or two.
CLAIM_LIMIT = 16 << 20


@pytest.mark.parametrize("api", ["GRPCInferenceService.ModelInfer", "Predictor.Predict", "Ingest.IngestBatch",
                                 "FeatureStore.GetOnlineFeatures"])
def test_a_claimed_shape_allocates_nothing_before_it_is_checked(fuzz_platform, api):
    """OIP shapes of [2³¹, 2³¹] and [2⁶², 3] with 12 bytes of data, Predict with 100,000 rows or rows of
    262,144 values, 50,000 ingest records, 200,000 entity ids: each refused INVALID_ARGUMENT, and the
    server's peak memory (VmHWM, reset before each) grows by no more than a few copies of the message."""
    method = next(m for m in METHODS if m.api == api)
    pid = fuzz_platform.pid(method.server)
    cases = [body for kind, body in targeted(method, MODEL) if kind == "claimed-shape"]
    assert cases
    with grpc.insecure_channel(fuzz_platform.address(method.server),
                               options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        for body in cases:
            reset_peak(pid)
            before = memory(pid)
            code = call(channel, method, body, timeout=10)
            peak = memory(pid)["VmHWM"] - before["VmRSS"]
            assert code == "INVALID_ARGUMENT", (code, len(body))
            assert peak < CLAIM_LIMIT + 4 * len(body), (peak, len(body))
