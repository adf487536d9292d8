"""Error types: user mistakes raise `SglcError` subclasses, which name what is wrong."""


class SglcError(Exception):
    """Base class of every error caused by user input (bad program, request or file)."""


class InvalidRequestError(SglcError, ValueError):
    """A request's prompt or sampling parameters are invalid; the message names the parameter."""


class ModelLoadError(SglcError):
    """A model could not be found, downloaded or read."""


class ConstraintError(InvalidRequestError):
    """A regex, JSON schema or dtype constraint cannot be compiled; names the construct."""


class EngineClosedError(SglcError):
    """The engine was shut down while a request was waiting on it."""


class RequestAbortedError(SglcError):
    """The caller abandoned the request (cancelled, disconnected, closed its stream)."""


class EngineDiedError(SglcError):
    """The engine's process died (killed, out of memory); requests in flight failed with this."""
