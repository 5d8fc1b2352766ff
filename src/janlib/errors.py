"""Exceptions janlib raises for bad input; each is also a ValueError, as callers expect."""


class JanlibError(Exception):
    """Base of janlib's own exceptions."""


class UnsupportedError(JanlibError, ValueError):
    """A tensor type, ISA level or feature this build cannot run; the message names it."""


class KVCacheFull(JanlibError, RuntimeError):
    """A batch needs more KV cache cells than are free; nothing was changed."""


class InvalidMediaError(JanlibError, ValueError):
    """Image data that cannot be used (not an image, an unsupported format, corrupt); the message names the
    request field it came from."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
