"""An independent float64 numpy forward pass for llama, qwen2 and gemma3 GGUF files.

Written from the architectures' math, not from janlib: the file is read with the gguf package's
GGUFReader, weights are dequantized with gguf.quants.dequantize, hyperparameters are derived here
from the metadata (with llama.cpp's defaults), and the whole sequence is attended at once under
an explicit causal / sliding-window mask, without a KV cache.

Two switches make it compute what janlib computes, so that only float32 rounding separates them:
`quantize_activations` rounds each matmul input to the int8 blocks janlib's dot products use for
that weight type (Q8_0 / Q8_1 blocks of 32 with an fp16 scale, Q8_K blocks of 256 with a float32
scale; float weights see exact inputs), and `kv_float16` rounds K (after RoPE) and V to fp16 as
the cache stores them."""

from __future__ import annotations

import math

import gguf
import numpy as np

from quant_data import ACTIVATION

ARCHS = ("llama", "qwen2", "gemma3")
OUTPUT_ROWS_PER_CHUNK = 16384  # rows of the output matrix dequantized at a time (Gemma's is 262144 x 640)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, neox: bool) -> np.ndarray:
    """x (n, heads, d) rotated by angle pos * inv_freq[i] on pair i: (2i, 2i+1), or (i, i+d/2) for neox."""
    angle = pos[:, None, None] * inv_freq[None, None, :]  # (n, 1, d/2)
    cos, sin = np.cos(angle), np.sin(angle)
    half = x.shape[-1] // 2
    a, b = (x[..., :half], x[..., half:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if neox:
        out[..., :half], out[..., half:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def quantize_activation(x: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """x (n, k) rounded to the int8 blocks janlib feeds to the weight's dot product: the values it
    stands for, and (Q8_1 only) each block's stored s = fp16(d * sum(q)) minus the sum of those
    values, the error of the term that multiplies a Q4_1/Q5_1 block's minimum."""
    if activation == "F32":
        return x, np.zeros((x.shape[0], 0))
    bs = 256 if activation == "Q8_K" else 32
    n, k = x.shape
    blocks = x.reshape(n, k // bs, bs)
    d = np.abs(blocks).max(axis=2, keepdims=True) / 127.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.round(blocks / d), 0.0)
    stored_d = d if activation == "Q8_K" else d.astype(np.float16).astype(np.float64)
    values = q * stored_d
    s_error = (d[..., 0] * q.sum(axis=2)).astype(np.float16) - values.sum(axis=2)
    return values.reshape(n, k), s_error


def block_minimums(raw: np.ndarray, qtype: str) -> np.ndarray:
    """(rows, blocks) minimum m of each Q4_1/Q5_1 block (the fp16 after the scale)."""
    _, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, ts)
    return blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)


class Reference:
    def __init__(self, path, quantize_activations: bool = False, kv_float16: bool = False) -> None:
        self.reader = gguf.GGUFReader(str(path))
        self.fields = {f.name: f.contents() for f in self.reader.fields.values()}
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.quantize_activations = quantize_activations
        self.kv_float16 = kv_float16
        self.arch = self.fields["general.architecture"]
        if self.arch not in ARCHS:
            raise ValueError(f"the reference knows {ARCHS}, not {self.arch!r}")
        self._read_hparams()

    # -- the file --------------------------------------------------------------------------

    def meta(self, key: str, default=None):
        return self.fields.get(f"{self.arch}.{key}", default)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def weight(self, name: str, rows=None) -> np.ndarray:
        """float64 values of a tensor (numpy shape), or of the given rows of a matrix."""
        t = self.tensors[name]
        data = t.data if rows is None else t.data[rows]
        return gguf.quants.dequantize(np.asarray(data), t.tensor_type).astype(np.float64)

    def qtype(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def _read_hparams(self) -> None:
        gemma = self.arch == "gemma3"
        self.n_layer = int(self.meta("block_count"))
        self.n_embd = int(self.meta("embedding_length"))
        self.n_head = int(self.meta("attention.head_count"))
        self.n_head_kv = int(self.meta("attention.head_count_kv", self.n_head))
        self.head_dim_k = int(self.meta("attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(self.meta("attention.value_length", self.n_embd // self.n_head))
        self.eps = float(self.meta("attention.layer_norm_rms_epsilon"))
        self.neox = self.arch in ("qwen2", "gemma3")
        base = float(self.meta("rope.freq_base", 10000.0))
        factor = float(self.meta("rope.scaling.factor", 0.0) or 0.0)
        scale = 1.0 / factor if factor and self.meta("rope.scaling.type", "linear") == "linear" else 1.0
        window = int(self.meta("attention.sliding_window", 0) or 0) if gemma else 0
        # gemma3: five sliding layers, then a global one; sliding layers rotate with base 10000, unscaled
        self.sliding = [window > 0 and il % 6 < 5 for il in range(self.n_layer)]
        self.window = window
        swa_base = float(self.meta("rope.freq_base_swa", 10000.0))
        factors = self.weight("rope_freqs.weight") if self.has("rope_freqs.weight") else 1.0
        i = np.arange(self.head_dim_k // 2)
        self.inv_freq = [
            (1.0 * swa_base ** (-2.0 * i / self.head_dim_k) if s else scale * base ** (-2.0 * i / self.head_dim_k))
            / factors
            for s in self.sliding
        ]
        self.attention_scale = 1.0 / math.sqrt(self.head_dim_k)
        self.embedding_scale = math.sqrt(self.n_embd) if gemma else 1.0
        self.activation = gelu_tanh if gemma else silu
        self.output_name = "output.weight" if self.has("output.weight") else "token_embd.weight"
        self.n_vocab = self.tensors["token_embd.weight"].shape[1]

    # -- the forward pass --------------------------------------------------------------------

    def matmul(self, x: np.ndarray, name: str, rows=None) -> np.ndarray:
        """x (n, k) @ W.T, x rounded as janlib rounds it for W's type."""
        qtype = self.qtype(name)
        s_error = None
        if self.quantize_activations:
            x, s_error = quantize_activation(x, ACTIVATION[qtype])
        y = x @ self.weight(name, rows).T
        if s_error is not None and ACTIVATION[qtype] == "Q8_1":
            data = self.tensors[name].data
            y += s_error @ block_minimums(data if rows is None else data[rows], qtype).T
        bias = name.replace(".weight", ".bias")
        return y + self.weight(bias) if rows is None and self.has(bias) else y

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return rmsnorm(x, self.weight(name), self.eps)

    def attention(self, il: int, h: np.ndarray, pos: np.ndarray, key_pos: np.ndarray | None = None,
                  visible: np.ndarray | None = None) -> np.ndarray:
        """Causal self-attention of the rows h at positions pos. For a shifted cache, key_pos
        (n, n) gives the position row j's key is rotated to as row i sees it, and visible (n, n)
        which rows row i attends to."""
        n, H, Hkv, Dk, Dv = h.shape[0], self.n_head, self.n_head_kv, self.head_dim_k, self.head_dim_v
        blk = f"blk.{il}"
        q = self.matmul(h, f"{blk}.attn_q.weight").reshape(n, H, Dk)
        k = self.matmul(h, f"{blk}.attn_k.weight").reshape(n, Hkv, Dk)
        v = self.matmul(h, f"{blk}.attn_v.weight").reshape(n, Hkv, Dv)
        if self.has(f"{blk}.attn_q_norm.weight"):
            q = self.norm(q, f"{blk}.attn_q_norm.weight")
            k = self.norm(k, f"{blk}.attn_k_norm.weight")
        q = rope(q, pos, self.inv_freq[il], self.neox)
        group = H // Hkv
        v = np.repeat(v, group, axis=1)  # query head j reads KV head j // group
        if key_pos is None:
            k = rope(k, pos, self.inv_freq[il], self.neox)
            if self.kv_float16:
                k, v = (a.astype(np.float16).astype(np.float64) for a in (k, v))
            scores = np.einsum("ihd,jhd->hij", q, np.repeat(k, group, axis=1))
        else:  # each query row sees every key rotated to its own key_pos
            scores = np.stack([np.einsum("hd,jhd->hj", q[i], np.repeat(rope(k, key_pos[i], self.inv_freq[il], self.neox),
                                                                       group, axis=1)) for i in range(n)], axis=1)
        scores = scores * self.attention_scale
        if visible is None:
            visible = pos[None, :] <= pos[:, None]
            if self.sliding[il]:
                visible &= pos[None, :] > pos[:, None] - self.window
        elif self.sliding[il]:  # the window counts the positions the keys sit at
            visible = visible & (key_pos > pos[:, None] - self.window)
        scores = np.where(visible[None], scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out = np.einsum("hij,jhd->ihd", p, v).reshape(n, H * Dv)
        return self.matmul(out, f"{blk}.attn_output.weight")

    def logits(self, tokens, key_pos=None, visible=None, pos=None) -> np.ndarray:
        """float64 logits (n, n_vocab) for every position of the sequence tokens (positions 0..n-1,
        unless pos, key_pos and visible describe a shifted cache as in attention())."""
        tokens = np.asarray(tokens, dtype=np.int64)
        pos = np.arange(tokens.size, dtype=np.float64) if pos is None else pos
        x = self.weight("token_embd.weight", tokens) * self.embedding_scale
        for il in range(self.n_layer):
            blk = f"blk.{il}"
            a = self.attention(il, self.norm(x, f"{blk}.attn_norm.weight"), pos, key_pos, visible)
            if self.has(f"{blk}.post_attention_norm.weight"):
                a = self.norm(a, f"{blk}.post_attention_norm.weight")
            x = x + a
            h = self.norm(x, f"{blk}.ffn_norm.weight")
            f = self.activation(self.matmul(h, f"{blk}.ffn_gate.weight")) * self.matmul(h, f"{blk}.ffn_up.weight")
            f = self.matmul(f, f"{blk}.ffn_down.weight")
            if self.has(f"{blk}.post_ffw_norm.weight"):
                f = self.norm(f, f"{blk}.post_ffw_norm.weight")
            x = x + f
        x = self.norm(x, "output_norm.weight")
        return np.concatenate([
            self.matmul(x, self.output_name, slice(r0, r0 + OUTPUT_ROWS_PER_CHUNK))
            for r0 in range(0, self.n_vocab, OUTPUT_ROWS_PER_CHUNK)
        ], axis=1)

    def logits_after_shift(self, prompt: list[int], token: int, n_keep: int, n_discard: int) -> np.ndarray:
        """(1, n_vocab): token's logits after a context shift dropped prompt positions [n_keep, n_keep +
        n_discard) and moved the rest down; the prompt's own rows are the original pass."""
        n = len(prompt)
        moved = np.array([j if j < n_keep else j - n_discard for j in range(n)] + [n - n_discard], dtype=np.float64)
        pos = np.append(np.arange(n, dtype=np.float64), n - n_discard)
        key_pos = np.tile(pos, (n + 1, 1))
        key_pos[n] = moved
        visible = np.tril(np.ones((n + 1, n + 1), dtype=bool))
        visible[n, n_keep:n_keep + n_discard] = False
        visible[:n, n] = False
        return self.logits(list(prompt) + [token], key_pos=key_pos, visible=visible, pos=pos)[-1:]
