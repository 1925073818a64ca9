"""The reference contract (`services.common.reference`): what the trainer writes into a model
version's metadata.json is what the monitor reads, binning included. The trainer's references of
random numeric and categorical training data go through the pipeline's metadata.json and the real
object store to the monitor's `ModelReference.from_metadata`; the monitor's window (the bins its
drift statistics count) must put every value, the training rows included, in the bucket the
trainer counted it in."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from services.common.objectstore import MinioObjectStore, ObjectStores
from services.common.reference import CategoricalShares, DecileBins, TrainingReference
from services.common.reference import category_indices
from services.monitor.references import ModelReference
from services.monitor.tracker import SCORE, TrackerConfig, VersionTracker
from services.trainer.pipeline import Candidate
from services.trainer.reference import feature_references

# metadata.json's "reference" and "scores_reference" of `_fixed_candidate`, as the trainer wrote
# them before the contract had a module: models already registered carry this layout.
REGISTERED = (
    '{"reference": {"amount": {"edges": [0.0, 0.275, 0.55, 0.8250000000000002, 1.1, 1.375, 1.6500000000000004, '
    '1.9250000000000003, 2.2, 2.475, 2.75], "proportions": [0.16666666666666666, 0.08333333333333333, '
    '0.08333333333333333, 0.08333333333333333, 0.08333333333333333, 0.08333333333333333, 0.08333333333333333, '
    '0.08333333333333333, 0.08333333333333333, 0.16666666666666666]}, "channel": {"categories": [0.0, 1.0, 2.0], '
    '"edges": [0.0, 0.5, 1.5, 2.0], "proportions": [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]}, '
    '"flag": {"categories": [7.0], "edges": [7.0, 7.0], "proportions": [1.0]}, '
    '"rate": {"edges": [0.5, 0.5], "proportions": [1.0]}}, '
    '"scores_reference": {"edges": [0.0, 0.05, 0.1, 0.15000000000000002, 0.2, 0.25, 0.30000000000000004, '
    '0.35000000000000003, 0.4, 0.45, 0.5], "proportions": [0.2, 0.0, 0.2, 0.0, 0.0, 0.2, 0.0, 0.2, 0.0, 0.2]}}')


def _candidate(x: np.ndarray, names: list[str], scores: np.ndarray) -> Candidate:
    """What the pipeline keeps of a trained model, its reference built by the trainer's functions."""
    metrics = {"accuracy": 0.9, "train_rows": float(len(x)), "eval_rows": 100.0}
    return Candidate(b"onnx", names, 2, metrics,
                     TrainingReference(feature_references(x, names), scores=DecileBins.fit(scores)))


def _fixed_candidate() -> Candidate:
    x = np.c_[np.arange(12) / 4, np.arange(12) % 3, np.full(12, 7.0), np.full(12, 0.5)]
    return _candidate(x, ["amount", "channel", "flag", "rate"], np.arange(5) / 8)


