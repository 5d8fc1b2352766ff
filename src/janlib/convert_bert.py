"""A sentence-transformers BERT model directory to a GGUF, as llama.cpp's convert_hf_to_gguf.py writes it
with `--outtype f32`: the same tensor names, shapes and order, the `bert.*` hyperparameters, the WordPiece
vocabulary in llama.cpp's phantom-space form with token types, the special token ids, and the pooling of
the sentence-transformers Pooling module.

The directory holds config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json and
modules.json with its Pooling module's config.json. Only what janlib runs exactly is accepted: a BertModel
with absolute positions and erf GELU, and a module list of Transformer, Pooling, Normalize. Normalize is
required because janlib normalizes embeddings (euclidean) by default, as llama.cpp does, and a GGUF has no
key to say otherwise. Anything else raises UnsupportedError naming it.

`gguf_chunks` yields the file's bytes in order, so a caller can hash them while writing; the output is a
pure function of the input files (no timestamps), so its sha256 can be pinned."""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from janlib.errors import UnsupportedError

__all__ = ["gguf_chunks"]

_GGUF_VERSION = 3
_ALIGNMENT = 32  # GGUF's default general.alignment
_GGML_TYPE_F32 = 0
_FILE_TYPE_ALL_F32 = 0
_QUANTIZATION_VERSION = 2  # what llama.cpp's writer records in every file

# GGUF metadata value types
_UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = 4, 5, 6, 7, 8, 9

# llama.cpp's token types
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

# sentence-transformers pooling modes (older configs: one pooling_mode_<mode> flag true; newer ones:
# "pooling_mode": "<mode>") -> llama.cpp's pooling_type
_POOLING_TYPES = {"mean_tokens": 1, "mean": 1, "cls_token": 2, "cls": 2, "lasttoken": 3}

_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")

