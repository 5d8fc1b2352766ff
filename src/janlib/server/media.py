"""Images in requests: the spec's multimodal_data (base64 strings for the <__media__> markers of the prompt),
OpenAI image_url content parts (data: URIs; http(s) URLs with --allow-remote-media), Anthropic image blocks,
turned into a janlib MediaPrompt by the model's projector (--mmproj). Bad image data is a 400 naming its field;
images sent to a model without a projector are a 400 saying so."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Sequence

from janlib.errors import InvalidMediaError
from janlib.media import MEDIA_MARKER, MediaPrompt, base64_bytes, data_uri_bytes, image_parts_to_markers

from .errors import APIError, invalid

REMOTE_MEDIA_MAX_BYTES = 20 * 1024 * 1024  # an image fetched from a URL may be at most this large
REMOTE_MEDIA_TIMEOUT_S = 10.0  # connecting and each read of a fetch


def require_projector(st, param: str) -> None:
    if st.model.projector is None:
        raise APIError(400, f"'{param}': the model has no multimodal projector, so it cannot take images (start the "
                       "server with --mmproj FILE)", param=param, code="unsupported_parameter")


def bad_image(error: InvalidMediaError) -> APIError:
    return invalid(f"'{error.field}': {error.reason}", error.field)


def fetch_remote(st, url: str, field: str) -> bytes:
    """An http(s) image, with --allow-remote-media only: at most REMOTE_MEDIA_MAX_BYTES, within the timeout."""
    if not url.startswith(("http://", "https://")):
        raise invalid(f"'{field}': an image URL must be a data: URI or http(s), got {url[:40]!r}", field)
    if not st.config.allow_remote_media:
        raise invalid(f"'{field}': remote image URLs are not fetched unless the server runs with "
                      "--allow-remote-media; send the image inline as a data: URI", field)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "janlib"}),
                                    timeout=REMOTE_MEDIA_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > REMOTE_MEDIA_MAX_BYTES:
                raise invalid(f"'{field}': the image is {int(length)} bytes, more than the limit of "
                              f"{REMOTE_MEDIA_MAX_BYTES}", field)
            data = response.read(REMOTE_MEDIA_MAX_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise invalid(f"'{field}': fetching the image failed: HTTP {error.code}", field) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise invalid(f"'{field}': fetching the image failed: {reason}", field) from None
    if len(data) > REMOTE_MEDIA_MAX_BYTES:
        raise invalid(f"'{field}': the image is more than the limit of {REMOTE_MEDIA_MAX_BYTES} bytes", field)
    return data


def multimodal_data(st, value: Any, param: str) -> list[bytes]:
    """The spec's multimodal_data: base64 strings (a data: URI is taken too), one per <__media__> marker."""
    if not value:
        return []
    require_projector(st, param)
    if not isinstance(value, list):
        raise invalid(f"'{param}' must be an array of base64 strings", param, "invalid_type")
    images = []
    for i, item in enumerate(value):
        field = f"{param}[{i}]"
        if not isinstance(item, str):
            raise invalid(f"'{field}' must be a base64 string", field, "invalid_type")
        try:
            images.append(data_uri_bytes(item, field) if item.startswith("data:") else base64_bytes(item, field))
        except InvalidMediaError as error:
            raise bad_image(error) from None
    return images


def chat_images(st, messages: Any) -> tuple[Any, list[bytes], list[str]]:
    """OpenAI image_url content parts of raw chat messages: the messages with a <__media__> text part in each
    one's place, the images and their fields (messages[i].content[j].image_url)."""
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and isinstance(m.get("content"), list)
            and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"]) for m in messages):
        return messages, [], []
    first = next(f"messages[{i}].content[{j}]" for i, m in enumerate(messages) if isinstance(m, dict)
                 and isinstance(m.get("content"), list) for j, p in enumerate(m["content"])
                 if isinstance(p, dict) and p.get("type") == "image_url")
    require_projector(st, first)
    try:
        return image_parts_to_markers(messages, lambda url, field: fetch_remote(st, url, field))
    except InvalidMediaError as error:
        raise bad_image(error) from None


def anthropic_image(st, block: dict, field: str) -> bytes:
    """An Anthropic image block's bytes: source {"type": "base64", "data"} or {"type": "url", "url"}."""
    require_projector(st, field)
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    try:
        if kind == "base64":
            return base64_bytes(source.get("data"), f"{field}.source.data")
        if kind == "url" and isinstance(source.get("url"), str):
            url = source["url"]
            return data_uri_bytes(url, f"{field}.source.url") if url.startswith("data:") else \
                fetch_remote(st, url, f"{field}.source.url")
    except InvalidMediaError as error:
        raise bad_image(error) from None
    raise invalid(f"'{field}.source' must be {{\"type\": \"base64\", \"media_type\", \"data\"}} or "
                  "{\"type\": \"url\", \"url\"}", f"{field}.source")


def media_prompt(st, text: str, images: Sequence[bytes], fields: Sequence[str], param: str,
                 add_special: bool = True) -> MediaPrompt:
    """text with its <__media__> markers and the images as a MediaPrompt; a 400 naming the field of a bad image,
    or param when markers and images do not match."""
    try:
        return st.model.media_prompt(text, images, fields, add_special=add_special)
    except InvalidMediaError as error:
        raise bad_image(error) from None
    except ValueError as error:
        raise invalid(f"'{param}': {error}", param) from None


def text_prompt(st, prompt: Any, images: Sequence[bytes], param: str) -> MediaPrompt:
    """A text prompt (its <__media__> markers) with the images of param (multimodal_data)."""
    if not isinstance(prompt, str):
        raise invalid(f"'{param}' needs a text prompt with {MEDIA_MARKER} markers where the images go, not token ids",
                      param)
    return media_prompt(st, prompt, images, [f"{param}[{i}]" for i in range(len(images))], param)


def add_chat_images(st, setup, images: Sequence[bytes], fields: Sequence[str], param: str) -> None:
    """A rendered chat prompt with images: setup.ids becomes its MediaPrompt."""
    if images:
        setup.ids = media_prompt(st, setup.prompt, images, fields, param, st.model.chat_add_special(setup.prompt))


def prompt_text(st, ids) -> str:
    """A prompt's text for responses that echo it: a MediaPrompt's images as <__media__> markers."""
    if not isinstance(ids, MediaPrompt):
        return st.model.detokenize(ids)
    pieces, start = [], 0
    for block in ids.images:
        pieces += [st.model.detokenize(ids.tokens[start:block.start]), MEDIA_MARKER]
        start = block.stop
    return "".join(pieces) + st.model.detokenize(ids.tokens[start:])
