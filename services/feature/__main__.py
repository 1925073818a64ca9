"""`python -m services.feature` — a faust worker; faust owns the event loop and
the signal handling (SIGTERM → clean stop, see worker.py)."""

from services.common.telemetry import configure_logging, start_metrics

from .settings import FeatureSettings
from .worker import build_worker

if __name__ == "__main__":
    settings = FeatureSettings()
    configure_logging("feature", settings.log_level, settings.log_json)
    start_metrics(settings.metrics_port, settings.metrics_host)
    build_worker(settings).execute_from_commandline()