# Hugging Face BERT names -> llama.cpp's; "{}" is the layer index.
_GLOBAL_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
# Tensors llama.cpp's converter drops: only the encoder is used for embeddings.
_DROPPED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def gguf_chunks(model_dir: str | Path, name: str) -> Iterator[bytes]:
    """The GGUF file of the model in model_dir, in pieces; `name` becomes general.name."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    _check_architecture(config)
    try:
        metadata = _metadata(model_dir, config, name)
    except KeyError as missing:
        raise UnsupportedError(f"the model's configuration lacks {missing}") from None
    with open(model_dir / "model.safetensors", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        tensors = _gguf_tensors(data, config["num_hidden_layers"])
        yield _header(metadata, tensors)
        for _, _, start, end in tensors:
            yield data[start:end]
            yield bytes(_padding(end - start))


def _metadata(model_dir: Path, config: dict[str, Any], name: str) -> list[tuple[str, int, Any]]:
    return [
        ("general.architecture", _STRING, "bert"),
        ("general.type", _STRING, "model"),
        ("general.name", _STRING, name),
        ("bert.block_count", _UINT32, config["num_hidden_layers"]),
        ("bert.context_length", _UINT32, config["max_position_embeddings"]),
        ("bert.embedding_length", _UINT32, config["hidden_size"]),
        ("bert.feed_forward_length", _UINT32, config["intermediate_size"]),
        ("bert.attention.head_count", _UINT32, config["num_attention_heads"]),
        ("bert.attention.layer_norm_epsilon", _FLOAT32, config["layer_norm_eps"]),
        ("general.file_type", _UINT32, _FILE_TYPE_ALL_F32),
        ("bert.attention.causal", _BOOL, False),
        ("bert.pooling_type", _UINT32, _pooling_type(model_dir)),
        ("general.quantization_version", _UINT32, _QUANTIZATION_VERSION),
        ("tokenizer.ggml.token_type_count", _UINT32, config.get("type_vocab_size", 1)),
        *_vocabulary(model_dir, config["vocab_size"]),
    ]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedError(f"{path.name} is missing: a sentence-transformers BERT directory needs it") from None


def _check_architecture(config: dict[str, Any]) -> None:
    if config.get("architectures") != ["BertModel"]:
        raise UnsupportedError(f"architectures {config.get('architectures')!r}: only BertModel is converted")
    if config.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedError(f"hidden_act {config['hidden_act']!r}: only gelu (erf) is converted")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedError(f"position_embedding_type {config['position_embedding_type']!r}: only absolute")


def _pooling_type(model_dir: Path) -> int:
    modules = _read_json(model_dir / "modules.json")
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    if unknown := [kind for kind in kinds if kind not in _SUPPORTED_MODULES]:
        raise UnsupportedError(f"sentence-transformers module(s) {', '.join(unknown)}: only "
                               f"{', '.join(_SUPPORTED_MODULES)} are converted")
    if "Normalize" not in kinds:
        raise UnsupportedError("the model has no Normalize module: janlib normalizes embeddings by default")
    pooling_dir = next((module["path"] for module in modules if module["type"].endswith("Pooling")), None)
    if pooling_dir is None:
        raise UnsupportedError("modules.json has no Pooling module")
    pooling = _read_json(model_dir / pooling_dir / "config.json")
    modes = [key.removeprefix("pooling_mode_") for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
    if isinstance(pooling.get("pooling_mode"), str):
        modes.append(pooling["pooling_mode"])
    if len(modes) != 1 or modes[0] not in _POOLING_TYPES:  # several modes are concatenated: no pooling_type says so
        raise UnsupportedError(f"pooling {', '.join(modes) or 'none'}: only one of mean, cls and last token is converted")
    return _POOLING_TYPES[modes[0]]


def _vocabulary(model_dir: Path, vocab_size: int) -> list[tuple[str, int, Any]]:
    tokenizer = _read_json(model_dir / "tokenizer.json")
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    model, normalizer = tokenizer["model"], tokenizer.get("normalizer") or {}
    if model.get("type") != "WordPiece" or normalizer.get("type") != "BertNormalizer":
        raise UnsupportedError(f"tokenizer {model.get('type')!r} with normalizer {normalizer.get('type')!r}: "
                               "only WordPiece with BertNormalizer is converted")
    ids = model["vocab"]
    if sorted(ids.values()) != list(range(vocab_size)):
        raise UnsupportedError(f"the WordPiece vocabulary does not hold exactly the ids 0..{vocab_size - 1}")
    added = {token["content"]: token["special"] for token in tokenizer.get("added_tokens", [])}
    token_types = {token: _NORMAL for token in ids}
    token_types.update((token, _CONTROL if special else _USER_DEFINED) for token, special in added.items())
    by_id = sorted(ids, key=ids.__getitem__)
    special = {role: _special_token(tokenizer_config, role) for role in ("cls", "sep", "unk", "pad", "mask")}
    special_id = {role: ids[token] for role, token in special.items()}
    _check_template(tokenizer.get("post_processor"), special)
    lowercase = [("tokenizer.ggml.normalizer.lowercase", _BOOL, normalizer["lowercase"])]
    strip_accents = normalizer.get("strip_accents")  # None: follows lowercase, as llama.cpp reads a missing key
    if strip_accents is not None:
        lowercase.append(("tokenizer.ggml.normalizer.strip_accents", _BOOL, strip_accents))
    return [
        ("tokenizer.ggml.model", _STRING, "bert"),
        # The name llama.cpp's converter gives this pre-tokenizer (its hash of BERT WordPiece output);
        # the WPM tokenizer does not read it.
        ("tokenizer.ggml.pre", _STRING, "jina-v2-en"),
        ("tokenizer.ggml.tokens", _ARRAY, (_STRING, [_phantom_space(t, token_types[t]) for t in by_id])),
        ("tokenizer.ggml.token_type", _ARRAY, (_INT32, [token_types[t] for t in by_id])),
        # BERT's [CLS] opens and [SEP] closes every sequence: llama.cpp calls them BOS and EOS.
        ("tokenizer.ggml.bos_token_id", _UINT32, special_id["cls"]),
        ("tokenizer.ggml.eos_token_id", _UINT32, special_id["sep"]),
        ("tokenizer.ggml.unknown_token_id", _UINT32, special_id["unk"]),
        ("tokenizer.ggml.seperator_token_id", _UINT32, special_id["sep"]),
        ("tokenizer.ggml.padding_token_id", _UINT32, special_id["pad"]),
        ("tokenizer.ggml.mask_token_id", _UINT32, special_id["mask"]),
        ("tokenizer.ggml.add_bos_token", _BOOL, True),
        ("tokenizer.ggml.add_eos_token", _BOOL, True),
        ("tokenizer.ggml.add_sep_token", _BOOL, False),
        *lowercase,
    ]


def _special_token(tokenizer_config: dict[str, Any], role: str) -> str:
    token = tokenizer_config[f"{role}_token"]  # a string, or an AddedToken as a dict
    return token["content"] if isinstance(token, dict) else token


def _check_template(post_processor: dict[str, Any] | None, special: dict[str, str]) -> None:
    """add_bos and add_eos are written as true: the tokenizer must frame a text as [CLS] text [SEP]."""
    single = (post_processor or {}).get("single", [])
    framing = [item.get("SpecialToken", {}).get("id") for item in single[:1] + single[-1:]]
    if framing != [special["cls"], special["sep"]]:
        raise UnsupportedError(f"tokenizer post-processor {post_processor!r}: only [CLS] text [SEP] is converted")


def _phantom_space(token: str, token_type: int) -> str:
    """llama.cpp's WPM form: a word-initial piece gets a leading U+2581, a "##" continuation loses it."""
    if token_type == _CONTROL:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _gguf_tensors(data: mmap.mmap, n_layer: int) -> list[tuple[str, list[int], int, int]]:
    """(gguf name, numpy-order shape, start, end in the safetensors file), in llama.cpp's order: by the
    Hugging Face name, as it reads a safetensors file."""
    (header_size,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + header_size])
    header.pop("__metadata__", None)
    names = _tensor_names(n_layer)
    tensors = []
    for hf_name in sorted(header):
        if hf_name in _DROPPED_TENSORS:
            continue
        if hf_name not in names:
            raise UnsupportedError(f"tensor {hf_name!r} is not part of a BERT encoder janlib converts")
        info = header[hf_name]
        if info["dtype"] != "F32":
            raise UnsupportedError(f"tensor {hf_name!r} is {info['dtype']}: only F32 safetensors are converted")
        start, end = (8 + header_size + offset for offset in info["data_offsets"])
        tensors.append((names.pop(hf_name), info["shape"], start, end))
    if names:
        raise UnsupportedError(f"model.safetensors lacks {', '.join(sorted(names))}")
    return tensors


