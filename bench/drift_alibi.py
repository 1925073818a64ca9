"""alibi-detect's online detectors as a baseline for bench/drift.py, run in their own venv
(alibi-detect 0.13 pins numpy<2; the project is on numpy 2) as a subprocess:

    .cache/bench-venvs/alibi/bin/python bench/drift_alibi.py JOBDIR

JOBDIR/jobs.json lists {"name", "ref", "stream", "kind": "fet"|"cvm", "start"} with .npy
paths beside it; each stream is run from `start` (after its reference) event by event,
the detector reset after every detection. Writes JOBDIR/results.json:
{name: {"alarms": [event index...], "configure_s", "update_s", "updates"}}.

FETDriftOnline (Fisher's exact test) takes the 0/1 error streams, CVMDriftOnline
(Cramér–von Mises) the continuous feature streams; both at the expected run time
`ert` from jobs.json, with `window_sizes` and `n_bootstraps` from there too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(jobdir: Path) -> int:
    from alibi_detect.cd import CVMDriftOnline, FETDriftOnline

    spec = json.loads((jobdir / "jobs.json").read_text())
    results = {}
    for job in spec["jobs"]:
        ref = np.load(jobdir / job["ref"])
        stream = np.load(jobdir / job["stream"])
        started = time.perf_counter()
        np.random.seed(job.get("seed", 0))
        if job["kind"] == "fet":
            cd = FETDriftOnline(ref.astype(np.float64), ert=spec["ert"], window_sizes=spec["window_sizes"],
                                n_bootstraps=spec["n_bootstraps"], verbose=False)
        else:
            cd = CVMDriftOnline(ref.astype(np.float64), ert=spec["ert"], window_sizes=spec["window_sizes"],
                                n_bootstraps=spec["n_bootstraps"], verbose=False)
        configured = time.perf_counter()
        alarms = []
        for i in range(job["start"], len(stream)):
            if cd.predict(stream[i].astype(np.float64), return_test_stat=False)["data"]["is_drift"]:
                alarms.append(i)
                cd.reset_state()
        done = time.perf_counter()
        results[job["name"]] = {"alarms": alarms, "configure_s": configured - started, "update_s": done - configured,
                                "updates": len(stream) - job["start"]}
        print(f"alibi {job['name']}: {len(alarms)} alarms, configure {configured - started:.1f}s, "
              f"{(len(stream) - job['start']) / max(done - configured, 1e-9):.0f} updates/s", file=sys.stderr, flush=True)
    (jobdir / "results.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
