"""Domain errors, each mapped to one gRPC status code by the servicer."""


class RegistryError(Exception):
    """Base class; the message is what the client sees."""


class NotFound(RegistryError):
    """An unknown model, version or alias (NOT_FOUND)."""


class InvalidArgument(RegistryError):
    """A request that can never succeed as sent (INVALID_ARGUMENT)."""


class AliasChanged(RegistryError):
    """The alias moved while the gate was evaluating; the decision is void (ABORTED)."""
