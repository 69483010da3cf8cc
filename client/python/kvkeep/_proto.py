"""The generated stubs, with a useful message when they are not on the path."""

try:
    from kvkeep.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kvcache_pb2, kvcache_pb2_grpc
    from kvkeep.v1 import kv_batch_pb2, kv_batch_pb2_grpc
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"kvkeep: cannot import the generated stubs ({err}). Build them with the CMake target "
        "`kvkeep_python` and put <build>/client/python on PYTHONPATH next to client/python "
        "(Debian packages: python3-grpcio python3-protobuf python3-numpy).") from err

__all__ = ["admin_pb2", "admin_pb2_grpc", "common_pb2", "kvcache_pb2", "kvcache_pb2_grpc",
           "kv_batch_pb2", "kv_batch_pb2_grpc"]
