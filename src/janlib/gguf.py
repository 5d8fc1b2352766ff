"""Pure-Python GGUF reader.

The file is memory-mapped read-only and tensor data is exposed as zero-copy
numpy views.  Every malformed input raises :class:`GGUFError` naming the
problem and the byte offset where it was detected; every read checks the
remaining file size first, and every count is bounded by the bytes left in the
file before anything is allocated for it.

Format reference: ggml ``docs/gguf.md`` (versions 2 and 3, little-endian).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import numpy as np

from janlib.errors import JanlibError

__all__ = [
    "GGML_TYPES",
    "GGML_TYPE_BY_NAME",
    "GGMLTypeInfo",
    "GGUFError",
    "GGUFFile",
    "GGUFTensor",
    "load_gguf",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8
# ggml stores dimensions and element counts as int64_t.
MAX_ELEMENTS = 2**63 - 1


class GGUFError(JanlibError, ValueError):
    """A malformed or unsupported GGUF file; the message ends with the byte offset."""


class GGMLTypeInfo(NamedTuple):
    type_id: int
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


_QK_K = 256  # super-block size of the k-quants and i-quants

GGML_TYPES: dict[int, GGMLTypeInfo] = {
    info.type_id: info
    for info in (
        GGMLTypeInfo(0, "F32", 1, 4),
        GGMLTypeInfo(1, "F16", 1, 2),
        GGMLTypeInfo(2, "Q4_0", 32, 2 + 16),
        GGMLTypeInfo(3, "Q4_1", 32, 2 + 2 + 16),
        GGMLTypeInfo(6, "Q5_0", 32, 2 + 4 + 16),
        GGMLTypeInfo(7, "Q5_1", 32, 2 + 2 + 4 + 16),
        GGMLTypeInfo(8, "Q8_0", 32, 2 + 32),
        GGMLTypeInfo(9, "Q8_1", 32, 4 + 4 + 32),
        GGMLTypeInfo(10, "Q2_K", _QK_K, 2 + 2 + _QK_K // 16 + _QK_K // 4),
        GGMLTypeInfo(11, "Q3_K", _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + 12),
        GGMLTypeInfo(12, "Q4_K", _QK_K, 2 + 2 + _QK_K // 2 + 12),
        GGMLTypeInfo(13, "Q5_K", _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
        GGMLTypeInfo(14, "Q6_K", _QK_K, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
        GGMLTypeInfo(15, "Q8_K", _QK_K, 4 + _QK_K + _QK_K // 8),
        GGMLTypeInfo(16, "IQ2_XXS", _QK_K, 2 + _QK_K // 4),
        GGMLTypeInfo(17, "IQ2_XS", _QK_K, 2 + _QK_K // 4 + _QK_K // 32),
        GGMLTypeInfo(18, "IQ3_XXS", _QK_K, 2 + _QK_K // 4 + _QK_K // 8),
        GGMLTypeInfo(19, "IQ1_S", _QK_K, 2 + _QK_K // 8 + _QK_K // 16),
        GGMLTypeInfo(20, "IQ4_NL", 32, 2 + 16),
        GGMLTypeInfo(21, "IQ3_S", _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
        GGMLTypeInfo(22, "IQ2_S", _QK_K, 2 + _QK_K // 4 + _QK_K // 16),
        GGMLTypeInfo(23, "IQ4_XS", _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 64),
        GGMLTypeInfo(24, "I8", 1, 1),
        GGMLTypeInfo(25, "I16", 1, 2),
        GGMLTypeInfo(26, "I32", 1, 4),
        GGMLTypeInfo(27, "I64", 1, 8),
        GGMLTypeInfo(28, "F64", 1, 8),
        GGMLTypeInfo(29, "IQ1_M", _QK_K, _QK_K // 8 + _QK_K // 16 + _QK_K // 32),
        GGMLTypeInfo(30, "BF16", 1, 2),
        GGMLTypeInfo(34, "TQ1_0", _QK_K, 2 + 4 * 13),
        GGMLTypeInfo(35, "TQ2_0", _QK_K, 2 + 64),
        GGMLTypeInfo(39, "MXFP4", 32, 1 + 16),
        GGMLTypeInfo(40, "NVFP4", 64, 4 + 32),
        GGMLTypeInfo(41, "Q1_0", 128, 2 + 16),
    )
}
GGML_TYPE_BY_NAME: dict[str, GGMLTypeInfo] = {info.name: info for info in GGML_TYPES.values()}

# Metadata value type ids that need special handling.
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
# Fixed-size value types -> little-endian struct/numpy format code.
_SCALAR_FORMATS = {
    0: "B",  # UINT8
    1: "b",  # INT8
    2: "H",  # UINT16
    3: "h",  # INT16
    4: "I",  # UINT32
    5: "i",  # INT32
    6: "f",  # FLOAT32
    _BOOL: "B",  # one byte, 0 or 1
    10: "Q",  # UINT64
    11: "q",  # INT64
    12: "d",  # FLOAT64
}
_SCALAR_STRUCTS = {t: struct.Struct("<" + f) for t, f in _SCALAR_FORMATS.items()}
_SCALAR_DTYPES = {t: np.dtype("<" + f) for t, f in _SCALAR_FORMATS.items()}
# Smallest encoding of one value of each type (its keys are the known types),
# used to bound counts read from the file: a string is at least its uint64
# length, an array its uint32 element type plus uint64 count.
_MIN_VALUE_SIZE = {**{t: s.size for t, s in _SCALAR_STRUCTS.items()}, _STRING: 8, _ARRAY: 12}
_MIN_KV_SIZE = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne[0] is the contiguous (innermost) dimension
    type_id: int
    offset: int  # absolute byte offset in the file
    nbytes: int
    n_elements: int
    _file: GGUFFile = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy row-major shape (``ne`` reversed)."""
        return self.ne[::-1]

    @property
    def qtype(self) -> str:
        return GGML_TYPES[self.type_id].name

    @property
    def raw(self) -> np.ndarray:
        """Read-only uint8 view of the tensor's bytes in the mapped file (no copy)."""
        return np.frombuffer(self._file._buffer(), dtype=np.uint8, count=self.nbytes, offset=self.offset)


