from services.common.runtime import run_service

from .server import build
from .settings import ServingSettings

run_service("serving", ServingSettings(), build)
