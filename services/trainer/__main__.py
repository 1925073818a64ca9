from services.common.runtime import run_service

from .server import build
from .settings import TrainerSettings

run_service("trainer", TrainerSettings(), build)
