"""The error a malformed graph or IR text raises."""

from sglc_runtime.errors import SglcError


class IRError(SglcError):
    """The IR text does not parse, or a graph breaks an invariant (the message shows the
    graph, marking the offending nodes)."""
