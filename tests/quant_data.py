"""Random quantized tensors for the kernel tests, written as real GGUF files by the gguf package.

Blocks are random bits with their fp16 scale fields replaced by random finite halves, so every
bit pattern of the quantized values is exercised and no value is NaN or infinite. The field
offsets below are facts of the GGUF block layouts, stated here independently of csrc/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np

import janlib

QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
FLOAT_TYPES = ["F32", "F16", "BF16"]
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES

# byte offsets of the fp16 fields in each block: (scale offsets, minimum offsets)
HALF_FIELDS = {
    "Q4_0": ([0], []), "Q4_1": ([0], [2]), "Q5_0": ([0], []), "Q5_1": ([0], [2]), "Q8_0": ([0], []),
    "Q2_K": ([80], [82]), "Q3_K": ([108], []), "Q4_K": ([0], [2]), "Q5_K": ([0], [2]), "Q6_K": ([208], []),
    "IQ4_NL": ([0], []), "IQ4_XS": ([0], []),
}
# the activation format each weight type's dot product quantizes x to
ACTIVATION = {"Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1", "IQ4_NL": "Q8_0",
              **{t: "Q8_K" for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]},
              **{t: "F32" for t in FLOAT_TYPES}}


def block_size(qtype: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]


def random_halves(rng: np.random.Generator, n: int, min_exp: int = 1, max_exp: int = 30) -> np.ndarray:
    """n random finite, non-zero IEEE halves (biased exponent in [min_exp, max_exp])."""
    sign = rng.integers(0, 2, n, dtype=np.uint16) << 15
    exponent = rng.integers(min_exp, max_exp + 1, n, dtype=np.uint16) << 10
    mantissa = rng.integers(0, 1024, n, dtype=np.uint16)
    return sign | exponent | mantissa


def random_raw(rng: np.random.Generator, qtype: str, rows: int, k: int) -> np.ndarray:
    """(rows, row bytes) uint8 of random blocks with finite scales."""
    if qtype == "F32":
        return rng.standard_normal((rows, k)).astype(np.float32).view(np.uint8)
    if qtype == "F16":
        return random_halves(rng, rows * k, 1, 20).reshape(rows, k).view(np.uint8)
    if qtype == "BF16":
        sign = rng.integers(0, 2, rows * k, dtype=np.uint16) << 15
        exponent = rng.integers(110, 140, rows * k, dtype=np.uint16) << 7
        mantissa = rng.integers(0, 128, rows * k, dtype=np.uint16)
        return (sign | exponent | mantissa).reshape(rows, k).view(np.uint8)
    bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    n_blocks = rows * k // bs
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    scales, mins = HALF_FIELDS[qtype]
    for offset in scales + mins:
        # scales 2^-10 .. 2^3: products stay far from float32 overflow over long rows
        raw[:, offset:offset + 2] = random_halves(rng, n_blocks, 5, 18).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, -1)


def block_minimums(raw: np.ndarray, qtype: str) -> np.ndarray:
    """(rows, blocks) |minimum| of each legacy _1 block, read from its fp16 field."""
    _, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    (offset,) = HALF_FIELDS[qtype][1]
    blocks = raw.reshape(raw.shape[0], -1, ts)
    return np.abs(blocks[:, :, offset:offset + 2].copy().view(np.float16)[..., 0].astype(np.float64))


def write_tensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Path:
    """Write {name: (qtype, raw (rows, row bytes))} as a GGUF file."""
    writer = gguf.GGUFWriter(str(path), "test")
    for name, (qtype, raw) in tensors.items():
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextmanager
def loaded_tensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Iterator[dict]:
    """Write {name: (qtype, raw)} as a GGUF file and yield {name: (janlib's loaded tensor, raw)} while it is open."""
    with janlib.load_gguf(write_tensors(path, tensors)) as f:
        yield {name: (f.tensors[name], raw) for name, (_, raw) in tensors.items()}


def assert_matmul_within_bound(tensor, raw: np.ndarray, qtype: str, n_rows, isa: str, rng) -> None:
    """janlib.matmul of a loaded tensor against float64 x @ w.T of gguf's dequantization, within
    matmul_error_bound, for random activations of each row count in n_rows at the given ISA."""
    w = reference_dequantize(raw, qtype)
    for n in n_rows:
        x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
        with janlib.use_isa(isa):
            y = janlib.matmul(tensor, x, n_threads=2)
        bound = matmul_error_bound(w, x.astype(np.float64), qtype, raw)
        err = np.abs(y - x.astype(np.float64) @ w.T)
        assert np.all(err <= bound), f"{tensor.name} n={n}: worst err/bound {np.max(err / bound):.3f}"


def reference_dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    """The gguf package's numpy dequantization, as float64."""
    return gguf.quants.dequantize(np.asarray(raw), gguf.GGMLQuantizationType[qtype]).astype(np.float64)


def matmul_error_bound(w: np.ndarray, x: np.ndarray, qtype: str, raw: np.ndarray) -> np.ndarray:
    """(n, rows) bound on |x @ w.T - janlib.matmul| that int8 activation quantization explains.

    Q8_0/Q8_1 blocks of 32: d = amax/127 in fp16, so |x - q*d16| <= d/2 + 127*d*2^-11 < 0.5625*d.
    Q8_K blocks of 256: d in float32, so |x - q*d| <= d/2 plus the rounding of x * (1/d) (< d * 2^-12).
    Q8_1 also stores s = fp16(d * sum(q)) for the minimum term: |m| * |s - d16*sum(q)| <= |m|*32*127*d*2^-10.
    On top: float32 accumulation, (terms + 8) * 2^-23 * sum|w x| (the usual summation bound).
    Float weights see x exactly (float32 activations): only the accumulation term remains."""
    act = ACTIVATION[qtype]
    n, k = x.shape
    abs_wx = np.abs(x) @ np.abs(w).T
    if act == "F32":
        return (k + 8) * 2.0**-23 * abs_wx
    bs = 256 if act == "Q8_K" else 32
    amax = np.abs(x).reshape(n, k // bs, bs).max(axis=2)
    d = amax / 127.0
    delta = np.repeat(d * (0.5 + 2**-12 if act == "Q8_K" else 0.5625), bs, axis=1)
    bound = delta @ np.abs(w).T + (k // bs + 8) * 2.0**-23 * abs_wx
    if act == "Q8_1":
        bound += (d * 32 * 127 * 2.0**-10) @ block_minimums(raw, qtype).T
    return bound
