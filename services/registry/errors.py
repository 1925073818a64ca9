"""The registry's own refusal; the rest are services.common.errors' (NotFound, InvalidArgument),
which the gRPC server answers with their status code."""

from services.common.errors import Aborted


class AliasChanged(Aborted):
    """The alias moved while the gate was evaluating; the decision is void (ABORTED)."""
