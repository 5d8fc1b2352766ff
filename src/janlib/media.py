"""Prompts with images: token ids and blocks of image embeddings (a projector's output), in prompt order.

    prompt = model.media_prompt("Describe <__media__> briefly.", [png_bytes])
    model.generate(prompt)  /  engine.submit(janlib.Request(prompt))

An image's positions hold a pseudo token id derived from a hash of the image's bytes (a negative number,
never a vocabulary id), so the prompt cache's common-prefix comparison treats an image like a run of tokens:
the same image in the next turn matches, and its cells are reused rather than evaluated again. Its
embeddings come from a small cache kept by the same hash, so it is not encoded again either."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from janlib.context import TOKEN_EMBD
from janlib.errors import InvalidMediaError

MEDIA_MARKER = "<__media__>"  # llama.cpp's default marker: where an image goes in a prompt's text
EMBEDDING_CACHE_IMAGES = 16  # images whose embeddings a model keeps (least recently used ones go)

__all__ = ["MEDIA_MARKER", "ImageBlock", "MediaPrompt", "base64_bytes", "data_uri_bytes", "image_key",
           "image_parts_to_markers"]


def image_key(data: bytes) -> int:
    """The pseudo token id of an image's positions: negative (never a token id nor TOKEN_EMBD), from
    56 bits of the image bytes' hash."""
    return -2 - int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")


@dataclass(frozen=True, eq=False)
class ImageBlock:
    """One block of image embeddings in a prompt: positions [start, start + len(embd))."""

    start: int
    embd: np.ndarray  # (n, n_embd) float32
    key: int  # the pseudo token id at its positions
    non_causal: bool  # its rows attend to each other both ways (gemma3)

    @property
    def stop(self) -> int:
        return self.start + len(self.embd)


class MediaPrompt:
    """A prompt of token ids and image embedding blocks, as Model.media_prompt builds it: `tokens` is
    the whole prompt, an image's positions holding its pseudo id (image_key); `images` its blocks."""

    def __init__(self, tokens: Sequence[int], images: Sequence[ImageBlock]) -> None:
        self.tokens = [int(t) for t in tokens]
        self.images = tuple(images)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"MediaPrompt({len(self.tokens)} positions, {len(self.images)} image blocks)"

    @property
    def text_tokens(self) -> list[int]:
        """The prompt's token ids without the image positions (what a sampler's penalties see, as llama.cpp)."""
        return [t for t in self.tokens if t >= 0]

    def block_at(self, pos: int) -> ImageBlock | None:
        """The non-causal block that position pos is inside (not at its start), which a chunk must not end at."""
        for block in self.images:
            if block.non_causal and block.start < pos < block.stop:
                return block
        return None

    def rows(self, start: int, stop: int, label: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
        """The batch rows of positions [start, stop): token ids (TOKEN_EMBD at image positions), the
        image rows' embeddings (k, n_embd) in order or None, the non-causal block labels or None (blocks
        numbered from label + 1), and the next free label."""
        tokens = np.asarray(self.tokens[start:stop], dtype=np.int64)
        pieces, labels = [], None
        for block in self.images:
            a, b = max(block.start, start), min(block.stop, stop)
            if a >= b:
                continue
            tokens[a - start:b - start] = TOKEN_EMBD
            pieces.append(block.embd[a - block.start:b - block.start])
            if block.non_causal:
                if labels is None:
                    labels = np.zeros(stop - start, np.int32)
                label += 1
                labels[a - start:b - start] = label
        embd = np.concatenate(pieces) if pieces else None
        return tokens, embd, labels, label


class EmbeddingCache:
    """The prompt layouts of recently seen images by image_key (least recently used evicted), and one lock
    so that one image is encoded at a time."""

    def __init__(self, capacity: int = EMBEDDING_CACHE_IMAGES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, list] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: int) -> list | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: int, layout: list) -> None:
        self._entries[key] = layout
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def build_media_prompt(text: str, images: Sequence[bytes], projector, tokenize, cache: EmbeddingCache,
                       fields: Sequence[str] | None = None, add_special: bool = True,
                       parse_special: bool = True) -> MediaPrompt:
    """text split at MEDIA_MARKER; each image laid out by projector.embed_image (its text pieces tokenized with
    special tokens parsed); tokenize(text, add_special, parse_special) gives a text's ids."""
    segments = text.split(MEDIA_MARKER)
    if len(segments) - 1 != len(images):
        raise ValueError(f"the prompt has {len(segments) - 1} {MEDIA_MARKER} markers but {len(images)} images were "
                         "given: each image goes where a marker is")
    fields = list(fields) if fields is not None else [f"images[{i}]" for i in range(len(images))]
    tokens: list[int] = []
    blocks: list[ImageBlock] = []
    for i, segment in enumerate(segments):
        if segment or i == 0:  # the first text, even empty, carries the BOS
            tokens += tokenize(segment, add_special and i == 0, parse_special)
        if i == len(images):
            break
        data = images[i]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidMediaError(fields[i], f"an image must be bytes, got {type(data).__name__}")
        data = bytes(data)
        key = image_key(data)
        with cache.lock:
            layout = cache.get(key)
            if layout is None:
                layout = projector.embed_image(data, fields[i])
                cache.put(key, layout)
        for piece in layout:
            if isinstance(piece, str):
                tokens += tokenize(piece, False, True)
            else:
                blocks.append(ImageBlock(len(tokens), piece, key, bool(projector.non_causal)))
                tokens += [key] * len(piece)
    return MediaPrompt(tokens, blocks)


def data_uri_bytes(url: str, field: str) -> bytes:
    """The bytes of a base64 data: URI (data:image/png;base64,...); InvalidMediaError naming field otherwise."""
    header, comma, payload = url.partition(",")
    if not (header.startswith("data:") and comma and header.endswith(";base64")):
        raise InvalidMediaError(field, "expected a base64 data: URI (data:image/...;base64,...)")
    return base64_bytes(payload, field)


def base64_bytes(text: str, field: str) -> bytes:
    """Standard base64 (padding optional, whitespace ignored) decoded; InvalidMediaError naming field otherwise."""
    if not isinstance(text, str):
        raise InvalidMediaError(field, f"expected a base64 string, got {type(text).__name__}")
    compact = "".join(text.split())
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidMediaError(field, f"not valid base64 ({error})") from None
    if not data:
        raise InvalidMediaError(field, "the image data is empty")
    return data


def image_parts_to_markers(messages: Sequence[dict], fetch: Callable[[str, str], bytes] | None = None
                           ) -> tuple[list[dict], list[bytes], list[str]]:
    """OpenAI image content parts ({"type": "image_url", "image_url": {"url": ...}}) replaced by text parts
    holding MEDIA_MARKER, as llama-server does before the chat template runs; returns the messages, the
    images' bytes in order and each one's field name (messages[i].content[j].image_url). A data: URI is
    decoded here; another URL goes to fetch(url, field), and without fetch it is refused."""
    out, images, fields = [], [], []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "image_url"
                                                    for p in content):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "image_url"):
                parts.append(part)
                continue
            field = f"messages[{i}].content[{j}].image_url"
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise InvalidMediaError(field, "expected {\"url\": \"data:image/...;base64,...\"}")
            if url.startswith("data:"):
                images.append(data_uri_bytes(url, field))
            elif fetch is not None:
                images.append(fetch(url, field))
            else:
                raise InvalidMediaError(field, "only data: URIs are accepted here, not remote URLs")
            fields.append(field)
            parts.append({"type": "text", "text": MEDIA_MARKER})
        out.append({**message, "content": parts})
    return out, images, fields
