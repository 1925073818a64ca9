from services.common.runtime import run_service

from .server import build
from .settings import MonitorSettings

run_service("monitor", MonitorSettings(), build)
