"""llama.cpp's multimodal projector files (mmproj GGUF, `clip.*` metadata): the vision tower (run in C by
_core.VisionTower) and the projector that turns its output into the text model's embeddings, per type."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Protocol

import numpy as np
from PIL import Image

from janlib import _core, kernels
from janlib.errors import UnsupportedError
from janlib.gguf import GGUFError, GGUFTensor, load_gguf
from janlib.vision.image import decode_image, idefics3_tiles, normalize, pad_to_square, unfold_patches

# the text pieces and image blocks of one image's prompt: a str is text (tokenized with special tokens
# parsed), an int the index of a tile whose embeddings go there
Layout = list["str | int"]

TOWER_TENSORS = {"patch_embd": "v.patch_embd.weight", "patch_bias": "v.patch_embd.bias",
                 "class_embd": "v.class_embd", "position_embd": "v.position_embd.weight",
                 "pre_ln": "v.pre_ln.weight", "pre_ln_bias": "v.pre_ln.bias",
                 "post_ln": "v.post_ln.weight", "post_ln_bias": "v.post_ln.bias"}
TOWER_ROWS = 4096  # patch rows per tower call (4 SmolVLM tiles, 1 gemma3 image): ~150 MB of scratch at width 768
# _core.VIT_LAYER_FIELDS name -> the GGUF tensor name within v.blk.N.
LAYER_TENSORS = {field: field.replace("_bias", ".bias") if field.endswith("_bias") else field + ".weight"
                 for field in _core.VIT_LAYER_FIELDS}


class ProjectorHead(Protocol):
    """One projector type: how an image is tiled and laid out in the prompt, and how the tower's output
    becomes text embeddings."""
    n_embd_text: int
    non_causal: bool

    def tiles(self, image: Image.Image) -> tuple[list[Image.Image], Layout]: ...
    def project(self, hidden: np.ndarray) -> np.ndarray: ...  # (n_tiles, n_pos, n_embd) -> (n_tiles, n, n_embd_text)


class Projector:
    """A loaded mmproj file. embed_image(bytes) gives llama.cpp's prompt layout for one image: text pieces
    and float32 (n_tokens, n_embd_text) embedding blocks, in prompt order."""

    def __init__(self, path: str | os.PathLike[str], n_threads: int | None = None) -> None:
        self.path = os.fspath(path)
        self._file = load_gguf(self.path)
        try:
            self._load(n_threads)
        except BaseException:
            self._file.close()
            raise

    def _load(self, n_threads: int | None) -> None:
        meta = self._file.metadata
        if meta.get("general.architecture") != "clip":
            raise GGUFError(f"{self.path!r} is not a multimodal projector (general.architecture is "
                            f"{meta.get('general.architecture')!r}, expected 'clip')")
        if not meta.get("clip.has_vision_encoder", False):
            raise UnsupportedError(f"{self.path!r} has no vision encoder (janlib supports images, not audio)")
        self.projector_type: str = meta.get("clip.vision.projector_type", meta.get("clip.projector_type", ""))
        if self.projector_type not in HEADS:
            raise UnsupportedError(f"{self.path!r}: projector type {self.projector_type!r} is not supported "
                                   f"(janlib runs {', '.join(sorted(HEADS))})")
        self.n_threads = kernels._threads(n_threads)
        self.image_size = self._meta_int("clip.vision.image_size")
        self.patch_size = self._meta_int("clip.vision.patch_size")
        self.mean = np.array(self._meta("clip.vision.image_mean")[:3], dtype=np.float32)
        self.std = np.array(self._meta("clip.vision.image_std")[:3], dtype=np.float32)
        self.norm_eps = float(self._meta("clip.vision.attention.layer_norm_epsilon"))
        self._used: set[str] = set()
        self.tower = self._tower()
        self.head: ProjectorHead = HEADS[self.projector_type](self)
        unused = sorted(set(self._file.tensors) - self._used)
        if unused:  # a tensor janlib would ignore changes the result: refuse rather than compute wrong embeddings
            raise UnsupportedError(f"{self.path!r} ({self.projector_type}): tensor {unused[0]!r} is not supported"
                                   + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""))

    # ---- the file ----
    def _meta(self, key: str):
        if key not in self._file.metadata:
            raise GGUFError(f"{self.path!r}: missing metadata key {key!r}")
        return self._file.metadata[key]

    def _meta_int(self, key: str, default: int | None = None) -> int:
        value = self._file.metadata.get(key, default) if default is not None else self._meta(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GGUFError(f"{self.path!r}: metadata {key!r} must be a positive integer, got {value!r}")
        return value

    def tensor(self, name: str, required: bool = True) -> GGUFTensor | None:
        """The named tensor (marked used), or None when absent and not required."""
        tensor = self._file.tensors.get(name)
        if tensor is None and required:
            raise GGUFError(f"{self.path!r} ({self.projector_type}): missing tensor {name!r}")
        if tensor is not None:
            self._used.add(name)
        return tensor

    def _tower(self) -> _core.VisionTower:
        n_layer = self._meta_int("clip.vision.block_count")
        n_embd = self._meta_int("clip.vision.embedding_length")
        n_head = self._meta_int("clip.vision.attention.head_count")
        if self._file.metadata.get("clip.vision.attention.head_count_kv", n_head) != n_head:
            raise UnsupportedError(f"{self.path!r}: grouped-query attention in the vision tower is not supported")
        side = self.image_size // self.patch_size
        activation = ("silu" if self._file.metadata.get("clip.use_silu") else
                      "gelu_tanh" if self._file.metadata.get("clip.use_gelu") else "gelu_quick")
        tensors = {field: self.tensor(name, required=field in ("patch_embd", "position_embd"))
                   for field, name in TOWER_TENSORS.items()}
        patch = tensors["patch_embd"]
        if len(patch.ne) != 4 or patch.ne[:3] != (self.patch_size, self.patch_size, 3) or patch.ne[3] != n_embd:
            raise GGUFError(f"{self.path!r}: v.patch_embd.weight has shape {patch.shape}, expected "
                            f"({n_embd}, 3, {self.patch_size}, {self.patch_size})")
        # the convolution kernel as a matrix (n_embd, 3 * patch_size^2): one matmul over unfolded patches
        tensors["patch_embd"] = SimpleNamespace(raw=patch.raw, type_id=patch.type_id,
                                                ne=(3 * self.patch_size ** 2, n_embd))
        n_ff = self._meta_int("clip.vision.feed_forward_length")
        layers = [self._layer(il, n_embd, n_ff) for il in range(n_layer)][:self._layers_run(n_layer)]
        sizes = dict(n_embd=n_embd, n_head=n_head, n_ff=n_ff,
                     patch_dim=3 * self.patch_size ** 2, n_patches=side * side, activation=activation,
                     norm_eps=self.norm_eps)
        return _core.VisionTower(sizes, tensors, layers)

    def _layer(self, il: int, n_embd: int, n_ff: int) -> dict:
        layer = {field: self.tensor(f"v.blk.{il}.{name}", required=not field.endswith("_bias"))
                 for field, name in LAYER_TENSORS.items()}
        if layer["ffn_down"].ne == (n_embd, n_ff) and n_ff != n_embd:
            # older conversions (llava's legacy script among them) named the FFN's matrices the other way
            # round; llama.cpp tells them apart by shape, as here
            layer["ffn_up"], layer["ffn_down"] = layer["ffn_down"], layer["ffn_up"]
            layer["ffn_up_bias"], layer["ffn_down_bias"] = layer["ffn_down_bias"], layer["ffn_up_bias"]
        return layer

    def _layers_run(self, n_layer: int) -> int:
        """The blocks whose output feeds the projector: all, except for llava's, where llama.cpp stops at the
        deepest clip.vision.feature_layer (an index into the hidden states, 0 the embeddings) and else leaves
        out the file's last block."""
        if self.projector_type != "mlp":
            return n_layer
        feature_layers = self._file.metadata.get("clip.vision.feature_layer") or []
        if len(feature_layers) > 1:
            raise UnsupportedError(f"{self.path!r}: several vision feature layers {feature_layers} (stacked "
                                   "features, as granite-vision has) are not supported")
        n_run = feature_layers[0] if feature_layers else n_layer - 1
        if not 1 <= n_run <= n_layer:
            raise GGUFError(f"{self.path!r}: vision feature layer {n_run} is outside the {n_layer} blocks")
        return n_run

    # ---- the contract ----
    @property
    def n_embd_text(self) -> int:
        return self.head.n_embd_text

    @property
    def non_causal(self) -> bool:
        return self.head.non_causal

    def check_text_model(self, model) -> None:
        """ValueError naming the mismatch if this projector's embeddings do not fit `model` (a janlib Model)."""
        if model.n_embd != self.n_embd_text:
            raise ValueError(f"the projector {os.path.basename(self.path)!r} makes embeddings of width "
                             f"{self.n_embd_text}, the text model's n_embd is {model.n_embd}")

    def decode_image(self, data: bytes, field: str = "image") -> Image.Image:
        return decode_image(data, field)

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, Layout]:
        """(n_tiles, 3, image_size, image_size) float32 normalized tiles and the prompt layout."""
        tiles, layout = self.head.tiles(image)
        return np.stack([normalize(tile, self.mean, self.std) for tile in tiles]), layout

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(n_tiles, n_tokens, n_embd_text) float32: the tower and projector over preprocessed tiles, a few tiles
        per tower call (about TOWER_ROWS patch rows: the weights stream once per call, and the scratch stays
        bounded for a many-tile image)."""
        patches = unfold_patches(pixels, self.patch_size)
        step = max(1, TOWER_ROWS // self.tower.n_pos)
        return np.concatenate([self.head.project(self.tower.encode(patches[i:i + step], self.n_threads))
                               for i in range(0, len(patches), step)])

    def embed_image(self, data: bytes, field: str = "image") -> list[str | np.ndarray]:
        """llama.cpp's prompt layout for one image: text pieces (to tokenize with special tokens parsed) and
        embedding blocks, float32 C-contiguous (n_tokens, n_embd_text), in prompt order."""
        pixels, layout = self.preprocess(self.decode_image(data, field))
        features = self.encode(pixels)
        return [piece if isinstance(piece, str) else np.ascontiguousarray(features[piece]) for piece in layout]

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"Projector({self.path!r}, {self.projector_type}, n_embd_text={self.n_embd_text})"


class Idefics3Head:
    """SmolVLM / Idefics3: the image split into tiles plus an overview tile; each tile's patches pixel-shuffled
    (scale_factor^2 neighbours concatenated) and projected by one matrix. Prompt, as llama.cpp's mtmd:
    <fake_token_around_image><row_R_col_C> tile ... ("\\n" between rows), then "\\n\\n" <fake_token_around_image>
    <global-img> overview <fake_token_around_image>; an image that fits one tile still gets a 1x1 grid."""
    non_causal = False

    def __init__(self, p: Projector) -> None:
        self.p = p
        self.scale = p._meta_int("clip.vision.projector.scale_factor", 2)
        self.longest_edge = p._meta_int("clip.vision.preproc_image_size", p.image_size)
        self.fc = p.tensor("mm.model.fc.weight")  # (n_embd_text, n_embd * scale^2)
        self.n_embd_text = self.fc.shape[0]
        side = p.image_size // p.patch_size
        if side % self.scale or self.fc.shape[1] != p.tower.n_embd * self.scale ** 2:
            raise GGUFError(f"{p.path!r}: mm.model.fc.weight {self.fc.shape} does not fit {side}x{side} patches "
                            f"of width {p.tower.n_embd} merged {self.scale}x{self.scale}")

    def tiles(self, image: Image.Image) -> tuple[list[Image.Image], Layout]:
        tiles, n_rows, n_cols = idefics3_tiles(image, self.p.image_size, self.longest_edge)
        layout: Layout = []
        for r in range(n_rows):
            for c in range(n_cols):
                layout += [f"<fake_token_around_image><row_{r + 1}_col_{c + 1}>", r * n_cols + c]
            if r != n_rows - 1:
                layout.append("\n")
        return tiles, layout + ["\n\n<fake_token_around_image><global-img>", n_rows * n_cols,
                                "<fake_token_around_image>"]

    def project(self, hidden: np.ndarray) -> np.ndarray:
        n, seq, e = hidden.shape
        side, s = math.isqrt(seq), self.scale
        # transformers' pixel_shuffle: each output row concatenates an s x s block of patches
        x = hidden.reshape(n, side, side // s, e * s).transpose(0, 2, 1, 3)
        x = x.reshape(n, side // s, side // s, e * s * s).transpose(0, 2, 1, 3).reshape(n * seq // (s * s), e * s * s)
        return kernels.matmul(self.fc, x, self.p.n_threads or None).reshape(n, seq // (s * s), self.n_embd_text)


class Gemma3Head:
    """Gemma 3: one square tile, the image stretched to it (bilinear) as transformers' Gemma3ImageProcessor does
    and the model was trained (llama.cpp letterboxes it on black instead); the patches average-pooled
    n_merge x n_merge, RMS-normed (mm.soft_emb_norm) and projected. Prompt: <start_of_image> embeddings
    <end_of_image>, which the text model attends to bidirectionally."""
    non_causal = True

    def __init__(self, p: Projector) -> None:
        self.p = p
        self.merge = p._meta_int("clip.vision.projector.scale_factor", 4)
        side = p.image_size // p.patch_size
        self.norm = kernels.dequantize(p.tensor("mm.soft_emb_norm.weight"))  # (n_embd,), the converter added Gemma's 1
        proj = p.tensor("mm.input_projection.weight")  # numpy shape (n_embd, n_embd_text): y = x @ W
        self.proj = kernels.dequantize(proj)
        self.n_embd_text = self.proj.shape[1]
        if side % self.merge or self.proj.shape[0] != p.tower.n_embd or self.norm.shape != (p.tower.n_embd,):
            raise GGUFError(f"{p.path!r}: the gemma3 projector ({proj.shape}, pooling {self.merge}) does not fit "
                            f"{side}x{side} patches of width {p.tower.n_embd}")

    def tiles(self, image: Image.Image) -> tuple[list[Image.Image], Layout]:
        size = self.p.image_size
        return [image.resize((size, size), Image.Resampling.BILINEAR)], ["<start_of_image>", 0, "<end_of_image>"]

    def project(self, hidden: np.ndarray) -> np.ndarray:
        n, seq, e = hidden.shape
        side, k = math.isqrt(seq), self.merge
        pooled = hidden.reshape(n, side // k, k, side // k, k, e).mean(axis=(2, 4)).reshape(n, -1, e)
        normed = pooled / np.sqrt(np.mean(pooled * pooled, axis=-1, keepdims=True) + self.p.norm_eps) * self.norm
        return (normed @ self.proj).astype(np.float32)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (error < 1.5e-7): numpy has no erf."""
    z = np.abs(x) * np.float32(1 / math.sqrt(2))
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = np.copysign(1 - poly * np.exp(-z * z), x)
    return (0.5 * x * (1 + erf)).astype(np.float32)


