"""Image bytes to the vision tower's input: decoding with Pillow, resizing and tiling as llama.cpp's mtmd does
for each projector type, normalizing, and unfolding into patches."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from janlib.errors import InvalidMediaError

# Pillow's decoders of the images janlib takes (a GIF gives its first frame); no other format is tried
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


def decode_image(data: bytes, field: str = "image") -> Image.Image:
    """The RGB image in `data` (PNG, JPEG, WebP, or a GIF's first frame); InvalidMediaError naming `field`
    for anything else. An alpha channel is dropped, as llama.cpp's loader drops it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMediaError(field, f"expected the image's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidMediaError(field, "the image data is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
        image.load()  # the first frame, decoded in full: truncated or corrupt data fails here
        if image.mode.startswith("I"):  # 16-bit grey: its high byte, as llama.cpp's loader (Pillow would clip)
            image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
        return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise InvalidMediaError(field, f"the image is too large to decode ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's "cannot identify" is an OSError
        reason = "not a PNG, JPEG, WebP or GIF image" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)
        raise InvalidMediaError(field, f"cannot decode the image: {reason}") from None


def normalize(image: Image.Image, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: the pixels scaled to [0, 1], less mean, over std, per channel."""
    pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)  # (H, W, 3)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def unfold_patches(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """(n_images, n_patches, 3 * patch_size^2) float32 C-contiguous from pixels (n_images, 3, H, W): patches row
    by row, each unfolded as (channel, y, x), the layout of the patch embedding's convolution kernel."""
    n, c, h, w = pixels.shape
    ny, nx = h // patch_size, w // patch_size
    patches = pixels.reshape(n, c, ny, patch_size, nx, patch_size).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(patches.reshape(n, ny * nx, c * patch_size * patch_size), dtype=np.float32)


def idefics3_tiles(image: Image.Image, tile: int, longest_edge: int) -> tuple[list[Image.Image], int, int]:
    """llama.cpp's idefics3 split: the image resized (Lanczos) so that its longest edge is longest_edge, each
    side rounded to even, then up to whole tiles; the tiles row by row, then the whole as one tile (the
    overview). Returns (tiles + [overview], n_rows, n_cols)."""
    width, height = image.size
    aspect = width / height
    if width >= height:
        width, height = longest_edge, max(1, int(longest_edge / aspect))
        height += height % 2
    else:
        width, height = max(1, int(longest_edge * aspect)), longest_edge
        width += width % 2
    n_cols, n_rows = math.ceil(width / tile), math.ceil(height / tile)
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    refined = resized.resize((n_cols * tile, n_rows * tile), Image.Resampling.LANCZOS)
    tiles = [refined.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(n_rows) for c in range(n_cols)]
    return tiles + [refined.resize((tile, tile), Image.Resampling.LANCZOS)], n_rows, n_cols


def pad_to_square(image: Image.Image, size: int, color: tuple[int, int, int]) -> Image.Image:
    """llama.cpp's llava preprocessing: the image scaled (bicubic) to fit a size x size square, aspect kept and
    each side rounded up, centred on `color`."""
    scale = min(size / image.width, size / image.height)
    width, height = min(math.ceil(image.width * scale), size), min(math.ceil(image.height * scale), size)
    square = Image.new("RGB", (size, size), color)
    square.paste(image.resize((width, height), Image.Resampling.BICUBIC), ((size - width) // 2, (size - height) // 2))
    return square