def _random_training(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Columns of every kind the trainer meets: continuous, heavy-tailed, integer codes (some
    sparse, some a single value), bools, integers with too many values to be codes, a few
    distinct floats (repeated deciles), a constant float."""
    n = int(rng.integers(100, 3000))
    codes = rng.choice(100, int(rng.integers(1, 21)), replace=False).astype(float)
    columns = {
        "normal": rng.normal(rng.normal(0, 10), rng.uniform(0.1, 5), n),
        "lognormal": rng.lognormal(3, 1, n),
        "code": rng.choice(codes, n, p=rng.dirichlet(np.ones(len(codes)))),
        "flag": (rng.random(n) < rng.uniform(0.05, 0.95)).astype(float),
        "count": rng.integers(0, int(rng.integers(200, 5000)), n).astype(float),
        "steps": rng.integers(0, 4, n) / 2 + 0.25,
        "constant": np.full(n, rng.normal()),
    }
    names = list(rng.permutation(list(columns)))
    return np.c_[tuple(columns[name] for name in names)], names


def _probes(rng: np.random.Generator, training: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Values to bin: training values, every edge and its neighbours, values beyond the training
    range, integers the training data never had, NaN."""
    edges = np.asarray(edges)
    low, high = training.min(), training.max()
    return np.concatenate([rng.choice(training, 200), edges, np.nextafter(edges, -np.inf),
                           np.nextafter(edges, np.inf), [low - 1e6, low - 1, high + 1, high + 1e6, np.nan],
                           rng.integers(-5, 105, 50).astype(float), rng.uniform(low - 1, high + 1, 200)])


def _read_bins_indices(reference: ModelReference, name: str, values: np.ndarray) -> list[int]:
    """The bucket of each value by the reference the monitor read (not the trainer's object)."""
    bins = reference.scores if name == SCORE else reference.features[name]
    return [bins.index(v) for v in values]


def test_the_layout_is_the_one_registered_models_carry():
    metadata = _fixed_candidate().metadata("m", "d")
    written = {key: metadata[key] for key in ("reference", "scores_reference")}
    assert json.dumps(written, sort_keys=True) == REGISTERED
    # and what was written before reads back as the same typed reference
    assert TrainingReference.from_metadata(json.loads(REGISTERED)) == _fixed_candidate().reference


@pytest.fixture
def store(s3):
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, f"t-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    return store


def test_what_the_trainer_writes_is_what_the_monitor_reads(store, s3):
    monitor_store = ObjectStores(s3.endpoint, s3.access_key, s3.secret_key, s3.secure)
    kinds = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        x, names = _random_training(rng)
        scores = rng.beta(2, 5, len(x))
        candidate = _candidate(x, names, scores)
        written = candidate.metadata("m", "d", version=seed + 1)
        # the pipeline's put_json, the monitor's read_json (what RegistryReferences is given)
        uri = store.put_json(f"models/m/{seed + 1}/metadata.json", written).uri
        read = monitor_store.read_json(uri)
        assert read == written
        reference = ModelReference.from_metadata(read)

        trained = candidate.reference
        assert reference.feature_names == tuple(names) and reference.reference_rows == len(x)
        assert reference.features == trained.features and reference.scores == trained.scores
        for name, bins in trained.features.items():
            read_bins = reference.features[name]
            assert type(read_bins) is type(bins)
            assert (read_bins.edges, read_bins.proportions) == (bins.edges, bins.proportions)
            assert read["reference"][name] == bins.to_json()
            if bins.categorical:
                assert read_bins.categories == bins.categories == tuple(np.unique(x[:, names.index(name)]))
            kinds.add((name, bins.categorical))
        assert read["scores_reference"] == trained.scores.to_json()

        # The monitor's window bins each column as the trainer counted it: the training rows
        # give the reference's shares exactly, and every probe lands in the trainer's bucket.
        tracker = VersionTracker("m", seed + 1, TrackerConfig(psi_window=100, window_step=50,
                                                                 expected_run_length=20_000, calibration_streams=8))
        tracker.set_reference(reference)
        window = tracker.window
        assert window.names == [*names, SCORE]
        columns = [*x.T, scores]
        monitored = window.bin_indices(np.c_[tuple(columns)])
        for f, (name, values) in enumerate(zip(window.names, columns)):
            bins = trained.scores if name == SCORE else trained.features[name]
            assert monitored[:, f].tolist() == bins.indices(values).tolist(), name
            shares = np.bincount(monitored[:, f], minlength=len(bins.proportions)) / len(values)
            assert tuple(float(s) for s in shares) == bins.proportions, name
            probes = _probes(rng, values, bins.edges)
            on_monitor = window.bin_indices(np.tile(probes[:, None], (1, len(window.names))))[:, f]
            assert on_monitor.tolist() == bins.indices(probes).tolist() == _read_bins_indices(reference, name, probes)
    # every kind of column was met: codes and flags as categories, the rest as deciles
    assert {kind for kind in kinds if kind[0] in ("code", "flag")} == {("code", True), ("flag", True)}
    assert {kind for kind in kinds if kind[0] not in ("code", "flag")} == {
        (name, False) for name in ("normal", "lognormal", "count", "steps", "constant")}


def test_the_trainer_keeps_categories_and_the_monitor_reads_them():
    rng = np.random.default_rng(1)
    shares = np.array([0.5, 0.25, 0.15, 0.1])
    n = 20_000
    x = np.c_[rng.lognormal(3, 1, n), rng.choice(4, n, p=shares)]
    reference = ModelReference.from_metadata({"feature_names": ["amount", "channel"],
                                              **TrainingReference(feature_references(x, ["amount", "channel"]))
                                              .to_metadata()})
    channel, amount = reference.features["channel"], reference.features["amount"]
    assert channel.categorical and channel.categories == (0.0, 1.0, 2.0, 3.0)
    assert np.allclose(channel.proportions, shares, atol=0.02)
    assert not amount.categorical and len(amount.proportions) == 10
    # values never seen in training (and NaN) fall in the unseen bucket
    assert category_indices(np.array(channel.categories), np.array([3.0, 7.0, np.nan, 0.0])).tolist() == [3, 4, 4, 0]


def test_a_version_without_a_reference_and_malformed_ones():
    older = ModelReference.from_metadata({"feature_names": ["a"], "metrics": {"accuracy": 0.8}})
    assert older.features == {} and older.scores is None
    with pytest.raises(ValueError, match="categorical"):
        DecileBins.from_json({"edges": [0, 0.5, 1], "proportions": [0.4, 0.6], "categories": [0, 1]})
    with pytest.raises(ValueError):
        CategoricalShares((0.0, 1.0), (1.0,))
    with pytest.raises(ValueError):
        DecileBins.fit([])
