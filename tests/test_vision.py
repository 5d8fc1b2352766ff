"""The vision side of images: mmproj loading, image decoding and preprocessing, the C vision tower and the
projectors, against transformers' references stored by tests/fixtures/make_vlm_fixtures.py (tiny random
VLMs converted by llama.cpp's converters: idefics3, gemma3, llava; idefics3-single's images fit one tile, where
llama.cpp's layout (a 1x1 grid plus the overview) is not transformers' (the image alone), and llama.cpp's is
the one janlib follows)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from PIL import Image

from janlib import GGUFError, UnsupportedError
from janlib.errors import InvalidMediaError
from janlib.gguf import load_gguf
from janlib.tokenizer import Tokenizer
from janlib.vision import decode_image, load_projector

VLM = Path(__file__).parent / "fixtures" / "vlm"
CASES = ("idefics3", "idefics3-single", "gemma3", "llava")
IMAGES = ("landscape.png", "portrait.jpg")


@pytest.fixture(scope="module", params=CASES)
def case(request):
    projector = load_projector(VLM / f"{request.param}-mmproj.gguf")
    yield request.param, projector, np.load(VLM / f"{request.param}.npz")
    projector.close()


def image_bytes(name: str) -> bytes:
    return (VLM / name).read_bytes()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("name", IMAGES)
def test_preprocessing_matches_transformers_image_processor(case, name):
    _, projector, ref = case
    pixels, _ = projector.preprocess(projector.decode_image(image_bytes(name)))
    expected = ref[f"{Path(name).stem}-pixels"]  # the Pillow image processor's tiles, in llama.cpp's order
    assert pixels.shape == expected.shape and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", IMAGES)
def test_image_features_match_transformers(case, name):
    _, projector, ref = case
    key = Path(name).stem
    features = projector.encode(ref[f"{key}-pixels"])
    expected = ref[f"{key}-features"]
    assert features.dtype == np.float32
    got = features.reshape(-1, projector.n_embd_text)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_tiles_encoded_a_few_per_tower_call_give_the_same_features(case, monkeypatch):
    import janlib.vision.projector

    _, projector, ref = case
    pixels = ref["landscape-pixels"]
    whole = projector.encode(pixels)
    monkeypatch.setattr(janlib.vision.projector, "TOWER_ROWS", 1)  # one tile per call
    np.testing.assert_array_equal(projector.encode(pixels), whole)


@pytest.mark.parametrize("name", IMAGES)
def test_embed_image_gives_llamacpp_layout_and_the_reference_prompt(case, name):
    """Text pieces tokenized (specials parsed) with image rows between them give the reference's tokens."""
    arch, projector, ref = case
    key = Path(name).stem
    pieces = projector.embed_image(image_bytes(name), field="messages[0].content[1]")
    blocks = [p for p in pieces if not isinstance(p, str)]
    for block in blocks:
        assert block.dtype == np.float32 and block.flags.c_contiguous and block.shape[1] == projector.n_embd_text
    expected = ref[f"{key}-features"]
    np.testing.assert_allclose(np.concatenate(blocks), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    tokenizer = Tokenizer.from_metadata(load_gguf(VLM / f"{arch}.gguf").metadata)
    layout = json.loads(str(ref[f"{key}-layout"]))
    tokens, is_image = [], []
    for piece in [layout[0], *pieces, layout[-1]]:
        ids = (tokenizer.encode(piece, add_special=False, parse_special=True) if isinstance(piece, str)
               else [int(ref["image_token_id"])] * len(piece))
        tokens += ids
        is_image += [not isinstance(piece, str)] * len(ids)
    assert tokens == ref[f"{key}-tokens"].tolist()
    assert is_image == ref[f"{key}-is_image"].tolist()


@pytest.mark.parametrize("name", IMAGES)
def test_image_prompt_logits_match_transformers(case, name):
    """End to end below the Model API: embed_image's pieces as one batch (text rows as tokens, image rows as
    embeddings, gemma3's image a non-causal block) give transformers' last-position logits. F32 KV cache: the
    reference is float32 throughout."""
    from janlib import BatchContext
    from janlib.context import TOKEN_EMBD
    from janlib.models import load_runtime

    arch, projector, ref = case
    key = Path(name).stem
    layout = json.loads(str(ref[f"{key}-layout"]))
    tokenizer = Tokenizer.from_metadata(load_gguf(VLM / f"{arch}.gguf").metadata)
    ids, blocks, embd = [], [], []
    for label, piece in enumerate([layout[0], *projector.embed_image(image_bytes(name)), layout[-1]], start=1):
        if isinstance(piece, str):
            piece_ids = tokenizer.encode(piece, add_special=False, parse_special=True)
            ids += piece_ids
            blocks += [0] * len(piece_ids)
        else:
            ids += [TOKEN_EMBD] * len(piece)
            blocks += [label if projector.non_causal else 0] * len(piece)
            embd.append(piece)
    n = len(ids)
    context = BatchContext(load_runtime(VLM / f"{arch}.gguf", n_ctx=256), n_ctx=256, n_seq_max=1, kv_type="f32")
    logits = context.decode(ids, np.arange(n), np.zeros(n, int), np.arange(n) == n - 1, embd=np.concatenate(embd),
                            non_causal_blocks=blocks)[0]
    expected = ref[f"{key}-logits"]
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_projector_facts(case):
    arch, projector, _ = case
    assert projector.projector_type == {"llava": "mlp", "idefics3-single": "idefics3"}.get(arch, arch)
    assert projector.n_embd_text == 64
    assert projector.non_causal == (arch == "gemma3")  # llama.cpp's mtmd: gemma3 sees an image both ways


def test_check_text_model_and_the_text_model_alone_matches_transformers(case):
    """The converted text model is sound on its own (so an image prompt's mismatch is the image's)."""
    from janlib import Model

    arch, projector, ref = case
    model = Model(str(VLM / f"{arch}.gguf"), n_ctx=128, kv_type="f32")  # the reference is float32 throughout
    projector.check_text_model(model)
    expected = ref["text-logits"]
    np.testing.assert_allclose(model.logits(ref["text-tokens"].tolist()), expected, rtol=0,
                               atol=1e-4 * np.abs(expected).max())

    class Narrow:
        n_embd = 32

    with pytest.raises(ValueError, match="n_embd is 32"):
        projector.check_text_model(Narrow())


# ---- decoding ---------------------------------------------------------------------------------------------
def test_decodes_png_jpeg_webp_and_the_first_gif_frame():
    red = Image.new("RGB", (20, 10), (255, 0, 0))
    for fmt in ("PNG", "WEBP"):
        decoded = decode_image(encoded(red, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        assert decoded.mode == "RGB" and decoded.size == (20, 10) and decoded.getpixel((3, 3)) == (255, 0, 0)
    jpeg = decode_image(encoded(red, "JPEG", quality=95))
    assert jpeg.size == (20, 10) and np.abs(np.asarray(jpeg, dtype=int) - (255, 0, 0)).max() < 8
    blue = Image.new("RGB", (20, 10), (0, 0, 255))
    gif = encoded(red, "GIF", save_all=True, append_images=[blue])
    assert decode_image(gif).getpixel((3, 3)) == (255, 0, 0)
    rgba = decode_image(encoded(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG"))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, as llama.cpp does
    grey16 = decode_image(encoded(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG"))
    assert grey16.getpixel((0, 0)) == (156, 156, 156)  # 40000 >> 8


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"definitely not an image", "not a PNG, JPEG, WebP or GIF"),
    (encoded(Image.new("RGB", (8, 8)), "BMP"), "not a PNG, JPEG, WebP or GIF"),
    (encoded(Image.new("RGB", (64, 64)), "PNG")[:60], "cannot decode"),
    ("aGVsbG8=", "expected the image's bytes, got str"),
])
def test_bad_image_data_is_an_invalid_media_error_naming_the_field(data, reason):
    with pytest.raises(InvalidMediaError, match=r"^multimodal_data\[1\]: .*" + reason) as info:
        decode_image(data, "multimodal_data[1]")
    assert info.value.field == "multimodal_data[1]" and isinstance(info.value, ValueError)


# ---- loading errors ---------------------------------------------------------------------------------------
def write_mmproj(path: Path, projector_type: str = "idefics3", extra_tensor: str | None = None, *, n_layer: int = 1,
                 n_embd: int = 8, n_head: int = 2, n_ff: int = 16, image_size: int = 32, patch_size: int = 16,
                 scale: int = 2, n_embd_text: int = 8, dtype=np.float32) -> Path:
    """A random idefics3-shaped projector (by default 1 block of width 8, 32x32 tiles of 16x16 patches, merged
    2x2); matrices of dtype (float32, float16, or "q8_0": the tower's and projector's matrices quantized by
    gguf-py), vectors float32."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_string("clip.projector_type", projector_type)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in {"image_size": image_size, "patch_size": patch_size, "embedding_length": n_embd,
                       "feed_forward_length": n_ff, "block_count": n_layer, "attention.head_count": n_head,
                       "projector.scale_factor": scale}.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    n_patches = (image_size // patch_size) ** 2
    shapes = {"v.patch_embd.weight": (n_embd, 3, patch_size, patch_size), "v.position_embd.weight": (n_patches, n_embd),
              "mm.model.fc.weight": (n_embd_text, n_embd * scale * scale)}
    for il in range(n_layer):
        shapes |= {f"v.blk.{il}.{n}.weight": (n_embd, n_embd) for n in ("attn_q", "attn_k", "attn_v", "attn_out")}
        shapes |= {f"v.blk.{il}.ffn_up.weight": (n_ff, n_embd), f"v.blk.{il}.ffn_down.weight": (n_embd, n_ff),
                   f"v.blk.{il}.ln1.weight": (n_embd,), f"v.blk.{il}.ln2.weight": (n_embd,)}
    if extra_tensor:
        shapes[extra_tensor] = (n_embd,)
    for name, shape in shapes.items():
        matrix = len(shape) == 2 and name != "v.position_embd.weight"
        values = rng.standard_normal(shape, dtype=np.float32) / (np.sqrt(shape[-1]) if matrix else 1)
        if matrix and dtype == "q8_0":
            writer.add_tensor(name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values.astype(dtype if matrix else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_minimal_projector_runs(tmp_path):
    projector = load_projector(write_mmproj(tmp_path / "p.gguf"))
    pieces = projector.embed_image(encoded(Image.new("RGB", (40, 30), (9, 99, 199)), "PNG"))
    blocks = [p for p in pieces if not isinstance(p, str)]
    assert len(blocks) == 2 and all(b.shape == (1, 8) and np.isfinite(b).all() for b in blocks)  # tile + overview


def test_quantized_projector_runs_on_the_quantized_kernels(tmp_path):
    """Q8_0 matrices (as in llama.cpp's quantized mmproj files) give the float32 file's features to Q8_0's
    precision."""
    sizes = dict(n_embd=64, n_ff=128, n_layer=2, n_embd_text=32)
    image = encoded(Image.new("RGB", (40, 30), (9, 99, 199)), "PNG")
    exact = load_projector(write_mmproj(tmp_path / "f32.gguf", **sizes)).embed_image(image)
    quantized = load_projector(write_mmproj(tmp_path / "q8.gguf", dtype="q8_0", **sizes)).embed_image(image)
    for a, b in zip(exact, quantized):
        if isinstance(a, str):
            assert a == b
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=0.03 * np.abs(a).max())
            assert not np.array_equal(a, b)  # the quantized weights were used


def test_unsupported_projector_type_is_named(tmp_path):
    with pytest.raises(UnsupportedError, match="projector type 'qwen2vl' is not supported"):
        load_projector(write_mmproj(tmp_path / "p.gguf", "qwen2vl"))


def test_unknown_tensor_is_named(tmp_path):
    with pytest.raises(UnsupportedError, match="tensor 'v.blk.0.ls1.weight' is not supported"):
        load_projector(write_mmproj(tmp_path / "p.gguf", extra_tensor="v.blk.0.ls1.weight"))


def test_a_text_model_is_not_a_projector():
    with pytest.raises(GGUFError, match="not a multimodal projector"):
        load_projector(VLM / "idefics3.gguf")


def test_tower_rejects_patches_of_the_wrong_shape(case):
    _, projector, _ = case
    with pytest.raises(ValueError, match="patches of shape"):
        projector.tower.encode(np.zeros((1, 3, projector.tower.patch_dim), dtype=np.float32))
