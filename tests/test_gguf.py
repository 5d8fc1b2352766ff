"""Tests for janlib.gguf: valid files against the gguf package, targeted bad files, fuzzing."""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_builders import (
    ARRAY,
    BOOL,
    FLOAT32,
    INT32,
    SAMPLE_METADATA,
    SAMPLE_TENSORS,
    STRING,
    UINT8,
    UINT32,
    UINT64,
    build_gguf,
    gguf_string,
    kv,
    tensor_info,
    u32,
    u64,
    write_sample_gguf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janlib.errors import JanlibError
from janlib.gguf import GGML_TYPE_BY_NAME, GGML_TYPES, GGUFError, GGUFFile, load_gguf

F32 = GGML_TYPE_BY_NAME["F32"].type_id
Q4_K = GGML_TYPE_BY_NAME["Q4_K"].type_id


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "test.gguf"
    path.write_bytes(data)
    return path


def load_bytes(tmp_path: Path, data: bytes) -> GGUFFile:
    return load_gguf(write(tmp_path, data))


def expect_error(tmp_path: Path, data: bytes, *fragments: str, at: int | None = None) -> str:
    """Loading `data` must raise GGUFError whose message has every fragment and ends in 'at byte N'."""
    with pytest.raises(GGUFError) as excinfo:
        load_bytes(tmp_path, data)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message
    match = re.search(r"at byte (\d+)$", message)
    assert match, message
    if at is not None:
        assert int(match.group(1)) == at, message
    return message


def assert_consistent(f: GGUFFile) -> None:
    """Invariants of any successfully loaded file: tensors lie in the file, aligned, disjoint."""
    assert f.version in (2, 3)
    assert f.alignment > 0 and f.alignment & (f.alignment - 1) == 0
    assert f.data_offset % f.alignment == 0
    end_of_previous = f.data_offset
    for t in sorted(f.tensors.values(), key=lambda t: t.offset):
        info = GGML_TYPES[t.type_id]
        assert t.qtype == info.name
        assert t.shape == t.ne[::-1] and 1 <= len(t.ne) <= 4
        assert t.n_elements == math.prod(t.ne)
        assert t.nbytes == t.n_elements // info.block_size * info.type_size
        assert t.offset >= end_of_previous and (t.offset - f.data_offset) % f.alignment == 0
        assert t.offset + t.nbytes <= f.size
        assert len(t.raw) == t.nbytes
        end_of_previous = t.offset + t.nbytes


# --- type table -------------------------------------------------------------


def test_type_table_matches_gguf_package():
    reference = {int(t): (t.name, *sizes) for t, sizes in gguf.constants.GGML_QUANT_SIZES.items()}
    ours = {type_id: (info.name, info.block_size, info.type_size) for type_id, info in GGML_TYPES.items()}
    assert ours == reference
    assert all(info.type_id == type_id for type_id, info in GGML_TYPES.items())
    assert GGML_TYPE_BY_NAME == {info.name: info for info in GGML_TYPES.values()}


# --- valid files --------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.gguf"
    write_sample_gguf(path)
    return path


def test_sample_metadata_values(sample_path):
    with load_gguf(sample_path) as f:
        expected = {"general.architecture": "llama", **{k: v for k, (v, _, _) in SAMPLE_METADATA.items()}}
        assert f.metadata == expected
        assert list(f.metadata) == list(expected)
        # == treats True as 1 and 1.0 as 1: check the Python types too.
        for key, value in expected.items():
            assert repr(f.metadata[key]) == repr(value), key
        assert type(f.metadata["test.arr_u64"][0]) is int


def test_sample_tensors(sample_path):
    with load_gguf(sample_path) as f:
        assert f.version == 3
        assert f.path == os.fspath(sample_path)
        assert f.size == sample_path.stat().st_size
        assert f.alignment == 32
        assert list(f.tensors) == list(SAMPLE_TENSORS)
        for name, (qtype, shape) in SAMPLE_TENSORS.items():
            t = f.tensors[name]
            assert (t.name, t.qtype, t.shape, t.ne) == (name, qtype, shape, shape[::-1])
            assert t.type_id == GGML_TYPE_BY_NAME[qtype].type_id
            raw = t.raw
            assert raw.dtype == np.uint8 and not raw.flags.writeable and not raw.flags.owndata
        assert_consistent(f)


@pytest.mark.parametrize("alignment", [None, 1, 8, 256])
def test_matches_reference_reader(tmp_path, alignment):
    path = tmp_path / "sample.gguf"
    write_sample_gguf(path, alignment=alignment)
    reference = gguf.GGUFReader(path)
    with load_gguf(path) as f:
        assert f.alignment == (alignment or 32)
        assert f.data_offset == reference.data_offset
        assert list(f.tensors) == [t.name for t in reference.tensors]
        for ref in reference.tensors:
            t = f.tensors[ref.name]
            assert t.type_id == int(ref.tensor_type)
            assert t.ne == tuple(int(d) for d in ref.shape)
            assert (t.offset, t.nbytes, t.n_elements) == (ref.data_offset, ref.n_bytes, ref.n_elements)
            assert t.raw.tobytes() == np.ascontiguousarray(ref.data).tobytes()
        for key, field in reference.fields.items():
            # The reference flattens nested arrays; those are checked in test_sample_metadata_values.
            if not key.startswith("GGUF.") and not key.startswith("test.nested"):
                assert f.metadata[key] == field.contents(), key
        assert_consistent(f)


def test_version_2(tmp_path, sample_path):
    data = bytearray(sample_path.read_bytes())
    data[4:8] = u32(2)
    path = write(tmp_path, bytes(data))
    reference = gguf.GGUFReader(path)
    with load_gguf(path) as f, load_gguf(sample_path) as v3:
        assert f.version == 2
        assert f.metadata == v3.metadata
        assert [(t.name, t.ne, t.offset) for t in f.tensors.values()] == [
            (t.name, t.ne, t.offset) for t in v3.tensors.values()
        ]
        assert [t.data_offset for t in reference.tensors] == [t.offset for t in f.tensors.values()]


def test_every_ggml_type(tmp_path):
    infos, offset = [], 0
    for info in GGML_TYPES.values():
        infos.append(tensor_info(info.name, [2 * info.block_size, 3], info.type_id, offset))
        offset += -(-6 * info.type_size // 32) * 32
    with load_bytes(tmp_path, build_gguf(infos=infos, data=bytes(offset))) as f:
        for info in GGML_TYPES.values():
            t = f.tensors[info.name]
            assert (t.qtype, t.shape, t.nbytes) == (info.name, (3, 2 * info.block_size), 6 * info.type_size)
        assert_consistent(f)


def test_minimal_files(tmp_path):
    for data in (build_gguf(), build_gguf(alignment=1)):  # padded and unpadded end
        with load_bytes(tmp_path, data) as f:
            assert (f.metadata, f.tensors, f.data_offset) == ({}, {}, 32)


def test_edge_case_values(tmp_path):
    nested8 = (INT32, [7])
    for _ in range(7):
        nested8 = (ARRAY, [nested8])
    kvs = [
        kv("", STRING, ""),
        kv("empty_array", ARRAY, (UINT64, [])),
        kv("empty_nested", ARRAY, (ARRAY, [(STRING, []), (FLOAT32, [])])),
        kv("depth8", ARRAY, nested8),
        kv("nan", FLOAT32, float("nan")),
    ]
    with load_bytes(tmp_path, build_gguf(kvs)) as f:
        assert f.metadata[""] == ""
        assert f.metadata["empty_array"] == []
        assert f.metadata["empty_nested"] == [[], []]
        depth8 = f.metadata["depth8"]
        for _ in range(7):
            (depth8,) = depth8
        assert depth8 == [7]
        assert math.isnan(f.metadata["nan"])


def test_large_numeric_array(tmp_path):
    scores = np.random.default_rng(1).standard_normal(300_000).astype("<f4")
    data = build_gguf([gguf_string("scores") + u32(ARRAY) + u32(FLOAT32) + u64(len(scores)) + scores.tobytes()])
    with load_bytes(tmp_path, data) as f:
        assert f.metadata["scores"] == scores.tolist()


def test_tensors_in_any_order_with_gaps(tmp_path):
    infos = [tensor_info("late", [8], F32, 128), tensor_info("early", [8], F32, 0)]
    with load_bytes(tmp_path, build_gguf(infos=infos, data=bytes(160))) as f:
        assert list(f.tensors) == ["late", "early"]
        assert f.tensors["late"].offset - f.tensors["early"].offset == 128
        assert_consistent(f)


def test_close_and_context_manager(tmp_path, sample_path):
    with load_gguf(str(sample_path)) as f:
        tensor = f.tensors["token_embd.weight"]
        view = tensor.raw
        expected = view.tobytes()
    f.close()  # idempotent
    # A view taken before close keeps its mapping alive...
    assert view.tobytes() == expected
    # ...but no new ones can be made.
    with pytest.raises(ValueError, match="closed"):
        tensor.raw


# --- malformed files ----------------------------------------------------------
# Hand-built files start with a 24-byte header (magic, version, two uint64
# counts). Expected error offsets below are counted from that layout.
K = gguf_string("k")  # a first key 'k' spans bytes 24..33, its value type 33..37, its value from 37
NAME = gguf_string("w")  # a first tensor 'w' likewise: n_dims at 33, ne from 37


def test_error_type():
    assert issubclass(GGUFError, ValueError) and issubclass(GGUFError, JanlibError)


def test_empty_file(tmp_path):
    expect_error(tmp_path, b"", "empty", at=0)


@pytest.mark.parametrize("data", [b"GGML" + bytes(28), b"\0" * 32, b"gguf" + u32(3) + bytes(16)])
def test_bad_magic(tmp_path, data):
    expect_error(tmp_path, data, "bad magic", at=0)


def test_shorter_than_magic(tmp_path):
    expect_error(tmp_path, b"GGU", "magic", "past end of file", at=0)


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_unsupported_version(tmp_path, version):
    message = expect_error(tmp_path, build_gguf(version=version), f"unsupported GGUF version {version}", at=4)
    assert "big-endian" not in message


@pytest.mark.parametrize("version", [2, 3])
def test_big_endian_file(tmp_path, version):
    data = b"GGUF" + struct.pack(">I", version) + bytes(16)
    expect_error(tmp_path, data, f"unsupported GGUF version {version << 24}", "big-endian", at=4)


def test_truncated_at_every_byte(tmp_path, sample_path):
    data = sample_path.read_bytes()
    with load_gguf(sample_path) as f:
        end_of_data = max(t.offset + t.nbytes for t in f.tensors.values())
    path = tmp_path / "truncated.gguf"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        if cut < end_of_data:
            with pytest.raises(GGUFError, match=r"(past end of file|impossible|empty).* at byte \d+$"):
                load_gguf(path)
        else:  # only trailing padding is missing
            with load_gguf(path) as f:
                assert_consistent(f)


@pytest.mark.parametrize(
    "data, fragment, at",
    [
        (build_gguf(n_tensors=2**60), "tensor count 1152921504606846976 is impossible", 8),
        (build_gguf(n_kv=2**64 - 1), "metadata key/value count 18446744073709551615 is impossible", 16),
        (build_gguf(n_kv=1), "metadata key/value count 1 is impossible", 16),
        (build_gguf([u64(2**63) + b"key"]), "length of metadata key #0 9223372036854775808 is impossible", 24),
        (build_gguf([K + u32(STRING) + u64(2**64 - 1)]), "length of value of metadata key 'k'", 37),
        (build_gguf([K + u32(ARRAY) + u32(UINT64) + u64(2**61)]), "element count of value of", 41),
        (build_gguf([K + u32(ARRAY) + u32(ARRAY) + u64(2**64 - 1)]), "element count of value of", 41),
        # Three uint32 elements present, count says four.
        (build_gguf([K + u32(ARRAY) + u32(UINT32) + u64(4) + bytes(12)], alignment=1), "element count", 41),
        (build_gguf(infos=[u64(2**62) + b"name"]), "length of name of tensor #0", 24),
    ],
)
def test_absurd_counts_and_lengths(tmp_path, data, fragment, at):
    expect_error(tmp_path, data, fragment, "remain", at=at)


@pytest.mark.parametrize("vtype", [13, 100, 2**32 - 1])
def test_unknown_value_type(tmp_path, vtype):
    expect_error(tmp_path, build_gguf([K + u32(vtype) + bytes(8)]), f"unknown metadata value type {vtype}", at=33)
    array = K + u32(ARRAY) + u32(vtype) + u64(1) + bytes(8)
    expect_error(tmp_path, build_gguf([array]), f"unknown metadata value type {vtype} for element type", at=37)


def test_array_nesting_limit(tmp_path):
    nested9 = (INT32, [1])
    for _ in range(8):
        nested9 = (ARRAY, [nested9])
    expect_error(tmp_path, build_gguf([kv("deep", ARRAY, nested9)]), "more than 8 levels deep")


@pytest.mark.parametrize(
    "kvs, infos, fragment, at",
    [
        ([kv(b"ab\xff", UINT8, 1)], [], "metadata key #0 is not valid UTF-8", 24 + 8 + 2),
        ([kv("k", STRING, b"\xc3")], [], "value of metadata key 'k' is not valid UTF-8", 37 + 8),
        ([kv("k", ARRAY, (STRING, ["ok", b"\xed\xa0\x80"]))], [], "string in value of metadata key 'k'", None),
        ([], [tensor_info(b"\x80", [32], F32, 0)], "name of tensor #0 is not valid UTF-8", 24 + 8),
    ],
)
def test_invalid_utf8(tmp_path, kvs, infos, fragment, at):
    expect_error(tmp_path, build_gguf(kvs, infos, bytes(128)), fragment, at=at)


def test_duplicate_key(tmp_path):
    first = kv("k", UINT8, 1)
    expect_error(tmp_path, build_gguf([first, kv("k", UINT8, 2)]), "duplicate metadata key 'k'", at=24 + len(first))


def test_duplicate_tensor_name(tmp_path):
    first = tensor_info("w", [8], F32, 0)
    infos = [first, tensor_info("w", [8], F32, 32)]
    expect_error(tmp_path, build_gguf(infos=infos, data=bytes(64)), "duplicate tensor name 'w'", at=24 + len(first))


@pytest.mark.parametrize(
    "info, fragment, at",
    [
        (NAME + u32(0) + u32(F32) + u64(0), "tensor 'w' has 0 dimensions (must be 1..4)", 33),
        (NAME + u32(5) + u64(1) * 5 + u32(F32) + u64(0), "tensor 'w' has 5 dimensions", 33),
        (NAME + u32(2**32 - 1) + u32(F32) + u64(0), "has 4294967295 dimensions", 33),
        (tensor_info("w", [4, 0], F32, 0), "tensor 'w' has ne[1] = 0", 37 + 8),
        (tensor_info("w", [2**32, 2**32], F32, 0), "tensor 'w' element count overflows int64 (ne[1] = 4294967296)", 45),
        (tensor_info("w", [2**63], F32, 0), "element count overflows int64", 37),
        (tensor_info("w", [8], 4, 0), "tensor 'w' has unknown ggml type id 4", 45),
        (tensor_info("w", [8], 2**32 - 1, 0), "unknown ggml type id 4294967295", 45),
        (tensor_info("w", [100, 2], Q4_K, 0), "ne[0] = 100 is not a multiple of the Q4_K block size 256", 53),
        (tensor_info("w", [8], F32, 16), "tensor 'w' data offset 16 is not a multiple of the alignment 32", 49),
        (tensor_info("w", [8], F32, 2**64 - 32), "runs past end of file", 49),
    ],
)
def test_bad_tensor_info(tmp_path, info, fragment, at):
    expect_error(tmp_path, build_gguf(infos=[info], data=bytes(64)), fragment, at=at)


def test_misaligned_with_custom_alignment(tmp_path):
    data = build_gguf([kv("general.alignment", UINT32, 64)], [tensor_info("w", [8], F32, 32)], bytes(128), alignment=64)
    expect_error(tmp_path, data, "data offset 32 is not a multiple of the alignment 64")


def test_data_past_end_of_file(tmp_path):
    info = tensor_info("blk.0.attn_q.weight", [1000], F32, 0)
    data = build_gguf(infos=[info], data=bytes(3968))  # one element short
    offset = 96  # 24 header + 60 info, padded to 32
    expect_error(
        tmp_path,
        data,
        f"tensor 'blk.0.attn_q.weight' data [offset {offset}, 4000 bytes] runs past end of file (size {offset + 3968})",
        at=24 + len(info) - 8,
    )


@pytest.mark.parametrize("second_offset", [0, 32])
def test_overlapping_tensors(tmp_path, second_offset):
    infos = [tensor_info("a", [16], F32, 0), tensor_info("b", [16], F32, second_offset)]
    expect_error(tmp_path, build_gguf(infos=infos, data=bytes(128)), "overlaps", "'a'", "'b'")


@pytest.mark.parametrize(
    "alignment_kv, fragment",
    [
        (kv("general.alignment", UINT32, 0), "general.alignment 0 is not a power of two"),
        (kv("general.alignment", UINT32, 48), "general.alignment 48 is not a power of two"),
        (kv("general.alignment", UINT32, 2**32 - 1), "is not a power of two"),
        (kv("general.alignment", UINT64, 32), "general.alignment must be a uint32, got value type 10"),
        (kv("general.alignment", INT32, 32), "must be a uint32"),
        (kv("general.alignment", STRING, "32"), "must be a uint32"),
    ],
)
def test_bad_alignment(tmp_path, alignment_kv, fragment):
    at = 24 + len(gguf_string("general.alignment")) + 4
    expect_error(tmp_path, build_gguf([alignment_kv]), fragment, at=at)


def test_bad_bool(tmp_path):
    expect_error(tmp_path, build_gguf([K + u32(BOOL) + b"\x02"]), "holds byte value 2", at=37)
    array = K + u32(ARRAY) + u32(BOOL) + u64(3) + bytes([1, 0, 7])
    expect_error(tmp_path, build_gguf([array]), "bool in value of metadata key 'k' holds byte value 7", at=37 + 12 + 2)


# --- fuzzing ------------------------------------------------------------------


@dataclass
class FuzzTarget:
    """A valid file to mutate within bytes [start, end) of its header.

    Only `prefix` (the header, or the whole of a small file) is kept in memory;
    `tail_size` zero bytes are appended sparsely so big files stay cheap to rewrite.
    """

    prefix: bytes
    start: int
    end: int
    tail_size: int
    fields: dict[int, np.ndarray]  # width -> positions of likely counts, lengths, type ids
    path: Path

    @classmethod
    def from_file(cls, source: Path, work_dir: Path, *, keep_all: bool, start: int = 8) -> FuzzTarget:
        """Mutations start past magic and version by default: targeted tests cover those."""
        with load_gguf(source) as f:
            end, size = f.data_offset, f.size
        with open(source, "rb") as fh:
            prefix = fh.read() if keep_all else fh.read(end)
        fields = {width: pos[pos >= start] for width, pos in _integer_fields(prefix[:end], size).items()}
        return cls(prefix, start, end, size - len(prefix), fields, work_dir / "fuzz.gguf")

    def check(self, data: bytes) -> None:
        with open(self.path, "wb") as fh:
            fh.write(data)
            if self.tail_size:
                fh.truncate(len(data) + self.tail_size)
        try:
            f = load_gguf(self.path)
        except GGUFError as e:
            assert re.search(r"at byte \d+$", str(e)), str(e)
            return
        with f:
            assert_consistent(f)


def _integer_fields(header: bytes, file_size: int) -> dict[int, np.ndarray]:
    """Positions whose little-endian value looks like a count, length or offset (uint64)
    or a type id / n_dims (uint32) -- found without parsing, so independent of the reader."""
    plausible = {8: lambda v: v <= file_size, 4: lambda v: (v > 0) & (v <= 64)}
    fields = {}
    for width, is_plausible in plausible.items():
        positions = []
        for phase in range(width):
            values = np.frombuffer(header, dtype=f"<u{width}", count=(len(header) - phase) // width, offset=phase)
            positions.append(phase + width * np.flatnonzero(is_plausible(values)))
        fields[width] = np.concatenate(positions)
    return fields


INTERESTING_VALUES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 32, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32]
INTERESTING_VALUES += [2**62, 2**63 - 1, 2**63, 2**64 - 1]
MUTATIONS = ("flip", "overwrite", "insert", "delete", "field", "truncate")


def mutate(draw, target: FuzzTarget, buf: bytearray, kind: str) -> None:
    start, end = target.start, min(target.end, len(buf))
    if end <= start:  # an earlier mutation cut the region away
        return
    if kind == "flip":
        buf[draw(st.integers(start, end - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        pos = draw(st.integers(start, end - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        buf[pos : pos + len(chunk)] = chunk
    elif kind == "insert":
        pos = draw(st.integers(start, end))
        buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        pos = draw(st.integers(start, end - 1))
        del buf[pos : pos + draw(st.integers(1, 16))]
    elif kind == "field":
        width = draw(st.sampled_from([4, 8]))
        positions = target.fields[width]
        pos = int(positions[draw(st.integers(0, len(positions) - 1))])
        remaining = len(buf) + target.tail_size - pos
        value = draw(
            st.sampled_from(INTERESTING_VALUES + [remaining - 1, remaining, remaining + 1])
            | st.integers(0, 2**64 - 1)
        )
        buf[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    elif kind == "truncate":
        del buf[draw(st.integers(start, len(buf))) :]


def run_mutations(target: FuzzTarget, data: st.DataObject, kinds: tuple[str, ...], max_mutations: int) -> None:
    buf = bytearray(target.prefix)
    for _ in range(data.draw(st.integers(1, max_mutations))):
        mutate(data.draw, target, buf, data.draw(st.sampled_from(kinds)))
    target.check(bytes(buf))


@pytest.fixture(scope="module")
def sample_target(tmp_path_factory, sample_path) -> FuzzTarget:
    return FuzzTarget.from_file(sample_path, tmp_path_factory.mktemp("fuzz"), keep_all=True)


@pytest.fixture(scope="module")
def tensor_info_target(tmp_path_factory, sample_path) -> FuzzTarget:
    """The sample with mutations confined to its tensor infos."""
    first_info = gguf.GGUFReader(sample_path).tensors[0].field.offset
    return FuzzTarget.from_file(sample_path, tmp_path_factory.mktemp("fuzz_ti"), keep_all=True, start=first_info)


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_bit_flips(sample_target, data):
    run_mutations(sample_target, data, ("flip",), 8)


@FUZZ
@given(data=st.data())
def test_fuzz_byte_overwrites(sample_target, data):
    run_mutations(sample_target, data, ("overwrite",), 4)


@FUZZ
@given(data=st.data())
def test_fuzz_insert_delete(sample_target, data):
    run_mutations(sample_target, data, ("insert", "delete"), 3)


@FUZZ
@given(data=st.data())
def test_fuzz_length_and_count_fields(sample_target, data):
    run_mutations(sample_target, data, ("field",), 3)


@FUZZ
@given(data=st.data())
def test_fuzz_mixed(sample_target, data):
    run_mutations(sample_target, data, MUTATIONS, 6)


@FUZZ
@given(data=st.data())
def test_fuzz_tensor_infos(tensor_info_target, data):
    run_mutations(tensor_info_target, data, MUTATIONS, 4)


@pytest.fixture(scope="module", params=["smollm2_path", "gemma3_path"])
def real_model(request) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def real_target(real_model, tmp_path_factory) -> FuzzTarget:
    return FuzzTarget.from_file(real_model, tmp_path_factory.mktemp("fuzz_real"), keep_all=False)


@pytest.mark.slow
def test_real_file_matches_reference_reader(real_model):
    reference = gguf.GGUFReader(str(real_model))
    with load_gguf(real_model) as f:
        assert f.data_offset == reference.data_offset
        assert [(t.name, t.offset, t.nbytes) for t in f.tensors.values()] == [
            (t.name, t.data_offset, t.n_bytes) for t in reference.tensors
        ]
        first = reference.tensors[0]
        assert f.tensors[first.name].raw.tobytes() == np.ascontiguousarray(first.data).tobytes()
        for key, field in reference.fields.items():
            if not key.startswith("GGUF."):
                assert f.metadata[key] == field.contents(), key
        assert_consistent(f)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_real_file(real_target, data):
    run_mutations(real_target, data, MUTATIONS, 4)
