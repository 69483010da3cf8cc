"""Element types: the model dtype names, their wire enum and their numpy storage type.

numpy has no bfloat16: bfloat16 data travels as its raw bits in uint16 arrays. Use
float32_to_bf16 / bf16_to_float32 to convert.
"""

import numpy as np

from kvkeep._proto import common_pb2

# name -> (DType enum, numpy storage dtype)
_DTYPES = {
    "float16": (common_pb2.DTYPE_FP16, np.dtype(np.float16)),
    "bfloat16": (common_pb2.DTYPE_BF16, np.dtype(np.uint16)),
    "float32": (common_pb2.DTYPE_FP32, np.dtype(np.float32)),
}
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
            "float": "float32", "single": "float32"}
_BY_ENUM = {enum: name for name, (enum, _) in _DTYPES.items()}


def dtype_name(dtype):
    """Canonical name ('float16', 'bfloat16', 'float32') of a name, alias, numpy dtype or enum."""
    if isinstance(dtype, int) and dtype in _BY_ENUM:
        return _BY_ENUM[dtype]
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype.lower(), dtype.lower())
        if name in _DTYPES:
            return name
    else:
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            np_dtype = None
        if np_dtype == np.float16:
            return "float16"
        if np_dtype == np.float32:
            return "float32"
    raise ValueError(f"unsupported dtype {dtype!r}: use 'float16', 'bfloat16' or 'float32'")


def dtype_enum(dtype):
    return _DTYPES[dtype_name(dtype)][0]


def storage_dtype(dtype):
    """The numpy dtype that holds the bytes of `dtype` (uint16 for bfloat16)."""
    return _DTYPES[dtype_name(dtype)][1]


def float32_to_bf16(x):
    """bfloat16 bits (uint16) of `x`, rounded to nearest even; NaN stays NaN."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16).astype(np.uint16) | np.uint16(0x0040))
    return rounded


def bf16_to_float32(bits):
    """float32 values of bfloat16 bits (uint16)."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def to_storage(array, dtype):
    """`array` as a C-contiguous array of the model's storage type.

    Arrays already of the storage type are taken as they are (for bfloat16: uint16 bits). Other
    floating arrays are converted (float16/float32: numpy's cast; bfloat16: round to nearest even).
    """
    name = dtype_name(dtype)
    store = _DTYPES[name][1]
    a = np.asarray(array)
    if a.dtype == store:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"expected {name} data ({store} array), got {a.dtype}")
    if name == "bfloat16":
        return float32_to_bf16(a)
    return np.ascontiguousarray(a.astype(store))