def _tensor_names(n_layer: int) -> dict[str, str]:
    names = dict(_GLOBAL_TENSORS)
    for layer in range(n_layer):
        for hf_part, gguf_part in _LAYER_TENSORS.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{layer}.{hf_part}.{kind}"] = f"blk.{layer}.{gguf_part}.{kind}"
    return names


# --- GGUF writing: header, metadata, tensor infos; data aligned to _ALIGNMENT ---


def _header(metadata: list[tuple[str, int, Any]], tensors: list[tuple[str, list[int], int, int]]) -> bytes:
    parts = [b"GGUF", struct.pack("<IQQ", _GGUF_VERSION, len(tensors), len(metadata))]
    parts += [_string(key) + struct.pack("<I", value_type) + _value(value_type, value)
              for key, value_type, value in metadata]
    offset = 0
    for name, shape, start, end in tensors:
        dims = shape[::-1]  # ggml lists the fastest-varying dimension first
        parts.append(_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, _GGML_TYPE_F32, offset))
        offset += end - start + _padding(end - start)
    header = b"".join(parts)
    return header + bytes(_padding(len(header)))


def _padding(size: int) -> int:
    return -size % _ALIGNMENT


def _string(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack("<Q", len(encoded)) + encoded


_SCALAR_FORMATS = {_UINT32: "<I", _INT32: "<i", _FLOAT32: "<f", _BOOL: "<?"}


def _value(value_type: int, value: Any) -> bytes:
    if value_type == _STRING:
        return _string(value)
    if value_type == _ARRAY:
        item_type, items = value
        if item_type == _STRING:
            body = b"".join(map(_string, items))
        else:
            body = struct.pack(f"<{len(items)}{_SCALAR_FORMATS[item_type][1]}", *items)
        return struct.pack("<IQ", item_type, len(items)) + body
    return struct.pack(_SCALAR_FORMATS[value_type], value)
