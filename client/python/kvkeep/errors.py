"""Errors: every failed RPC raises a KvkeepError subclass named after its gRPC status code."""

import contextlib

import grpc


class KvkeepError(Exception):
    """A failed kvkeep call. `code` is the gRPC status code name (e.g. "NOT_FOUND"), `message`
    the daemon's explanation, `status_code` the grpc.StatusCode."""

    status_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message="", status_code=None):
        if status_code is not None:
            self.status_code = status_code
        self.message = message
        super().__init__(f"{self.code}: {message}")

    @property
    def code(self):
        return self.status_code.name


def _subclass(name, status_code):
    cls = type(name, (KvkeepError,), {"status_code": status_code,
                                      "__doc__": f"gRPC status {status_code.name}."})
    cls.__module__ = __name__
    return cls


Cancelled = _subclass("Cancelled", grpc.StatusCode.CANCELLED)
Unknown = _subclass("Unknown", grpc.StatusCode.UNKNOWN)
InvalidArgument = _subclass("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT)
DeadlineExceeded = _subclass("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED)
NotFound = _subclass("NotFound", grpc.StatusCode.NOT_FOUND)
AlreadyExists = _subclass("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS)
PermissionDenied = _subclass("PermissionDenied", grpc.StatusCode.PERMISSION_DENIED)
ResourceExhausted = _subclass("ResourceExhausted", grpc.StatusCode.RESOURCE_EXHAUSTED)
FailedPrecondition = _subclass("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION)
Aborted = _subclass("Aborted", grpc.StatusCode.ABORTED)
OutOfRange = _subclass("OutOfRange", grpc.StatusCode.OUT_OF_RANGE)
Unimplemented = _subclass("Unimplemented", grpc.StatusCode.UNIMPLEMENTED)
Internal = _subclass("Internal", grpc.StatusCode.INTERNAL)
Unavailable = _subclass("Unavailable", grpc.StatusCode.UNAVAILABLE)
DataLoss = _subclass("DataLoss", grpc.StatusCode.DATA_LOSS)
Unauthenticated = _subclass("Unauthenticated", grpc.StatusCode.UNAUTHENTICATED)

_BY_CODE = {cls.status_code: cls for cls in (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented,
    Internal, Unavailable, DataLoss, Unauthenticated)}


def from_rpc_error(err):
    """The KvkeepError for a grpc.RpcError (or any grpc.Call that failed)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, KvkeepError)
    return cls(details or "", code)


@contextlib.contextmanager
def translated():
    """Turns grpc.RpcError raised inside the block into the matching KvkeepError."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err) from None
