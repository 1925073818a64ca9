"""`python -m services.serving` with a diagnostic patch, to measure what one part costs.

    BENCH_DRIFTLINE_PATCH=nolog python bench/peers/driftline_patched.py

Patches (comma-separated), for the benchmark only — never for production:
* `nolog`: PredictionLogger.submit does nothing (no prediction logs are built or produced).

bench/serving.py runs it for a `--driftline-variant NAME:BENCH_DRIFTLINE_PATCH=nolog` row.
"""

from __future__ import annotations

import os
import runpy

patches = {p for p in os.environ.get("BENCH_DRIFTLINE_PATCH", "").split(",") if p}
unknown = patches - {"nolog"}
if unknown:
    raise SystemExit(f"unknown BENCH_DRIFTLINE_PATCH {sorted(unknown)}")
if "nolog" in patches:
    from services.serving import prediction_log

    prediction_log.PredictionLogger.submit = lambda self, served: None

runpy.run_module("services.serving", run_name="__main__", alter_sys=True)
