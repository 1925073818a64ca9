"""Progressive retraining's schedule (services/monitor/refresh.py): pure logic, no services."""

from __future__ import annotations

import pickle

from driftline.v1 import training_pb2
from services.monitor.refresh import DRIFT, FIRST_MODEL, REFRESH, Refreshes
from services.monitor.retraining import RequestIds

SUCCEEDED, FAILED = training_pb2.TrainingResult.SUCCEEDED, training_pb2.TrainingResult.FAILED


def started(refreshes: Refreshes, request_id: str = "drift-1", *, start_ms: int = 1000, min_rows: int = 300,
            trigger: int = DRIFT, counted: int = 0, model: str = "m") -> training_pb2.TrainingRequest:
    request = training_pb2.TrainingRequest(request_id=request_id, model_name=model, stream="s", min_rows=min_rows,
                                           trigger=trigger, reason="concept drift [alert a1] in m v1: CUSUM")
    request.window_start.FromMilliseconds(start_ms)
    refreshes.follow(request, counted=counted)
    return request


def answer(refreshes: Refreshes, request_id: str, promoted: bool = True, status: int = SUCCEEDED) -> bool:
    return refreshes.on_result(training_pb2.TrainingResult(request_id=request_id, model_name="m", status=status,
                                                           promoted=promoted))


def count(refreshes: Refreshes, first_ms: int, n: int, model: str = "m") -> None:
    for t in range(first_ms, first_ms + n):
        refreshes.count(model, t)


def test_each_refresh_waits_for_twice_the_rows_of_the_last_and_for_its_answer():
    refreshes = Refreshes(max_rows=100_000, until_rows=100_000, max_refusals=3)
    started(refreshes, min_rows=300)
    count(refreshes, 1000, 599)
    assert refreshes.due() == []  # the first retrain's answer has not come
    assert answer(refreshes, "drift-1")
    assert refreshes.due() == []  # 599 < 2 × 300
    count(refreshes, 1599, 1)
    (first,) = refreshes.due()
    assert (first.trigger, first.min_rows, first.window_start.ToMilliseconds()) == (REFRESH, 600, 1000)
    assert "refresh 1 after concept drift" in first.reason
    count(refreshes, 1600, 2000)
    assert refreshes.due() == []  # one in flight at a time
    assert answer(refreshes, first.request_id)
    (second,) = refreshes.due()
    assert second.min_rows == 2600 and second.request_id != first.request_id


def test_rows_before_the_change_and_of_other_models_are_not_counted():
    refreshes = Refreshes(max_rows=10_000, until_rows=10_000, max_refusals=3)
    started(refreshes, min_rows=100, start_ms=5000)
    answer(refreshes, "drift-1")
    count(refreshes, 0, 5000)          # before the change
    count(refreshes, 5000, 500, model="other")
    assert refreshes.due() == []
    count(refreshes, 5000, 200)
    assert [r.min_rows for r in refreshes.due()] == [200]


def test_a_late_refresh_trains_on_the_latest_rows_only_leaving_out_the_transition():
    refreshes = Refreshes(max_rows=1000, until_rows=100_000, max_refusals=3)
    started(refreshes, min_rows=1000, start_ms=0)
    answer(refreshes, "drift-1")
    count(refreshes, 0, 2500)          # event times 0..2499
    (refresh,) = refreshes.due()
    assert refresh.min_rows == 1000 and refresh.window_start.ToMilliseconds() == 1500


def test_refusals_in_a_row_end_the_progression_and_a_promotion_resets_them():
    refreshes = Refreshes(max_rows=10_000, until_rows=100_000, max_refusals=2)
    started(refreshes, min_rows=10)
    answer(refreshes, "drift-1", promoted=False)   # refusal 1: the data-driven retry follows
    count(refreshes, 1000, 20)
    (retry,) = refreshes.due()
    answer(refreshes, retry.request_id, promoted=True)
    count(refreshes, 1020, 20)
    (again,) = refreshes.due()
    answer(refreshes, again.request_id, promoted=False)
    count(refreshes, 1040, 40)
    (last,) = refreshes.due()
    answer(refreshes, last.request_id, status=FAILED)  # two in a row
    count(refreshes, 1080, 1000)
    assert refreshes.due() == [] and refreshes.status() == []


def test_the_progression_ends_once_the_regime_has_until_rows_and_a_new_regime_replaces_it():
    refreshes = Refreshes(max_rows=10_000, until_rows=1000, max_refusals=3)
    started(refreshes, min_rows=400)
    answer(refreshes, "drift-1")
    count(refreshes, 1000, 800)
    (refresh,) = refreshes.due()
    answer(refreshes, refresh.request_id)
    count(refreshes, 1800, 1000)
    assert refreshes.due() == [] and refreshes.status() == []   # 1800 rows > until_rows

    started(refreshes, "drift-2", min_rows=400, start_ms=10_000)
    started(refreshes, "drift-3", min_rows=50, start_ms=20_000)  # a newer change of the same model
    assert not answer(refreshes, "drift-2")
    assert answer(refreshes, "drift-3")
    count(refreshes, 20_000, 100)
    assert [r.window_start.ToMilliseconds() for r in refreshes.due()] == [20_000]


def test_a_first_model_counts_the_rows_it_trained_on():
    refreshes = Refreshes(max_rows=10_000, until_rows=100_000, max_refusals=3)
    started(refreshes, "first-model-1", min_rows=2000, trigger=FIRST_MODEL, counted=2000, start_ms=0)
    answer(refreshes, "first-model-1")
    count(refreshes, 100_000, 2000)
    (refresh,) = refreshes.due()
    assert refresh.min_rows == 4000 and refresh.window_start.ToMilliseconds() == 0
    assert "after the first model" in refresh.reason


def test_no_refreshes_when_until_rows_is_zero():
    refreshes = Refreshes(max_rows=1000, until_rows=0, max_refusals=3)
    started(refreshes, min_rows=10)
    count(refreshes, 1000, 1000)
    assert not answer(refreshes, "drift-1") and refreshes.due() == []


def test_a_refresh_replayed_from_a_snapshot_asks_under_the_same_id():
    refreshes = Refreshes(max_rows=1000, until_rows=100_000, max_refusals=3, ids=RequestIds())
    started(refreshes, min_rows=10)
    answer(refreshes, "drift-1")
    count(refreshes, 1000, 20)
    restored = pickle.loads(pickle.dumps(refreshes))
    assert [r.request_id for r in refreshes.due()] == [r.request_id for r in restored.due()]
