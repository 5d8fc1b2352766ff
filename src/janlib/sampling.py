"""Sampling: the Jan API's sampling parameters and the sampler that draws each next token in C.

`SamplingParams` carries the fields of the spec's CreateChatCompletionDto under their spec names,
with the spec's defaults; `validate(n_vocab)` names the first bad field. `Sampler` turns them into
one sequence's C chain (csrc/sampling), with llama.cpp's semantics:

    logit bias -> penalties -> [samplers, in the given order] -> draw
    (mirostat 1 or 2: logit bias -> penalties -> temperature -> mirostat)

`sample(logits)` is one C call with the GIL released: apply, draw, and remember the token for the
penalties and DRY."""

from __future__ import annotations

import math
import numbers
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Iterable, NamedTuple

import numpy as np

from janlib import _core
from janlib.errors import JanlibError

DEFAULT_SAMPLERS = ("dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
DEFAULT_DRY_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")

# llama.cpp common/sampling.cpp: other spellings of the canonical names, and the one-letter form
SAMPLER_ALIASES = {
    "top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "typical_p": "typ_p", "typical-p": "typ_p",
    "typical": "typ_p", "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p", "temp": "temperature",
}
SAMPLER_LETTERS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p", "x": "xtc",
                   "t": "temperature"}

INT32_MAX = 2**31 - 1
LOGIT_BIAS_LIMIT = 100.0  # the spec: "a bias value from -100 to 100, or false to ban"


class SamplingParamsError(JanlibError, ValueError):
    """A sampling parameter out of its domain; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class SamplingParams:
    temperature: float = 0.8
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    min_keep: int = 0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: list[str] = field(default_factory=lambda: list(DEFAULT_DRY_SEQUENCE_BREAKERS))
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    ignore_eos: bool = False
    logit_bias: Mapping[int | str, float | bool] = field(default_factory=dict)
    n_probs: int = 0
    post_sampling_probs: bool = False
    samplers: Sequence[str] | str = field(default_factory=lambda: list(DEFAULT_SAMPLERS))

    @classmethod
    def from_request(cls, body: Mapping) -> SamplingParams:
        """The sampling fields of a request body; the other fields are not this class's business."""
        return cls(**{f.name: body[f.name] for f in fields(cls) if f.name in body})

    def validate(self, n_vocab: int) -> None:
        """Raise SamplingParamsError for the first field outside its domain."""
        for name, (low, high, low_inclusive) in _REAL_DOMAINS.items():
            value = getattr(self, name)
            _require_real(name, value)
            if not (low <= value <= high) or (value == low and not low_inclusive):
                bound = "[" if low_inclusive else "("
                raise SamplingParamsError(name, f"{value!r} is outside {bound}{low}, {high}]")
        for name, (low, high) in _INT_DOMAINS.items():
            value = getattr(self, name)
            if not _is_int(value):
                raise SamplingParamsError(name, f"expected an integer, got {type(value).__name__}")
            if not low <= value <= high:
                raise SamplingParamsError(name, f"{value} is outside [{low}, {high}]")
        for name in ("ignore_eos", "post_sampling_probs"):
            if not isinstance(getattr(self, name), bool):
                raise SamplingParamsError(name, f"expected true or false, got {getattr(self, name)!r}")
        _check_breakers(self.dry_sequence_breakers)
        canonical_samplers(self.samplers)
        logit_bias_entries(self.logit_bias, n_vocab)


