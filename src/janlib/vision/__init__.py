"""Images for vision-language models: llama.cpp's multimodal projector files (`--mmproj`), image decoding and
preprocessing, the vision tower in C, and the projectors that turn an image into the text model's embeddings."""

from janlib.errors import InvalidMediaError
from janlib.vision.image import decode_image
from janlib.vision.projector import Projector, load_projector

__all__ = ["InvalidMediaError", "Projector", "decode_image", "load_projector"]
