# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: typed memoryviews in, the GIL released, one C call per whole-tensor op."""
from libc.stdint cimport int64_t, uint8_t, uint64_t

from janlib.errors import KVCacheFull, UnsupportedError

ISA_COUNT = JL_ISA_COUNT
TYPE_COUNT = JL_TYPE_COUNT


cdef int check(jl_status status) except -1:
    if status == JL_OK:
        return 0
    message = jl_last_error().decode("utf-8", "replace")
    if status == JL_ERR_INVALID_ARG:
        raise ValueError(message)
    if status == JL_ERR_UNSUPPORTED:
        raise UnsupportedError(message)
    if status == JL_ERR_NOMEM:
        raise MemoryError(message)
    if status == JL_ERR_KV_FULL:
        raise KVCacheFull(message)
    raise RuntimeError(message)


def cpu_flags():
    return jl_cpu_flags().decode()


def isa_name(int isa):
    return jl_isa_name(isa).decode()


def isa_best():
    return jl_isa_best()


def isa_active():
    return jl_isa_active()


def isa_set(int isa):
    check(jl_isa_set(isa))


def type_info(int type_id):
    """(name, block_size, type_size) for a type this build computes with."""
    cdef const char *name
    cdef int64_t block_size, type_size
    check(jl_type_info(type_id, &name, &block_size, &type_size))
    return name.decode(), block_size, type_size


def type_activation(int type_id):
    return jl_type_activation(type_id)


def physical_cores():
    return jl_physical_cores()


def default_threads():
    return jl_default_threads()


def set_default_threads(int n_threads):
    check(jl_set_default_threads(n_threads))


def pool_stress(int64_t n_jobs, uint64_t seed):
    """Jobs (of n_jobs) in which some share of the pool ran other than exactly once."""
    cdef int64_t n_bad = 0
    cdef jl_status st
    with nogil:
        st = jl_pool_stress(n_jobs, seed, &n_bad)
    check(st)
    return n_bad


def dequantize(int type_id, const uint8_t[::1] src, float[::1] dst, int n_threads=0):
    """dst (n,) <- src: n = len(dst) values of type_id."""
    cdef jl_status status
    if dst.shape[0] == 0:
        return
    if src.shape[0] == 0:
        raise ValueError("dequantize: empty source buffer")
    with nogil:
        status = jl_dequantize(type_id, &src[0], src.shape[0], &dst[0], dst.shape[0], n_threads)
    check(status)


cdef class PackedCache:
    """Weights kept repacked for the GEMM (see jl_packed_cache); the arrays given to matmul with
    it must outlive it."""
    cdef jl_packed_cache *cache

    def __cinit__(self):
        self.cache = jl_packed_cache_create()
        if self.cache == NULL:
            raise MemoryError("PackedCache: out of memory")

    def __dealloc__(self):
        jl_packed_cache_free(self.cache)

    @property
    def nbytes(self):
        return jl_packed_cache_bytes(self.cache)


