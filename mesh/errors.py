"""One error tree for the whole mesh.

Every failure a user can meet is a :class:`MeshError` subclass carrying a message
that names the problem and what to do. ``code`` is the canonical status name
(the gRPC names, as plain strings, so this module imports no transport);
``retryable`` says whether the same request may succeed if tried again (elsewhere
or later). The mapping to gRPC lives in :mod:`mesh.grpc_errors`, and only there.
"""

from __future__ import annotations

from typing import ClassVar


class MeshError(Exception):
    """Base of every error meshserve raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    #: Class default; an instance may override it (a load failure may be transient).
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MeshError):
    """The request itself is wrong: a bad id, URI, tensor, document."""

    code = "INVALID_ARGUMENT"


class InvalidModelId(InvalidArgument):
    pass


class NotFound(MeshError):
    code = "NOT_FOUND"


class ModelNotFound(NotFound):
    pass


class AlreadyExists(MeshError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(MeshError):
    """The system is not in a state where the request can run (e.g. draining)."""

    code = "FAILED_PRECONDITION"


class ModelLoadingFailed(FailedPrecondition):
    """A model's load failed because of the model (its files do not parse, its storage
    object is missing or refused, its path is not allowed...), or its loads failed too
    often recently (it stays failed until the failures expire). REST answers 503."""


class Conflict(MeshError):
    """A compare-and-set lost a race; re-read and try again."""

    code = "ABORTED"
    retryable = True


class ResourceExhausted(MeshError):
    """Not enough capacity (memory, queue slots) to do it now."""

    code = "RESOURCE_EXHAUSTED"
    retryable = True


class MessageTooLarge(ResourceExhausted):
    """A request body over the configured message limit (HTTP 413 on REST)."""

    retryable = False


class Unavailable(MeshError):
    """A dependency (etcd, a runtime, storage) cannot be reached right now."""

    code = "UNAVAILABLE"
    retryable = True


class RegistryUnavailable(Unavailable):
    pass


class DeadlineExceeded(MeshError):
    code = "DEADLINE_EXCEEDED"
    retryable = True


class Cancelled(MeshError):
    code = "CANCELLED"


class PermissionDenied(MeshError):
    code = "PERMISSION_DENIED"


class Unauthenticated(MeshError):
    code = "UNAUTHENTICATED"


class Unimplemented(MeshError):
    code = "UNIMPLEMENTED"


class Internal(MeshError):
    code = "INTERNAL"


class CorruptRecord(Internal):
    """A registry value could not be decoded; callers skip it and log."""


class ModelLoadFailed(MeshError):
    """A load was attempted and failed: the model's files are not a loadable model (a
    fault of the model, not of the server: fix the files or the registration)."""

    code = "FAILED_PRECONDITION"


class LoadAborted(MeshError):
    """A load was cancelled before it finished (unloadModel, unregistration, shutdown);
    nothing of it was kept. Retry if the model is still wanted."""

    code = "ABORTED"


class ModelLoadRefused(FailedPrecondition):
    """The runtime's settings forbid loading this file (a pickle without
    ``--allow-pickle``, skops types nobody trusted); the message names the setting."""


# -- storage (raised by the puller; the runtime reports them as failed loads) --


class StorageError(MeshError):
    """Base for problems fetching a model's files."""


class StorageNotFound(StorageError):
    code = "NOT_FOUND"


class StorageAccessDenied(StorageError):
    code = "PERMISSION_DENIED"


class StorageUnreachable(StorageError):
    code = "UNAVAILABLE"
    retryable = True


class CorruptModel(StorageError):
    """Truncated or checksum-mismatched download, or a model file that does not parse."""

    code = "DATA_LOSS"


class UnsafeArchive(StorageError):
    """An archive entry would land outside its target (absolute path, '..', link out)."""

    code = "INVALID_ARGUMENT"


class UnsafePath(StorageError):
    """An object name or volume path would land outside its target ('..', absolute)."""

    code = "INVALID_ARGUMENT"


class StorageConfigInvalid(StorageError):
    """The storage config (or the model key's storage_key/storage_params) is unusable."""

    code = "FAILED_PRECONDITION"


class CacheFull(StorageError):
    """The disk cache cannot make room: models held by runtimes fill it, or the model
    alone exceeds the budget."""

    code = "RESOURCE_EXHAUSTED"
    retryable = True
