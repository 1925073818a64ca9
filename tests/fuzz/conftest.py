"""The fuzz suite's platform (every service as a process, started once) and its report: inputs per
API, the codes they met, crashes, hangs and memory growth, written to fuzz-report.json and printed
at the end; the tests assert the verdicts, the report only records the figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_platform import Infrastructure, running  # noqa: E402
from fuzzkit import report_table  # noqa: E402


@pytest.fixture(scope="session")
def fuzz_platform(kafka_bootstrap, s3, tmp_path_factory):
    infra = Infrastructure(kafka_bootstrap, s3.endpoint, s3.access_key, s3.secret_key, s3.secure)
    with running(infra, tmp_path_factory.mktemp("fuzz")) as platform:
        yield platform


@pytest.fixture(scope="session")
def fuzz_report(tmp_path_factory, request):
    tallies: list = []
    yield tallies
    if not tallies:
        return
    out = tmp_path_factory.getbasetemp() / "fuzz-report.json"
    out.write_text(json.dumps([t.to_json() for t in tallies], indent=2))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nfuzz report: {out}\n{report_table(tallies)}", flush=True)