def matmul(int type_id, const uint8_t[::1] w, int64_t rows, const float[:, ::1] x,
           float[:, ::1] y, int n_threads=0, PackedCache cache=None):
    """y (n, rows) = x (n, k) @ W.T for W (rows, k) of type_id; with cache, W's packed panels are kept there."""
    cdef jl_status status
    cdef jl_packed_cache *packed = NULL if cache is None else cache.cache
    if x.shape[0] != y.shape[0] or y.shape[1] != rows:
        raise ValueError(f"matmul: output shape {(y.shape[0], y.shape[1])} != {(x.shape[0], rows)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError("matmul: empty operand")
    with nogil:
        status = jl_matmul_cached(packed, type_id, &w[0], w.shape[0], rows, x.shape[1], &x[0, 0], x.shape[0],
                                  &y[0, 0], n_threads)
    check(status)


def matmul_shared(weights, const float[:, ::1] x, ys, int n_threads=0, PackedCache cache=None):
    """ys[i] (n, rows_i) = x (n, k) @ W_i.T for weights [(type_id, w bytes, rows_i), ...] that share x."""
    cdef jl_matmul_weight ws[JL_MATMUL_SHARED_MAX]
    cdef const uint8_t[::1] w
    cdef float[:, ::1] y
    cdef jl_status status
    cdef jl_packed_cache *packed = NULL if cache is None else cache.cache
    cdef int n_weights = len(weights), i
    if n_weights != len(ys) or not 1 <= n_weights <= JL_MATMUL_SHARED_MAX:
        raise ValueError(f"matmul_shared: {n_weights} weights and {len(ys)} outputs, 1 to {JL_MATMUL_SHARED_MAX} of each")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError("matmul_shared: empty x")
    keep = []  # the buffers ws points into stay alive through the call
    for i in range(n_weights):
        type_id, w, rows = weights[i]
        y = ys[i]
        if y.shape[0] != x.shape[0] or y.shape[1] != rows or w.shape[0] == 0:
            raise ValueError(f"matmul_shared: output {i} has shape {(y.shape[0], y.shape[1])}, expected {(x.shape[0], rows)}")
        keep.append((w, y))
        ws[i].type = type_id
        ws[i].w = &w[0]
        ws[i].w_bytes = w.shape[0]
        ws[i].rows = rows
        ws[i].y = &y[0, 0]
    with nogil:
        status = jl_matmul_shared(packed, ws, n_weights, x.shape[1], &x[0, 0], x.shape[0], NULL, NULL, n_threads)
    check(status)


def quantize_rows(int act_type, const float[:, ::1] x, uint8_t[::1] dst):
    """dst <- each row of x in the activation format act_type (for tests)."""
    cdef jl_status status
    if x.shape[0] == 0 or x.shape[1] == 0 or dst.shape[0] == 0:
        raise ValueError("quantize_rows: empty operand")
    with nogil:
        status = jl_quantize_rows(act_type, &x[0, 0], x.shape[0], x.shape[1], &dst[0], dst.shape[0])
    check(status)


cdef extern from "quant/traits.h" nogil:
    jl_status jl_attend_check(int isa, int type, int nq, int dk, int dv, int64_t n_pos, const float *q,
                              const float *k, const float *v, const int64_t *first, const int64_t *last,
                              float scale, float softcap, float *out)
    jl_status jl_amx_gemm_check(int emulated, int type, const void *w, size_t w_bytes, int64_t rows, int64_t k,
                                const float *x, int64_t n, float *y)
    jl_status jl_amx_emu_dpb_check(int src1_signed, int src2_signed, const int shapes[6], uint8_t *c, const uint8_t *a,
                                   const uint8_t *b)
    jl_status jl_amx_emulate(int on)


def attend_check(int isa, int type_id, const float[:, ::1] q, const float[:, ::1] k, const float[:, ::1] v,
                 const int64_t[::1] first, const int64_t[::1] last, float scale, float softcap, float[:, ::1] out):
    """out <- the attend kernel of isa over k, v stored as a float cache of type_id (for tests)."""
    cdef jl_status status
    if (k.shape[0] == 0 or k.shape[0] != v.shape[0] or q.shape[0] == 0 or q.shape[1] != k.shape[1] or
            first.shape[0] != q.shape[0] or last.shape[0] != q.shape[0] or out.shape[0] != q.shape[0] or
            out.shape[1] != v.shape[1]):
        raise ValueError("attend_check: mismatched shapes")
    with nogil:
        status = jl_attend_check(isa, type_id, q.shape[0], q.shape[1], v.shape[1], k.shape[0], &q[0, 0], &k[0, 0],
                                 &v[0, 0], &first[0], &last[0], scale, softcap, &out[0, 0])
    check(status)


def amx_gemm_check(bint emulated, int type_id, const uint8_t[::1] w, int64_t rows, const float[:, ::1] x,
                   float[:, ::1] y):
    """y (n, rows) = x (n, k) @ W.T through the AMX GEMM alone, its tile instructions the CPU's or
    (emulated) a software model's (for tests)."""
    cdef jl_status status
    if x.shape[0] != y.shape[0] or y.shape[1] != rows or x.shape[0] == 0 or x.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError("amx_gemm_check: mismatched or empty shapes")
    with nogil:
        status = jl_amx_gemm_check(emulated, type_id, &w[0], w.shape[0], rows, x.shape[1], &x[0, 0], x.shape[0], &y[0, 0])
    check(status)


def amx_emulate(bint on):
    """On a CPU without AMX (but with AVX-512): offer the amx level, its GEMMs on the tile model (for tests)."""
    check(jl_amx_emulate(on))


def amx_emu_dpb_check(bint src1_signed, bint src2_signed, uint8_t[:, ::1] c, const uint8_t[:, ::1] a,
                      const uint8_t[:, ::1] b):
    """c += a . b by the AMX tile model's TDPB{S,U}{S,U}D, the tiles shaped as the arrays (for tests)."""
    cdef int shapes[6]
    cdef jl_status status
    if c.shape[0] == 0 or a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("amx_emu_dpb_check: empty tile")
    shapes[:] = [c.shape[0], c.shape[1], a.shape[0], a.shape[1], b.shape[0], b.shape[1]]
    with nogil:
        status = jl_amx_emu_dpb_check(src1_signed, src2_signed, shapes, &c[0, 0], &a[0, 0], &b[0, 0])
    check(status)


include "_sampling.pxi"


# ---- the forward pass ----------------------------------------------------------------------
from libc.stdint cimport int32_t
from libc.stdlib cimport calloc, free
import threading

import numpy as np

ROPE_LAYOUTS = {"adjacent": JL_ROPE_ADJACENT, "neox": JL_ROPE_NEOX}
FFN_ACTIVATIONS = {"silu": JL_FFN_SILU, "gelu_tanh": JL_FFN_GELU_TANH, "gelu_erf": JL_FFN_GELU_ERF}
NORM_TYPES = {"rms": JL_NORM_RMS, "layer": JL_NORM_LAYER}
KV_TYPES = {"f16": JL_TYPE_F16, "f32": JL_TYPE_F32, "q8_0": JL_TYPE_Q8_0, "q4_0": JL_TYPE_Q4_0}


cdef jl_tensor _tensor(object tensor, list keep) except *:
    """The C view of a GGUFTensor (or an absent one for None); keep holds the mapped bytes alive."""
    cdef jl_tensor out
    out.data = NULL
    out.nbytes = 0
    out.type = 0
    out.ne0 = 0
    out.ne1 = 0
    out.ne2 = 0
    if tensor is None:
        return out
    raw = tensor.raw
    keep.append(raw)
    cdef const uint8_t[::1] view = raw
    out.data = &view[0]
    out.nbytes = view.shape[0]
    out.type = tensor.type_id
    out.ne0 = tensor.ne[0]
    out.ne1 = tensor.ne[1] if len(tensor.ne) > 1 else 1
    out.ne2 = tensor.ne[2] if len(tensor.ne) > 2 else 1
    return out


cdef const double *_table(object table, list keep) except? NULL:
    """A float64 RoPE table's data (NULL for None); keep holds it alive until the model copied it."""
    if table is None:
        return NULL
    cdef const double[::1] view = np.ascontiguousarray(table, dtype=np.float64)
    keep.append(view)
    return &view[0]


cdef class ForwardModel:
    """A C model: the weights' descriptions, pointing into the mapped file (never copied).

    hparams and weights are janlib.models.base.HParams and ModelWeights."""
    cdef jl_model *model
    cdef list _keep        # the tensors' byte views: the mapping cannot close under the C pointers
    cdef readonly int64_t n_vocab
    cdef readonly int64_t n_embd

    def __cinit__(self, hparams, weights):
        self._keep = []
        cdef int n_layer = hparams.n_layer
        cdef jl_layer_desc *layers = <jl_layer_desc *>calloc(n_layer, sizeof(jl_layer_desc))
        if layers == NULL:
            raise MemoryError("no memory for the layer descriptions")
        cdef jl_model_desc d
        cdef jl_layer_desc *L
        try:
            d.n_layer = n_layer
            d.n_embd = hparams.n_embd
            d.n_head = hparams.n_head
            d.n_head_kv = hparams.n_head_kv
            d.head_dim_k = hparams.head_dim_k
            d.head_dim_v = hparams.head_dim_v
            d.n_ff = hparams.n_ff
            d.n_vocab = hparams.n_vocab
            d.n_rot = hparams.n_rot
            d.rope_layout = ROPE_LAYOUTS[hparams.rope_layout]
            d.rope_n_ctx_orig = hparams.rope_n_ctx_orig
            d.ffn_activation = FFN_ACTIVATIONS[hparams.ffn_activation]
            d.norm_type = NORM_TYPES[hparams.norm_type]
            d.n_expert = hparams.n_expert
            d.n_expert_used = hparams.n_expert_used
            d.n_ff_exp = hparams.n_ff_exp
            d.expert_weights_norm = hparams.expert_weights_norm
            d.expert_weights_scale = hparams.expert_weights_scale
            d.norm_eps = hparams.norm_eps
            d.embedding_scale = hparams.embedding_scale
            d.residual_scale = hparams.residual_scale
            d.attention_scale = hparams.attention_scale
            d.attn_logit_softcap = hparams.attn_logit_softcap
            d.logit_scale = hparams.logit_scale
            d.final_logit_softcap = hparams.final_logit_softcap
            d.non_causal = hparams.non_causal
            d.token_embd = _tensor(weights.token_embd, self._keep)
            d.token_types = _tensor(weights.token_types, self._keep)
            d.position_embd = _tensor(weights.position_embd, self._keep)
            d.token_embd_norm = _tensor(weights.token_embd_norm, self._keep)
            d.token_embd_norm_bias = _tensor(weights.token_embd_norm_bias, self._keep)
            d.output_norm = _tensor(weights.output_norm, self._keep)
            d.output_norm_bias = _tensor(weights.output_norm_bias, self._keep)
            d.output = _tensor(weights.output, self._keep)
            tables = []  # the model copies the RoPE tables
            for il in range(n_layer):
                w = weights.layers[il]
                L = &layers[il]
                L.attn_norm = _tensor(w.attn_norm, self._keep)
                L.attn_norm_bias = _tensor(w.attn_norm_bias, self._keep)
                L.attn_q = _tensor(w.attn_q, self._keep)
                L.attn_k = _tensor(w.attn_k, self._keep)
                L.attn_v = _tensor(w.attn_v, self._keep)
                L.attn_q_bias = _tensor(w.attn_q_bias, self._keep)
                L.attn_k_bias = _tensor(w.attn_k_bias, self._keep)
                L.attn_v_bias = _tensor(w.attn_v_bias, self._keep)
                L.attn_q_norm = _tensor(w.attn_q_norm, self._keep)
                L.attn_k_norm = _tensor(w.attn_k_norm, self._keep)
                L.attn_output = _tensor(w.attn_output, self._keep)
                L.attn_output_bias = _tensor(w.attn_output_bias, self._keep)
                L.post_attention_norm = _tensor(w.post_attention_norm, self._keep)
                L.ffn_norm = _tensor(w.ffn_norm, self._keep)
                L.ffn_norm_bias = _tensor(w.ffn_norm_bias, self._keep)
                L.ffn_gate = _tensor(w.ffn_gate, self._keep)
                L.ffn_up = _tensor(w.ffn_up, self._keep)
                L.ffn_down = _tensor(w.ffn_down, self._keep)
                L.ffn_gate_bias = _tensor(w.ffn_gate_bias, self._keep)
                L.ffn_up_bias = _tensor(w.ffn_up_bias, self._keep)
                L.ffn_down_bias = _tensor(w.ffn_down_bias, self._keep)
                L.ffn_gate_inp = _tensor(w.ffn_gate_inp, self._keep)
                L.ffn_gate_exps = _tensor(w.ffn_gate_exps, self._keep)
                L.ffn_up_exps = _tensor(w.ffn_up_exps, self._keep)
                L.ffn_down_exps = _tensor(w.ffn_down_exps, self._keep)
                L.post_ffw_norm = _tensor(w.post_ffw_norm, self._keep)
                L.attn_output_norm = _tensor(w.attn_output_norm, self._keep)
                L.attn_output_norm_bias = _tensor(w.attn_output_norm_bias, self._keep)
                L.layer_output_norm = _tensor(w.layer_output_norm, self._keep)
                L.layer_output_norm_bias = _tensor(w.layer_output_norm_bias, self._keep)
                L.rope_inv_freq = _table(hparams.rope_inv_freq[il], tables)
                L.rope_inv_freq_long = _table(hparams.rope_inv_freq_long[il], tables)
                L.rope_attn_factor = hparams.rope_attn_factor[il]
                L.sliding_window = hparams.sliding_window[il]
            d.layers = layers
            check(jl_model_create(&d, &self.model))
        finally:
            free(layers)  # the model keeps its own copy
        self.n_vocab = d.n_vocab
        self.n_embd = d.n_embd

    def __dealloc__(self):
        jl_model_free(self.model)


PAGE_SIZE = jl_context_page_size()
TOKEN_EMBD = JL_TOKEN_EMBD  # a batch row whose input is a row of embd, not a token's embedding


cdef class Context:
    """A KV cache shared by sequences 0 .. n_seq_max - 1 over one ForwardModel (see
    janlib.context.BatchContext, which checks the arguments this takes as they are)."""
    cdef jl_context *ctx
    cdef readonly ForwardModel model  # outlives the context: the C context points at it
    cdef object _lock      # calls run without the GIL; one at a time per context

    def __cinit__(self, ForwardModel model, int64_t n_ctx, int32_t n_seq_max, int64_t n_cells, str kv_type,
                  int64_t n_batch, str kv_type_v, bint swa_full=False):
        self.model = model
        self._lock = threading.Lock()
        check(jl_context_create(model.model, n_ctx, n_seq_max, n_cells, KV_TYPES[kv_type], KV_TYPES[kv_type_v],
                                n_batch, swa_full, &self.ctx))

    def __dealloc__(self):
        jl_context_free(self.ctx)

    @property
    def n_ctx(self):
        return jl_context_n_ctx(self.ctx)

    @property
    def n_seq_max(self):
        return jl_context_n_seq_max(self.ctx)

    @property
    def n_cells(self):
        return jl_context_n_cells(self.ctx)

    @property
    def n_free_cells(self):
        return jl_context_n_free_cells(self.ctx)

    @property
    def kv_bytes(self):
        return jl_context_kv_bytes(self.ctx)

    def seq_pos_min(self, int32_t seq):
        """(pos_min, cut_min) of seq: see jl_context_seq_pos_min."""
        cdef int64_t pos_min = 0, cut_min = 0
        with self._lock:
            check(jl_context_seq_pos_min(self.ctx, seq, &pos_min, &cut_min))
        return pos_min, cut_min

    def seq_len(self, int32_t seq):
        cdef int64_t n = 0
        check(jl_context_seq_len(self.ctx, seq, &n))
        return n

    def decode(self, const int32_t[::1] tokens, const int64_t[::1] positions, const int32_t[::1] seq_ids,
               const uint8_t[::1] want_logits, float[:, ::1] logits, int n_threads=0, tuple adapters=(),
               const float[:, ::1] adapter_scales=None, const float[:, ::1] embd=None,
               const int32_t[::1] non_causal_blocks=None):
        """logits (n_wanted, n_vocab) <- the rows of the batch with want_logits, in batch order; row i adds
        adapter j (a Lora of this model) scaled by adapter_scales[i, j]; the rows whose token is TOKEN_EMBD
        take the rows of embd (k, n_embd) in order as their input; non_causal_blocks (n,) labels blocks."""
        self._decode(tokens, positions, seq_ids, want_logits, logits, n_threads, adapters, adapter_scales, embd,
                     non_causal_blocks, False)

    def decode_embeddings(self, const int32_t[::1] tokens, const int64_t[::1] positions, const int32_t[::1] seq_ids,
                          const uint8_t[::1] want, float[:, ::1] embeddings, int n_threads=0, tuple adapters=(),
                          const float[:, ::1] adapter_scales=None, const float[:, ::1] embd=None,
                          const int32_t[::1] non_causal_blocks=None):
        """embeddings (n_wanted, n_embd) <- the final hidden states of the rows with want, in batch order."""
        self._decode(tokens, positions, seq_ids, want, embeddings, n_threads, adapters, adapter_scales, embd,
                     non_causal_blocks, True)

    cdef _decode(self, const int32_t[::1] tokens, const int64_t[::1] positions, const int32_t[::1] seq_ids,
                 const uint8_t[::1] want, float[:, ::1] out, int n_threads, tuple adapters,
                 const float[:, ::1] adapter_scales, const float[:, ::1] embd, const int32_t[::1] non_causal_blocks,
                 bint embeddings):
        cdef jl_batch batch
        cdef jl_status status = JL_OK
        cdef float *dst = &out[0, 0] if out.shape[0] > 0 else NULL
        cdef Py_ssize_t n = tokens.shape[0]
        cdef Py_ssize_t n_lora = len(adapters)
        cdef const jl_lora **loras = NULL
        cdef int64_t width = self.model.n_embd if embeddings else self.model.n_vocab
        if n == 0 or positions.shape[0] != n or seq_ids.shape[0] != n or want.shape[0] != n:
            raise ValueError(f"decode: tokens, positions, seq_ids and want_logits must have one equal, positive length")
        if out.shape[1] != width:
            what = "n_embd" if embeddings else "n_vocab"
            raise ValueError(f"decode: the output has {out.shape[1]} columns, not {what} = {width}")
        if n_lora and (adapter_scales is None or adapter_scales.shape[0] != n or adapter_scales.shape[1] != n_lora):
            raise ValueError(f"decode: {n_lora} adapters need scales of shape ({n}, {n_lora})")
        if embd is not None and embd.shape[0] > 0 and embd.shape[1] != self.model.n_embd:
            raise ValueError(f"decode: embd has {embd.shape[1]} columns, not n_embd = {self.model.n_embd}")
        if non_causal_blocks is not None and non_causal_blocks.shape[0] != n:
            raise ValueError(f"decode: non_causal_blocks has {non_causal_blocks.shape[0]} entries, tokens has {n}")
        batch.n_tokens = n
        batch.tokens = &tokens[0]
        batch.positions = &positions[0]
        batch.seq_ids = &seq_ids[0]
        batch.want_logits = &want[0]
        batch.n_lora = <int32_t>n_lora
        batch.lora = NULL
        batch.lora_scales = NULL
        batch.n_embd_rows = embd.shape[0] if embd is not None else 0
        batch.embd = &embd[0, 0] if batch.n_embd_rows > 0 else NULL
        batch.non_causal_blocks = &non_causal_blocks[0] if non_causal_blocks is not None else NULL
        if n_lora:
            loras = <const jl_lora **>calloc(n_lora, sizeof(jl_lora *))
            if loras == NULL:
                raise MemoryError("no memory for the adapter list")
            for j in range(n_lora):
                loras[j] = (<Lora?>adapters[j]).lora
            batch.lora = loras
            batch.lora_scales = &adapter_scales[0, 0]
        try:
            with self._lock:
                with nogil:
                    if embeddings:
                        status = jl_context_decode_embeddings(self.ctx, &batch, dst, n_threads)
                    else:
                        status = jl_context_decode(self.ctx, &batch, dst, n_threads)
        finally:
            free(loras)
        check(status)

    def seq_rm(self, int32_t seq, int64_t p0, int64_t p1):
        with self._lock:
            check(jl_context_seq_rm(self.ctx, seq, p0, p1))

    def seq_cp(self, int32_t src, int32_t dst, int64_t p0, int64_t p1):
        with self._lock:
            check(jl_context_seq_cp(self.ctx, src, dst, p0, p1))

    def seq_shift(self, int32_t seq, int64_t n_keep, int64_t n_discard):
        cdef jl_status status
        with self._lock:
            with nogil:
                status = jl_context_seq_shift(self.ctx, seq, n_keep, n_discard)
            check(status)

    def seq_can_shift(self, int32_t seq, int64_t n_keep, int64_t n_discard):
        cdef int ok = 0
        with self._lock:
            check(jl_context_seq_can_shift(self.ctx, seq, n_keep, n_discard, &ok))
        return bool(ok)


LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
assert len(LORA_TARGETS) == JL_LORA_N_TARGETS


cdef class Lora:
    """A LoRA adapter of a ForwardModel: pairs maps (layer, target name) to float32 arrays A (rank, k)
    and B (rows, rank), which it keeps (B transposed); alpha 0 means no alpha / rank factor."""
    cdef jl_lora *lora
    cdef readonly ForwardModel model  # outlives the adapter
    cdef list _keep

    def __cinit__(self, ForwardModel model, dict pairs, float alpha, int n_layer):
        self.model = model
        self._keep = []
        cdef jl_lora_pair *table = <jl_lora_pair *>calloc(n_layer * JL_LORA_N_TARGETS, sizeof(jl_lora_pair))
        if table == NULL:
            raise MemoryError("no memory for the adapter's table")
        try:
            for (layer, target), (a, b) in pairs.items():
                if not 0 <= layer < n_layer:
                    raise ValueError(f"lora: layer {layer} is outside the model's {n_layer} layers")
                at = layer * JL_LORA_N_TARGETS + LORA_TARGETS.index(target)
                table[at].a = _f32_matrix(a, self._keep)
                table[at].b_t = _f32_matrix(np.ascontiguousarray(np.asarray(b).T), self._keep)
            check(jl_lora_create(model.model, table, alpha, &self.lora))
        finally:
            free(table)

    def __dealloc__(self):
        jl_lora_free(self.lora)


cdef jl_tensor _f32_matrix(object array, list keep) except *:
    cdef const float[:, ::1] view = array
    keep.append(view)
    cdef jl_tensor out
    out.data = &view[0, 0]
    out.nbytes = view.shape[0] * view.shape[1] * sizeof(float)
    out.type = JL_TYPE_F32
    out.ne0 = view.shape[1]
    out.ne1 = view.shape[0]
    out.ne2 = 1
    return out


# ---- the vision encoder (csrc/vision.c) ----------------------------------------------------
cdef extern from "vision.h" nogil:
    int JL_VIT_GELU_QUICK
    ctypedef struct jl_vit_layer_desc:
        pass
    ctypedef struct jl_vit_desc:
        int32_t n_layer, n_embd, n_head, n_ff, patch_dim, n_patches, ffn_activation
        float norm_eps
        jl_tensor patch_embd, patch_bias, class_embd, position_embd, pre_ln, pre_ln_bias, post_ln, post_ln_bias
        const jl_vit_layer_desc *layers
    ctypedef struct jl_vit:
        pass
    jl_status jl_vit_create(const jl_vit_desc *desc, jl_vit **vit)
    void jl_vit_free(jl_vit *vit)
    jl_status jl_vit_encode(const jl_vit *vit, const float *patches, int64_t n_images, float *out, int n_threads)

# jl_vit_layer_desc's tensors, in its order (it holds nothing else)
VIT_LAYER_FIELDS = ("ln1", "ln1_bias", "attn_q", "attn_q_bias", "attn_k", "attn_k_bias", "attn_v", "attn_v_bias",
                    "attn_out", "attn_out_bias", "ln2", "ln2_bias", "ffn_up", "ffn_up_bias", "ffn_down", "ffn_down_bias")
VIT_ACTIVATIONS = {"gelu_tanh": JL_FFN_GELU_TANH, "gelu_erf": JL_FFN_GELU_ERF, "silu": JL_FFN_SILU,
                   "gelu_quick": JL_VIT_GELU_QUICK}


cdef class VisionTower:
    """A C vision encoder. sizes: n_layer, n_embd, n_head, n_ff, patch_dim, n_patches, activation (a
    VIT_ACTIVATIONS name), norm_eps; tensors: the jl_vit_desc tensor names -> GGUFTensor-like (raw, type_id,
    ne) or None; layers: one such dict per block, keyed by VIT_LAYER_FIELDS."""
    cdef jl_vit *vit
    cdef list _keep        # the tensors' byte views: the mapping cannot close under the C pointers
    cdef readonly int64_t n_patches, n_pos, n_embd, patch_dim

    def __cinit__(self, dict sizes, dict tensors, list layers):
        self._keep = []
        cdef jl_vit_desc d
        cdef jl_tensor *fields = <jl_tensor *>calloc(len(layers) * len(VIT_LAYER_FIELDS), sizeof(jl_tensor))
        if fields == NULL:
            raise MemoryError("no memory for the vision tower's layers")
        try:
            for il, layer in enumerate(layers):
                for i, name in enumerate(VIT_LAYER_FIELDS):
                    fields[il * len(VIT_LAYER_FIELDS) + i] = _tensor(layer.get(name), self._keep)
            d.n_layer, d.n_embd, d.n_head, d.n_ff = len(layers), sizes["n_embd"], sizes["n_head"], sizes["n_ff"]
            d.patch_dim, d.n_patches = sizes["patch_dim"], sizes["n_patches"]
            d.ffn_activation, d.norm_eps = VIT_ACTIVATIONS[sizes["activation"]], sizes["norm_eps"]
            d.patch_embd, d.patch_bias = _tensor(tensors["patch_embd"], self._keep), _tensor(tensors.get("patch_bias"), self._keep)
            d.class_embd = _tensor(tensors.get("class_embd"), self._keep)
            d.position_embd = _tensor(tensors["position_embd"], self._keep)
            d.pre_ln, d.pre_ln_bias = _tensor(tensors.get("pre_ln"), self._keep), _tensor(tensors.get("pre_ln_bias"), self._keep)
            d.post_ln, d.post_ln_bias = _tensor(tensors.get("post_ln"), self._keep), _tensor(tensors.get("post_ln_bias"), self._keep)
            d.layers = <const jl_vit_layer_desc *>fields
            check(jl_vit_create(&d, &self.vit))
        finally:
            free(fields)
        self.n_patches, self.n_pos = d.n_patches, d.n_patches + (1 if tensors.get("class_embd") is not None else 0)
        self.n_embd, self.patch_dim = d.n_embd, d.patch_dim

    def __dealloc__(self):
        jl_vit_free(self.vit)

    def encode(self, const float[:, :, ::1] patches, int n_threads=0):
        """(n_images, n_pos, n_embd) float32 <- the tower over patches (n_images, n_patches, patch_dim)."""
        if patches.shape[0] == 0 or patches.shape[1] != self.n_patches or patches.shape[2] != self.patch_dim:
            raise ValueError(f"vision: patches of shape {tuple(patches.shape)[:3]}, the tower takes "
                             f"(n_images > 0, {self.n_patches}, {self.patch_dim})")
        out = np.empty((patches.shape[0], self.n_pos, self.n_embd), dtype=np.float32)
        cdef float[:, :, ::1] out_view = out
        cdef jl_status status
        with nogil:
            status = jl_vit_encode(self.vit, &patches[0, 0, 0], patches.shape[0], &out_view[0, 0, 0], n_threads)
        check(status)
        return out