class MlpHead:
    """LLaVA-1.5 style ("mlp"): one square tile, the image fitted on llama.cpp's pad colour (bicubic), as
    LLaVA's own "pad" preprocessing (transformers' processor crops the centre instead); the class row dropped,
    then mm.0, GELU, mm.2. Prompt: the embeddings alone. The GELU is the exact one of the models'
    configs (llama.cpp's graph uses the tanh approximation; they differ by < 1e-3)."""
    non_causal = False
    PAD_COLOR = (122, 116, 104)

    def __init__(self, p: Projector) -> None:
        self.p = p
        for key in ("clip.vision.image_grid_pinpoints", "clip.vision.mm_patch_merge_type"):
            if key in p._file.metadata:  # llava-1.6's tiling
                raise UnsupportedError(f"{p.path!r}: {key} (llava-1.6 style tiling) is not supported")
        self.fc1, self.fc2 = p.tensor("mm.0.weight"), p.tensor("mm.2.weight")
        self.b1, self.b2 = kernels.dequantize(p.tensor("mm.0.bias")), kernels.dequantize(p.tensor("mm.2.bias"))
        self.n_embd_text = self.fc2.shape[0]
        if self.fc1.shape[1] != p.tower.n_embd or self.fc2.shape[1] != self.fc1.shape[0]:
            raise GGUFError(f"{p.path!r}: mm.0.weight {self.fc1.shape} and mm.2.weight {self.fc2.shape} do not "
                            f"chain from the tower's width {p.tower.n_embd}")

    def tiles(self, image: Image.Image) -> tuple[list[Image.Image], Layout]:
        return [pad_to_square(image, self.p.image_size, self.PAD_COLOR)], [0]

    def project(self, hidden: np.ndarray) -> np.ndarray:
        n = hidden.shape[0]
        patches = hidden[:, hidden.shape[1] - self.p.tower.n_patches:].reshape(-1, hidden.shape[2])
        x = gelu_erf(kernels.matmul(self.fc1, patches, self.p.n_threads or None) + self.b1)
        return (kernels.matmul(self.fc2, x, self.p.n_threads or None) + self.b2).reshape(n, -1, self.n_embd_text)


HEADS: dict[str, type] = {"idefics3": Idefics3Head, "gemma3": Gemma3Head, "mlp": MlpHead}


def load_projector(path: str | os.PathLike[str], n_threads: int | None = None) -> Projector:
    """The mmproj GGUF at `path`; GGUFError for a malformed or non-projector file, UnsupportedError naming a
    projector type or tensor janlib does not run."""
    return Projector(path, n_threads)
