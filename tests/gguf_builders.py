"""Build GGUF files for the reader tests.

`build_gguf` assembles files byte by byte so that any field can be made
malformed; `write_sample_gguf` uses the gguf package's GGUFWriter (an
independent implementation) to produce a valid file exercising every
metadata type and several tensor types.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# Metadata value type ids.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_FORMATS = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<B",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def gguf_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return u64(len(data)) + data


def value_bytes(vtype: int, value: Any) -> bytes:
    """Encode a value without its type tag; an ARRAY value is (element type, items)."""
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        elem_type, items = value
        return u32(elem_type) + u64(len(items)) + b"".join(value_bytes(elem_type, item) for item in items)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def kv(key: str | bytes, vtype: int, value: Any) -> bytes:
    return gguf_string(key) + u32(vtype) + value_bytes(vtype, value)


def tensor_info(name: str | bytes, ne: list[int], type_id: int, offset: int) -> bytes:
    return gguf_string(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(type_id) + u64(offset)


def build_gguf(
    kvs: list[bytes] = (),
    infos: list[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    alignment: int = 32,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    """Header + kvs + tensor infos + zero padding to `alignment` + data.

    n_tensors / n_kv override the counts written in the header.
    """
    header = (
        b"GGUF"
        + u32(version)
        + u64(len(infos) if n_tensors is None else n_tensors)
        + u64(len(kvs) if n_kv is None else n_kv)
    )
    head = header + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % alignment) + data


# Metadata written by write_sample_gguf: key -> (value, GGUF type, array element type).
# Floats are exactly representable in float32 so round trips compare equal.
SAMPLE_METADATA: dict[str, tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = {
    "test.u8": (255, gguf.GGUFValueType.UINT8, None),
    "test.i8": (-128, gguf.GGUFValueType.INT8, None),
    "test.u16": (65535, gguf.GGUFValueType.UINT16, None),
    "test.i16": (-32768, gguf.GGUFValueType.INT16, None),
    "test.u32": (2**32 - 1, gguf.GGUFValueType.UINT32, None),
    "test.i32": (-(2**31), gguf.GGUFValueType.INT32, None),
    "test.f32": (1.5, gguf.GGUFValueType.FLOAT32, None),
    "test.bool_true": (True, gguf.GGUFValueType.BOOL, None),
    "test.bool_false": (False, gguf.GGUFValueType.BOOL, None),
    "test.string": ("héllo ✓ wörld", gguf.GGUFValueType.STRING, None),
    "test.u64": (2**64 - 1, gguf.GGUFValueType.UINT64, None),
    "test.i64": (-(2**63), gguf.GGUFValueType.INT64, None),
    "test.f64": (-0.1, gguf.GGUFValueType.FLOAT64, None),
    "test.arr_u8": ([0, 1, 255], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8),
    "test.arr_i16": ([-5, 7], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT16),
    "test.arr_u64": ([2**64 - 1, 0], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT64),
    "test.arr_f64": ([0.5, -1e300], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT64),
    "test.arr_bool": ([True, False, True], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL),
    "tokenizer.ggml.tokens": (["<s>", "", "▁the", "é", "\n"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING),
    "tokenizer.ggml.scores": ([i * 0.25 - 8 for i in range(100)], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32),
    "tokenizer.ggml.token_type": ([1, 2, 3, 1, 6], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32),
    "test.nested_i32": ([[1, 2], [3], [4, 5, 6]], gguf.GGUFValueType.ARRAY, None),
    "test.nested_str": ([["a", "bc"], ["d"]], gguf.GGUFValueType.ARRAY, None),
    "test.nested3": ([[[1], [2, 3]], [[4]]], gguf.GGUFValueType.ARRAY, None),
}

# Tensors written by write_sample_gguf: name -> (ggml type, numpy row-major shape).
SAMPLE_TENSORS: dict[str, tuple[str, tuple[int, ...]]] = {
    "token_embd.weight": ("F32", (3, 4)),
    "blk.0.attn_norm.weight": ("F16", (8,)),
    "blk.0.ffn_gate.weight": ("I8", (2, 5)),
    "blk.0.cube": ("I32", (2, 3, 4)),
    "blk.0.four_d": ("F32", (1, 2, 3, 4)),
    "blk.0.attn_q.weight": ("Q8_0", (2, 64)),
    "blk.0.attn_k.weight": ("Q4_K", (3, 256)),
    "blk.0.ffn_down.weight": ("Q6_K", (1, 512)),
    "output.weight": ("IQ4_NL", (2, 32)),
    "output_norm.weight": ("BF16", (6,)),
}

# Types GGUFWriter infers from a numpy array; the others are written as raw bytes.
_NUMPY_TYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32}


def write_sample_gguf(path: Path, *, alignment: int | None = None) -> None:
    """Write a valid v3 file with SAMPLE_METADATA and SAMPLE_TENSORS (random tensor bytes)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type) in SAMPLE_METADATA.items():
        writer.add_key_value(key, value, vtype, sub_type)
    for name, (qtype, shape) in SAMPLE_TENSORS.items():
        ggml_type = gguf.GGMLQuantizationType[qtype]
        block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        if qtype in _NUMPY_TYPES:
            writer.add_tensor(name, rng.standard_normal(shape).astype(_NUMPY_TYPES[qtype]))
        else:
            byte_shape = (*shape[:-1], shape[-1] // block_size * type_size)
            writer.add_tensor(name, rng.integers(0, 256, byte_shape, dtype=np.uint8), raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
