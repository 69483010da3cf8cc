"""kvkeep: the Python client of the kvkeep KV-cache daemon (kvkeepd).

    import numpy as np, kvkeep

    with kvkeep.Client("unix:./kvkeep-data/kvkeepd.sock", tenant_token) as client, \\
         client.attach("worker-0") as session:
        model = session.register_model("toy", layers=2, q_heads=8, kv_heads=2, head_dim=32,
                                       dtype="float16", tokens_per_page=16, rope_theta=5e5)
        seq = session.create_sequence(model)
        seq.allocate(512)
        seq.write(0, 0, keys, values)          # numpy [512, 32] float16, over WriteKV
        seq.commit(512)
        keys, values, positions = seq.read(0, 0)

The generated gRPC/protobuf stubs (`kvkeep.v1.*_pb2`) are produced by the CMake build into
<build>/client/python/kvkeep/v1; this package extends its search path so they are found when that
directory is on PYTHONPATH too.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # kvkeep.v1 (generated stubs) lives in the build tree

from kvkeep.errors import (  # noqa: E402
    Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition, Internal,
    InvalidArgument, KvkeepError, NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
    Unauthenticated, Unavailable, Unimplemented, Unknown)
from kvkeep.dtypes import bf16_to_float32, float32_to_bf16  # noqa: E402
from kvkeep.stats import layer_stats  # noqa: E402
from kvkeep.sketch import QuerySketch  # noqa: E402
from kvkeep.client import Client, Compressed, Model, Sequence, Session  # noqa: E402
from kvkeep.admin import Admin, read_token  # noqa: E402
from kvkeep.process import tune_worker_process  # noqa: E402

__all__ = [
    "Admin", "Client", "Compressed", "Model", "QuerySketch", "Sequence", "Session", "layer_stats",
    "read_token", "tune_worker_process",
    "bf16_to_float32", "float32_to_bf16",
    "KvkeepError", "Aborted", "AlreadyExists", "Cancelled", "DataLoss", "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "OutOfRange",
    "PermissionDenied", "ResourceExhausted", "Unauthenticated", "Unavailable", "Unimplemented",
    "Unknown",
]
