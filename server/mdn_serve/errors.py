"""One exception tree for the server core. Protocol adapters map it to status codes in one place."""

from __future__ import annotations


class MdnError(Exception):
    """Base of every error the core raises on purpose; its message is safe to show a client."""


class InvalidInput(MdnError):
    """The request is malformed or out of range (gRPC INVALID_ARGUMENT)."""


class ModelNotFound(MdnError):
    """No such model or version (gRPC NOT_FOUND)."""


class LimitExceeded(MdnError):
    """The request is well-formed but larger than the server's limits (gRPC INVALID_ARGUMENT).

    A batch over the row limit or a sample count over the sample limit is something the
    client must change, so it is reported like any other bad argument, with the limit.
    """


class ModelLoadError(MdnError):
    """A model in the repository cannot be served (raised at start-up, naming the file)."""


class LoadFailed(MdnError):
    """A model cannot be loaded or unloaded on request: its file fails, or the server does not take
    such requests (gRPC FAILED_PRECONDITION)."""


class Unavailable(MdnError):
    """The server cannot take the request now (gRPC UNAVAILABLE)."""


class Overloaded(MdnError):
    """The server holds as much as its budgets allow: load is shed at once (gRPC RESOURCE_EXHAUSTED)."""


class QueueFull(Overloaded):
    """The model's request queue is full, in count or in time."""


class DeadlineExpired(MdnError):
    """The caller's deadline passed before the request was computed (gRPC DEADLINE_EXCEEDED)."""
