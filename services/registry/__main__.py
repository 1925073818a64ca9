from services.common.runtime import run_service

from .server import build
from .settings import RegistrySettings

run_service("registry", RegistrySettings(), build)
