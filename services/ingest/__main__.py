"""`python -m services.ingest`"""

from services.common.runtime import run_service

from .server import build
from .settings import IngestSettings

if __name__ == "__main__":
    run_service("ingest", IngestSettings(), build)