class GGUFFile:
    """A parsed GGUF file whose tensor data stays memory-mapped."""

    def __init__(self, path: str, mm: mmap.mmap, parser: _Parser) -> None:
        self.path = path
        self.size = len(mm)
        self._mmap: mmap.mmap | None = mm
        self.version = parser.version
        self.metadata = parser.metadata
        self.alignment = parser.alignment
        self.data_offset = parser.data_offset
        self.tensors: dict[str, GGUFTensor] = {
            info.name: GGUFTensor(
                info.name, info.ne, info.type_id, self.data_offset + info.rel_offset, info.nbytes, info.n_elements, self
            )
            for info in parser.tensor_infos
        }

    def _buffer(self) -> mmap.mmap:
        if self._mmap is None:
            raise ValueError(f"GGUF file {self.path!r} is closed")
        return self._mmap

    def close(self) -> None:
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # Live .raw views still export the buffer; the mapping is
                # released when the last of them is garbage-collected.
                pass

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, version={self.version}, {len(self.metadata)} metadata keys, "
            f"{len(self.tensors)} tensors, {self.size} bytes)"
        )


def load_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate the GGUF file at ``path``; raises GGUFError if malformed."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise GGUFError(f"{path!r}: file is empty, expected GGUF magic at byte 0")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        parser = _Parser(mm)
        parser.parse()
        return GGUFFile(path, mm, parser)
    except BaseException:
        mm.close()  # cannot fail: parsing copies out of the map and exports no buffer
        raise


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    name: str
    ne: tuple[int, ...]
    type_id: int
    rel_offset: int  # relative to the start of tensor data
    nbytes: int
    n_elements: int
    offset_field_at: int  # where the offset was read, for error messages


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class _Parser:
    """Sequential reader over the mapped file; every read is bounds-checked first."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.version = 0
        self.metadata: dict[str, Any] = {}
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        self.tensor_infos: list[_TensorInfo] = []

    # -- primitives ---------------------------------------------------------

    def fail(self, message: str, at: int | None = None) -> NoReturn:
        raise GGUFError(f"{message} at byte {self.pos if at is None else at}")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.remaining:
            self.fail(f"{what} ({nbytes} bytes) runs past end of file (size {self.size})")

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)

    def bounded_count(self, what: str, min_item_size: int) -> int:
        """Read a uint64 count whose items take at least min_item_size bytes each."""
        at = self.pos
        count = self.u64(what)
        if count * min_item_size > self.remaining:
            self.fail(
                f"{what} {count} is impossible: it needs at least {count * min_item_size} bytes "
                f"but only {self.remaining} remain (file size {self.size})",
                at,
            )
        return count

    def string(self, what: str) -> str:
        length = self.bounded_count(f"length of {what}", 1)
        start = self.pos
        data = self.buf[start : start + length]
        self.pos += length
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason})", start + e.start)

    # -- metadata -----------------------------------------------------------

    def value_type(self, what: str) -> int:
        at = self.pos
        vtype = self.u32(what)
        if vtype not in _MIN_VALUE_SIZE:
            self.fail(f"unknown metadata value type {vtype} for {what}", at)
        return vtype

    def value(self, vtype: int, what: str, depth: int) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what, depth + 1)
        at = self.pos
        value = self.unpack(_SCALAR_STRUCTS[vtype], what)
        if vtype == _BOOL:
            if value > 1:
                self.fail(f"{what} is bool but holds byte value {value} (must be 0 or 1)", at)
            return bool(value)
        return value

    def array(self, what: str, depth: int) -> list[Any]:
        if depth > MAX_ARRAY_DEPTH:
            self.fail(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} levels deep")
        elem_type = self.value_type(f"element type of {what}")
        count = self.bounded_count(f"element count of {what}", _MIN_VALUE_SIZE[elem_type])
        if elem_type == _STRING:
            elem_what = f"string in {what}"
            return [self.string(elem_what) for _ in range(count)]
        if elem_type == _ARRAY:
            elem_what = f"array in {what}"
            return [self.array(elem_what, depth + 1) for _ in range(count)]
        # Fixed-size elements: decode in one go (token score arrays are huge).
        # Slicing the mmap copies, so no numpy view keeps the map exported.
        dtype = _SCALAR_DTYPES[elem_type]
        nbytes = count * dtype.itemsize
        values = np.frombuffer(self.buf[self.pos : self.pos + nbytes], dtype=dtype)
        if elem_type == _BOOL and count and values.max() > 1:
            bad = int(np.argmax(values > 1))
            self.fail(f"bool in {what} holds byte value {values[bad]} (must be 0 or 1)", self.pos + bad)
        self.pos += nbytes
        return (values.astype(bool) if elem_type == _BOOL else values).tolist()

    def key_values(self, kv_count: int) -> None:
        for i in range(kv_count):
            key_at = self.pos
            key = self.string(f"metadata key #{i}")
            if key in self.metadata:
                self.fail(f"duplicate metadata key {key!r}", key_at)
            what = f"value of metadata key {key!r}"
            vtype = self.value_type(what)
            value_at = self.pos
            self.metadata[key] = self.value(vtype, what, depth=0)
            if key == "general.alignment":
                self.check_alignment(vtype, self.metadata[key], value_at)

    def check_alignment(self, vtype: int, alignment: Any, at: int) -> None:
        if vtype != _UINT32:
            self.fail(f"general.alignment must be a uint32, got value type {vtype}", at)
        if alignment <= 0 or alignment & (alignment - 1):
            self.fail(f"general.alignment {alignment} is not a power of two", at)
        self.alignment = alignment

    # -- tensor infos -------------------------------------------------------

    def tensor_info(self, index: int, seen: set[str]) -> _TensorInfo:
        name_at = self.pos
        name = self.string(f"name of tensor #{index}")
        if name in seen:
            self.fail(f"duplicate tensor name {name!r}", name_at)
        tensor = f"tensor {name!r}"
        n_dims_at = self.pos
        n_dims = self.u32(f"n_dims of {tensor}")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            self.fail(f"{tensor} has {n_dims} dimensions (must be 1..{GGML_MAX_DIMS})", n_dims_at)
        ne = []
        n_elements = 1
        for d in range(n_dims):
            dim_at = self.pos
            dim = self.u64(f"ne[{d}] of {tensor}")
            if dim == 0:
                self.fail(f"{tensor} has ne[{d}] = 0 (dimensions must be >= 1)", dim_at)
            n_elements *= dim
            if n_elements > MAX_ELEMENTS:
                self.fail(f"{tensor} element count overflows int64 (ne[{d}] = {dim})", dim_at)
            ne.append(dim)
        type_at = self.pos
        type_id = self.u32(f"type of {tensor}")
        ggml_type = GGML_TYPES.get(type_id)
        if ggml_type is None:
            self.fail(f"{tensor} has unknown ggml type id {type_id}", type_at)
        if ne[0] % ggml_type.block_size:
            self.fail(
                f"{tensor} ne[0] = {ne[0]} is not a multiple of the {ggml_type.name} block size {ggml_type.block_size}",
                type_at,
            )
        offset_at = self.pos
        offset = self.u64(f"data offset of {tensor}")
        if offset % self.alignment:
            self.fail(f"{tensor} data offset {offset} is not a multiple of the alignment {self.alignment}", offset_at)
        nbytes = n_elements // ggml_type.block_size * ggml_type.type_size
        return _TensorInfo(name, tuple(ne), type_id, offset, nbytes, n_elements, offset_at)

    def tensor_infos_and_data(self, tensor_count: int) -> None:
        seen: set[str] = set()
        for index in range(tensor_count):
            info = self.tensor_info(index, seen)
            seen.add(info.name)
            self.tensor_infos.append(info)
        # Tensor data starts at the first aligned byte after the infos.
        self.data_offset = _align_up(self.pos, self.alignment)
        for info in self.tensor_infos:
            if self.data_offset + info.rel_offset + info.nbytes > self.size:
                self.fail(f"{self.describe_data(info)} runs past end of file (size {self.size})", info.offset_field_at)
        by_offset = sorted(self.tensor_infos, key=lambda t: t.rel_offset)
        for prev, cur in zip(by_offset, by_offset[1:]):
            if cur.rel_offset < prev.rel_offset + prev.nbytes:
                self.fail(f"{self.describe_data(cur)} overlaps {self.describe_data(prev)}", cur.offset_field_at)

    def describe_data(self, info: _TensorInfo) -> str:
        return f"tensor {info.name!r} data [offset {self.data_offset + info.rel_offset}, {info.nbytes} bytes]"

    # -- file ---------------------------------------------------------------

    def header(self) -> tuple[int, int]:
        """Check magic and version; returns (tensor_count, kv_count)."""
        self.need(4, "magic")
        magic = self.buf[0:4]
        if magic != GGUF_MAGIC:
            self.fail(f"bad magic {magic!r} (expected {GGUF_MAGIC!r}); not a GGUF file", 0)
        self.pos = 4
        version = self.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (
                f" (a big-endian GGUF v{swapped} file? only little-endian files are supported)"
                if swapped in SUPPORTED_VERSIONS
                else ""
            )
            self.fail(f"unsupported GGUF version {version}{hint}", 4)
        self.version = version
        tensor_count = self.bounded_count("tensor count", _MIN_TENSOR_INFO_SIZE)
        kv_count = self.bounded_count("metadata key/value count", _MIN_KV_SIZE)
        return tensor_count, kv_count

    def parse(self) -> None:
        tensor_count, kv_count = self.header()
        self.key_values(kv_count)
        self.tensor_infos_and_data(tensor_count)