# name: (low, high, low bound included); every real must also be finite
_REAL_DOMAINS = {
    "temperature": (-math.inf, math.inf, True),
    "dynatemp_range": (0.0, math.inf, True),
    "dynatemp_exponent": (-math.inf, math.inf, True),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, True),
    "typical_p": (0.0, 1.0, True),
    "xtc_probability": (0.0, 1.0, True),
    "xtc_threshold": (0.0, 1.0, True),
    "presence_penalty": (-math.inf, math.inf, True),
    "frequency_penalty": (-math.inf, math.inf, True),
    "repeat_penalty": (0.0, math.inf, False),
    "dry_multiplier": (0.0, math.inf, True),
    "dry_base": (1.0, math.inf, True),
    "mirostat_tau": (0.0, math.inf, True),
    "mirostat_eta": (0.0, math.inf, True),
}
_INT_DOMAINS = {
    "top_k": (0, INT32_MAX),
    "min_keep": (0, INT32_MAX),
    "repeat_last_n": (-1, INT32_MAX),
    "dry_allowed_length": (0, INT32_MAX),
    "dry_penalty_last_n": (-1, INT32_MAX),
    "mirostat": (0, 2),
    "seed": (-1, 2**64 - 1),
    "n_probs": (0, INT32_MAX),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _require_real(name: str, value) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise SamplingParamsError(name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise SamplingParamsError(name, f"{value!r} is not finite")


def _check_breakers(breakers) -> None:
    name = "dry_sequence_breakers"
    if isinstance(breakers, str) or not isinstance(breakers, Sequence):
        raise SamplingParamsError(name, "expected a list of strings")
    if not breakers:
        raise SamplingParamsError(name, "needs at least one breaker")  # as llama.cpp's server
    for b in breakers:
        if not isinstance(b, str) or not b:
            raise SamplingParamsError(name, f"{b!r} is not a non-empty string")


def canonical_samplers(samplers: Sequence[str] | str) -> tuple[str, ...]:
    """The `samplers` list as canonical names: names, llama.cpp's other spellings, or a string of
    letters ("dkypmxt")."""
    if isinstance(samplers, str):
        unknown = [c for c in samplers if c not in SAMPLER_LETTERS]
        if unknown:
            raise SamplingParamsError("samplers", f"unknown sampler letter {unknown[0]!r}; letters are "
                                      f"{''.join(SAMPLER_LETTERS)}")
        return tuple(SAMPLER_LETTERS[c] for c in samplers)
    if not isinstance(samplers, Sequence):
        raise SamplingParamsError("samplers", "expected a list of sampler names or a string of letters")
    names = []
    for s in samplers:
        canonical = SAMPLER_ALIASES.get(s, s) if isinstance(s, str) else None
        if canonical not in _core.SAMPLER_KINDS:
            raise SamplingParamsError("samplers", f"unknown sampler {s!r}; known: {', '.join(_core.SAMPLER_KINDS)}")
        names.append(canonical)
    return tuple(names)


def logit_bias_entries(logit_bias: Mapping, n_vocab: int) -> list[tuple[int, float]]:
    """(token id, bias) pairs; `false` bans (-inf). Keys are ids or their decimal strings (JSON)."""
    name = "logit_bias"
    if not isinstance(logit_bias, Mapping):
        raise SamplingParamsError(name, "expected an object mapping token ids to biases")
    entries = []
    for key, value in logit_bias.items():
        if isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key):
            token = int(key)
        elif _is_int(key):
            token = int(key)
        else:
            raise SamplingParamsError(name, f"key {key!r} is not a token id")
        if not 0 <= token < n_vocab:
            raise SamplingParamsError(name, f"token {token} is not in this vocabulary of {n_vocab}")
        if value is False:
            entries.append((token, -math.inf))
            continue
        _require_real(name, value)
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
            raise SamplingParamsError(name, f"bias {value} of token {token} is outside [-100, 100]")
        entries.append((token, float(value)))
    return entries


class TokenProbs(NamedTuple):
    """The n_probs most probable tokens of one draw, most probable first, and the drawn one's."""
    ids: np.ndarray
    probs: np.ndarray
    token_prob: float


def _pack(strings: Iterable[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """One buffer and count + 1 offsets, as the C side takes byte strings."""
    strings = list(strings)
    offsets = np.zeros(len(strings) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, strings), np.int64, count=len(strings)), out=offsets[1:])
    return np.frombuffer(b"".join(strings), np.uint8), offsets


class Sampler:
    """One sequence's next-token choice. Not for concurrent use: clone() for another sequence.

    eos_token_ids: the end-of-generation tokens, banned when params.ignore_eos.
    token_bytes: each token's text (the vocabulary order), needed only by DRY.
    n_ctx: the context size a window of -1 (repeat_last_n, dry_penalty_last_n) covers; 0: all."""

    def __init__(self, params: SamplingParams, n_vocab: int, eos_token_ids: Iterable[int] = (),
                 token_bytes: Sequence[bytes] | None = None, *, n_ctx: int = 0):
        if not _is_int(n_vocab) or n_vocab <= 0:
            raise ValueError(f"n_vocab must be a positive integer, got {n_vocab!r}")
        if not _is_int(n_ctx) or not 0 <= n_ctx <= INT32_MAX:
            raise ValueError(f"n_ctx must be a non-negative integer, got {n_ctx!r}")
        params.validate(n_vocab)
        order = canonical_samplers(params.samplers)
        bias = logit_bias_entries(params.logit_bias, n_vocab)
        if params.ignore_eos:
            eos = sorted(set(eos_token_ids))
            if any(not 0 <= t < n_vocab for t in eos):
                raise ValueError(f"eos_token_ids {eos} are not all in the vocabulary of {n_vocab}")
            bias += [(t, -math.inf) for t in eos]
        uses_dry = "dry" in order and params.mirostat == 0 and params.dry_multiplier != 0
        if uses_dry and (token_bytes is None or len(token_bytes) != n_vocab):
            raise ValueError("DRY (dry_multiplier != 0) needs token_bytes: the text of every token")
        self.params = params
        self.n_vocab = n_vocab
        self.seed = secrets.randbits(64) if params.seed == -1 else params.seed
        self._chain = _core.SamplingChain(
            params, n_vocab, n_ctx, self.seed,
            np.array([_core.SAMPLER_KINDS[name] for name in order], np.int32),
            np.array([t for t, _ in bias], np.int32), np.array([b for _, b in bias], np.float32),
            *_pack(b.encode() for b in params.dry_sequence_breakers),
            *_pack(token_bytes if uses_dry else ()))

    def sample(self, logits: np.ndarray, constraint=None) -> int:
        """The next token for logits (float32, contiguous, n_vocab); it joins the history. With a
        constraint (janlib.structured.Constraint) only the tokens it allows are drawn, and it takes the token."""
        if constraint is None:
            return self._chain.sample(logits)
        self.set_allowed_tokens(constraint.allowed_mask())
        token = self._chain.sample(logits)
        constraint.accept(token)
        return token

    def accept(self, token: int) -> None:
        """A token that entered the context without being sampled here."""
        self._chain.accept(token)

    def accept_prompt(self, ids: Sequence[int] | np.ndarray) -> None:
        """The prompt's tokens, for the penalties' and DRY's history, in one call."""
        self._chain.accept_many(np.ascontiguousarray(ids, dtype=np.int32))

    def last_probs(self) -> TokenProbs:
        """The last draw's top n_probs: of the raw logits' softmax, or after the chain when
        post_sampling_probs (then zero probabilities are left out, as llama.cpp's server)."""
        ids, probs, token_prob = self._chain.last_probs()
        return TokenProbs(np.array(ids, np.int32), np.array(probs, np.float32), token_prob)

    def set_allowed_tokens(self, allowed: np.ndarray | None) -> None:
        """Constrain the following draws to tokens with allowed[i] true (n_vocab); None lifts it."""
        self._chain.set_mask(None if allowed is None else np.ascontiguousarray(allowed, dtype=np.uint8))

    def survivors(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For tests: (ids, probs) the draw could pick after every other sampler, most probable
        first (ties: lower id first). Changes no history; xtc's coin is tossed."""
        ids = np.empty(self.n_vocab, np.int32)
        probs = np.empty(self.n_vocab, np.float32)
        n = self._chain.survivors(logits, ids, probs)
        return ids[:n], probs[:n]

    def reset(self) -> None:
        """Back to the state right after construction: the same seed replays the same tokens."""
        self._chain.reset()

    def clone(self) -> Sampler:
        """An independent sampler in this one's state (history, random streams, mirostat, mask)."""
        copy = object.__new__(Sampler)
        copy.params, copy.n_vocab, copy.seed = self.params, self.n_vocab, self.seed
        copy._chain = self._chain.clone()
        return copy
