"""List settings come from one environment variable, comma-separated as deployments write them
today or as a JSON list; the defaults stand when the variable is not set."""

from __future__ import annotations

import pytest

from services.serving.settings import ServingSettings


@pytest.mark.parametrize("rows, providers", [("1,16, 64", "cuda,cpu"), ("[1, 16, 64]", '["cuda", "cpu"]')])
def test_a_list_setting_reads_the_comma_form_and_a_json_list(monkeypatch, rows, providers):
    monkeypatch.setenv("DRIFTLINE_WARMUP_ROWS", rows)
    monkeypatch.setenv("DRIFTLINE_EXECUTION_PROVIDER", providers)
    settings = ServingSettings()
    assert settings.warmup_rows == [1, 16, 64]
    assert settings.execution_provider == ["cuda", "cpu"]


def test_list_settings_keep_their_defaults_and_reject_what_is_no_list_of_their_type(monkeypatch):
    monkeypatch.delenv("DRIFTLINE_WARMUP_ROWS", raising=False)
    monkeypatch.delenv("DRIFTLINE_EXECUTION_PROVIDER", raising=False)
    assert (ServingSettings().warmup_rows, ServingSettings().execution_provider) == ([1, 8], ["auto"])
    monkeypatch.setenv("DRIFTLINE_WARMUP_ROWS", "1,many")
    with pytest.raises(ValueError, match="warmup_rows"):
        ServingSettings()
