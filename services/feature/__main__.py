"""`python -m services.feature` — the events processor, the segment writers and the
FeatureStore server in one process (worker.py); SIGTERM/SIGINT stop it cleanly."""

from services.common.runtime import run_service

from .settings import FeatureSettings
from .worker import build_worker

if __name__ == "__main__":
    run_service("feature", FeatureSettings(), build_worker)
