"""GGUF vocabularies as Hugging Face `tokenizers` pipelines that give llama.cpp's token ids.

Four vocabulary kinds are supported (`tokenizer.ggml.model`):

* ``gpt2``: byte-level BPE with the file's merges; the pre-tokenizer regexes are chosen by
  `tokenizer.ggml.pre`, copied from llama.cpp's ``src/llama-vocab.cpp``.
* ``llama``: SentencePiece-style BPE as llama.cpp runs it: adjacent symbols whose concatenation
  is a token are merged highest score first, spaces become ``▁``, characters without a token
  fall back to ``<0xNN>`` byte tokens, and with `add_space_prefix` a space is put in front of
  the text and of every fragment that follows a special token.
* ``gemma4``: BPE with the file's merges over UTF-8 text whose spaces are ``▁``, line by line.
* ``bert``: WordPiece (BERT's lowercasing, accent stripping and punctuation splits); add_special
  wraps the text in the CLS (BOS) and SEP tokens.

Control and unknown tokens are matched in the text only with ``parse_special=True``;
user-defined tokens (Gemma's whitespace runs, HTML tags) are always matched, as in llama.cpp.
Decoding keeps every character (llama.cpp's optional clean-up of spaces before punctuation is
not applied), so ``decode(encode(text, add_special=False)) == text`` for any text the vocabulary
can spell: a byte-level vocabulary may lack a few bytes, which are dropped (as llama.cpp drops
them), and a literal ``▁`` reads back as a space from a SentencePiece vocabulary. A lone UTF-16
surrogate (a Python str may hold one, UTF-8 cannot) is encoded as U+FFFD.
"""

from __future__ import annotations

import codecs
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers

from janlib.errors import JanlibError, UnsupportedError

__all__ = ["IncrementalDecoder", "Tokenizer", "TokenizerError", "replace_lone_surrogates"]

# Paired surrogates are already one code point in a str: any surrogate left is a lone one.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    """text with every lone UTF-16 surrogate (JSON's "\\ud800" is one) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# tokenizer.ggml.model values this module reads
_VOCABULARY_KINDS = ("gpt2", "llama", "gemma4", "bert")


class TokenizerError(JanlibError, ValueError):
    """The GGUF metadata does not describe a usable vocabulary, or a token id is out of range."""


# Pre-tokenizer regexes from llama.cpp's llm_tokenizer_bpe: each regex in turn splits every
# piece into its matches and the text between them.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_QWEN35 = _QWEN2.replace(r"\p{L}+", r"[\p{L}\p{M}]+").replace(r" ?[^\s\p{L}\p{N}]+", r" ?[^\s\p{L}\p{M}\p{N}]+")


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token is kept, merges or not
    add_bos: bool = False  # llama.cpp's add_bos when tokenizer.ggml.add_bos_token is absent


_DEFAULT = _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_GPT2_PRE = _PreTokenizer((_GPT2,))
_STARCODER = _PreTokenizer((r"\p{N}", _GPT2))  # SmolLM: every digit on its own
_LLAMA3_PRE = _PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = _PreTokenizer((_QWEN2,))
_CJK = "[一-龥ࠀ-一가-\ud7ff]+"
_DEEPSEEK_LLM = _PreTokenizer((
    r"[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-Ჺ"
    "Ჽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝ"
    "ℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀"
    "-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # letters; escapes where NFC would change one (U+1F7D is not U+03CE)
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",  # \u3000: the ideographic space itself
    r"\s+$",
    _CJK,
    r"\p{N}+",
))

_PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "default": _DEFAULT,
    "gpt2": _GPT2_PRE, "gpt-2": _GPT2_PRE, "phi-2": _GPT2_PRE, "mpt": _GPT2_PRE, "olmo": _GPT2_PRE,
    "smollm": _STARCODER, "starcoder": _STARCODER, "refact": _STARCODER, "codeshell": _STARCODER,
    "command-r": _STARCODER,
    "llama3": _LLAMA3_PRE, "llama-v3": _LLAMA3_PRE, "llama-bpe": _LLAMA3_PRE,
    "dbrx": _PreTokenizer((_LLAMA3,)), "smaug-bpe": _PreTokenizer((_LLAMA3,)),
    "qwen2": _QWEN2_PRE, "deepseek-r1-qwen": _QWEN2_PRE, "stablelm2": _QWEN2_PRE, "megrez": _QWEN2_PRE,
    "qwen35": _PreTokenizer((_QWEN35,)),
    "falcon": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")),
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")),
}

# Token texts that end generation (llama.cpp's special_eog_ids, found by text).
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})
# Fill-in-the-middle pad / repository / file-separator tokens, which llama.cpp also stops at;
# the metadata key names the token, or else the first text of its list found in the vocab.
_FIM_EOG = {
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}


def _byte_level_alphabet() -> dict[int, int]:
    """GPT-2's byte-to-character table, inverted: code point of the stand-in character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = dict(zip(printable, printable))
    shifted = (b for b in range(256) if b not in stand_ins)
    stand_ins.update((b, 256 + n) for n, b in enumerate(shifted))
    return {char: byte for byte, char in stand_ins.items()}


_BYTE_LEVEL_DECODE = _byte_level_alphabet()


def _byte_level_bytes(text: str) -> bytes:
    try:
        return text.translate(_BYTE_LEVEL_DECODE).encode("latin-1")
    except UnicodeEncodeError:  # a character outside the byte alphabet stands for itself
        return b"".join(bytes([_BYTE_LEVEL_DECODE[ord(c)]]) if ord(c) in _BYTE_LEVEL_DECODE else c.encode()
                        for c in text)


def _optional_id(metadata: dict, key: str, n_vocab: int, default: int | None = None) -> int | None:
    """A token id from the metadata; like llama.cpp, an out-of-range id keeps the default."""
    value = metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab:
        return value
    return default if default is not None and default < n_vocab else None


def _bool(metadata: dict, key: str, default: bool) -> bool:
    value = metadata.get(key)
    return value if isinstance(value, bool) else default


def _string_list(metadata: dict, key: str) -> list[str]:
    value = metadata.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenizerError(f"GGUF metadata {key!r} must be an array of strings")
    return value


def _numeric_array(metadata: dict, key: str, n: int, default: float, dtype) -> np.ndarray:
    value = metadata.get(key)
    if value is None:
        return np.full(n, default, dtype=dtype)
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iuf" or len(array) < n:
        raise TokenizerError(f"GGUF metadata {key!r} must be a numeric array of at least {n} entries")
    return array[:n].astype(dtype)


def _spm_merges(tokens: list[str], types: np.ndarray, scores: np.ndarray,
                vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges for llama.cpp's SentencePiece BPE: every split of a normal token into two tokens,
    ranked by the score of the token they form (higher first, then lower id)."""
    ids = np.arange(len(tokens))
    order = np.lexsort((ids, -scores))
    targets = [tokens[i] for i in order[types[order] == NORMAL].tolist()]
    return [(left, right) for text in targets for cut in range(1, len(text))
            if (left := text[:cut]) in vocab and (right := text[cut:]) in vocab]


def _gpt2_merges(metadata: dict, vocab: dict[str, int]) -> list[tuple[str, str]]:
    # llama.cpp splits "left right" at the first space after the first character
    merges = _string_list(metadata, "tokenizer.ggml.merges")
    pairs = ((m[:cut], m[cut + 1:]) for m in merges if (cut := m.find(" ", 1)) > 0)
    return [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]


class _Backend(NamedTuple):
    """What differs between the vocabulary kinds."""
    tokenizer: HFTokenizer
    pieces: list[bytes]  # the bytes each normal token decodes to
    add_space_prefix: bool
    default_bos: int | None  # llama.cpp's defaults when the metadata has no id / flag
    default_eos: int | None
    default_add_bos: bool
    add_sep: bool = False  # add_special ends the text with the separator token (WPM)


def _byte_level_backend(metadata: dict, tokens: list[str], vocab: dict[str, int]) -> _Backend:
    pre_name = metadata.get("tokenizer.ggml.pre") or "default"
    pre = _PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise UnsupportedError(f"tokenizer.ggml.pre {pre_name!r} is not supported; supported: "
                               + ", ".join(sorted(_PRE_TOKENIZERS)))
    backend = HFTokenizer(models.BPE(vocab, _gpt2_merges(metadata, vocab), ignore_merges=pre.ignore_merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return _Backend(backend, [_byte_level_bytes(t) for t in tokens], False, None, None, pre.add_bos)


def _spm_pieces(tokens: list[str], types: np.ndarray) -> list[bytes]:
    """Bytes of SentencePiece-spelled tokens: ``▁`` is a space, ``<0xNN>`` byte tokens one byte."""
    pieces = [t.replace("▁", " ").encode() for t in tokens]
    for i in np.flatnonzero(types == BYTE).tolist():
        pieces[i] = bytes([int(tokens[i][3:5], 16)])
    return pieces


def _sentencepiece_backend(metadata: dict, tokens: list[str], vocab: dict[str, int], types: np.ndarray) -> _Backend:
    n = len(tokens)
    scores = _numeric_array(metadata, "tokenizer.ggml.scores", n, 0.0, np.float32)
    unk_id = _optional_id(metadata, "tokenizer.ggml.unknown_token_id", n, 0)
    backend = HFTokenizer(models.BPE(vocab, _spm_merges(tokens, types, scores, vocab), byte_fallback=True,
                                     unk_token=None if unk_id is None else tokens[unk_id]))
    add_space_prefix = _bool(metadata, "tokenizer.ggml.add_space_prefix", True)
    prefix = [normalizers.Prepend("▁")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    return _Backend(backend, _spm_pieces(tokens, types), add_space_prefix, 1, 2, True)


def _gemma4_backend(metadata: dict, tokens: list[str], vocab: dict[str, int], types: np.ndarray) -> _Backend:
    """Gemma 4's BPE: the file's merges over raw UTF-8 with spaces spelled ``▁``, applied to each
    line and each run of newlines (a run that is a token is kept whole), bytes without a token as
    ``<0xNN>``; llama.cpp always adds BOS."""
    backend = HFTokenizer(models.BPE(vocab, _gpt2_merges(metadata, vocab), byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    return _Backend(backend, _spm_pieces(tokens, types), False, None, None, True)


def _wordpiece_backend(metadata: dict, tokens: list[str], vocab: dict[str, int]) -> _Backend:
    """BERT's WordPiece as llama.cpp runs it: the GGUF spells word-initial pieces ``▁word`` and
    continuations bare (the converter turned ``##ing`` into ``ing``); each word, split off at
    whitespace, punctuation and CJK characters, takes the longest matching piece first, and a word
    with an unmatched rest becomes the unknown token."""
    n = len(tokens)
    unk_id = _optional_id(metadata, "tokenizer.ggml.unknown_token_id", n, 100)
    wordpiece_vocab = {(t[1:] if t.startswith("▁") else "##" + t): i for i, t in enumerate(tokens)}
    wordpiece_vocab[tokens[unk_id]] = unk_id  # the unknown token keeps its own spelling
    backend = HFTokenizer(models.WordPiece(wordpiece_vocab, unk_token=tokens[unk_id],
                                           max_input_chars_per_word=2**31 - 1))
    lowercase = _bool(metadata, "tokenizer.ggml.normalizer.lowercase", True)
    strip_accents = _bool(metadata, "tokenizer.ggml.normalizer.strip_accents", lowercase)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    pieces = [t.replace("▁", " ").encode() for t in tokens]
    return _Backend(backend, pieces, False, 101, None, True, add_sep=True)


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary; build it with `from_metadata`."""

    def __init__(self, *, backend: HFTokenizer, tokens: list[str], types: np.ndarray, pieces: list[bytes],
                 bos_id: int | None, eos_id: int | None, eos_token_ids: frozenset[int],
                 add_bos: bool, add_eos: bool, strip_space_prefix: bool, sep_id: int | None = None):
        self._backend = backend
        self._backend_lock = threading.Lock()  # encode_special_tokens is a switch on the shared backend
        self._tokens = tokens
        self._special = np.isin(types, (CONTROL, UNKNOWN))
        self._pieces = pieces
        self.n_vocab = len(tokens)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_token_ids = eos_token_ids
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.sep_id = sep_id  # a WordPiece vocabulary ends each text encoded with add_special with it
        self._strip_space_prefix = strip_space_prefix

    @classmethod
    def from_metadata(cls, metadata: dict) -> Tokenizer:
        kind = metadata.get("tokenizer.ggml.model")
        if kind not in _VOCABULARY_KINDS:
            raise UnsupportedError(f"tokenizer.ggml.model {kind!r} is not supported; supported: "
                                   + ", ".join(map(repr, _VOCABULARY_KINDS)))
        tokens = _string_list(metadata, "tokenizer.ggml.tokens")
        n = len(tokens)
        vocab = {text: i for i, text in enumerate(tokens)}
        if len(vocab) != n:
            raise TokenizerError(f"the vocabulary has {n - len(vocab)} duplicate token texts")
        types = _numeric_array(metadata, "tokenizer.ggml.token_type", n, NORMAL, np.int32)
        eos_token_ids = _mark_end_tokens(metadata, tokens, vocab, types)
        if kind == "gpt2":
            built = _byte_level_backend(metadata, tokens, vocab)
        elif kind == "llama":
            built = _sentencepiece_backend(metadata, tokens, vocab, types)
        elif kind == "gemma4":
            built = _gemma4_backend(metadata, tokens, vocab, types)
        else:
            built = _wordpiece_backend(metadata, tokens, vocab)

        # special and user-defined tokens are split out of the text before the model runs and
        # decode to their own text; unused and undefined ones decode to nothing (as in llama.cpp)
        pieces = built.pieces
        matched = np.flatnonzero(np.isin(types, (CONTROL, UNKNOWN, USER_DEFINED))).tolist()
        for i in matched:
            pieces[i] = tokens[i].encode()
        for i in np.flatnonzero(~np.isin(types, (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE))).tolist():
            pieces[i] = b""
        built.tokenizer.add_tokens([AddedToken(tokens[i], special=bool(types[i] != USER_DEFINED), normalized=False)
                                    for i in matched])

        bos_id = _optional_id(metadata, "tokenizer.ggml.bos_token_id", n, built.default_bos)
        eos_id = _optional_id(metadata, "tokenizer.ggml.eos_token_id", n, built.default_eos)
        add_bos = _bool(metadata, "tokenizer.ggml.add_bos_token", built.default_add_bos)
        add_eos = _bool(metadata, "tokenizer.ggml.add_eos_token", False)
        if kind == "gemma4":  # llama.cpp overrides a false add_bos_token for Gemma 4
            add_bos = True
        sep_id = _optional_id(metadata, "tokenizer.ggml.seperator_token_id", n, 102) if built.add_sep else None
        if add_bos and bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set")
        if add_eos and eos_id is None:
            raise TokenizerError("tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set")
        if built.add_sep and sep_id is None:
            raise TokenizerError("a WordPiece vocabulary needs tokenizer.ggml.seperator_token_id")
        if eos_id is not None:
            eos_token_ids.add(eos_id)
        return cls(backend=built.tokenizer, tokens=tokens, types=types, pieces=pieces, bos_id=bos_id, eos_id=eos_id,
                   eos_token_ids=frozenset(eos_token_ids), add_bos=add_bos, add_eos=add_eos, sep_id=sep_id,
                   strip_space_prefix=built.add_space_prefix)

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (byte-level or ``▁`` form)."""
        return self._tokens[self._check_id(token_id)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token adds to decoded text (a special token's own text)."""
        return self._pieces[self._check_id(token_id)]

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown tokens: the ones `skip_special` drops."""
        return bool(self._special[self._check_id(token_id)])

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.n_vocab:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        return token_id

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text. add_special adds BOS/EOS as the model asks (add_bos, add_eos);
        parse_special makes control-token texts such as ``<|im_start|>`` their tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        text = replace_lone_surrogates(text)
        with self._backend_lock:
            self._backend.encode_special_tokens = not parse_special
            ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special:
            if self.sep_id is not None:  # WordPiece, as llama.cpp: [CLS] text [SEP] whatever add_bos/add_eos say
                ids = [self.bos_id, *ids, self.sep_id]
            else:
                ids = [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """The text of ids; invalid UTF-8 becomes U+FFFD. With add_space_prefix the space the
        encoder put in front of the text is removed again from the first text token."""
        ids = list(ids)
        pieces = [self._piece(i, skip_special) for i in ids]
        if self._strip_space_prefix:
            first_text = next((k for k, i in enumerate(ids) if not self._special[i]), None)
            if first_text is not None and pieces[first_text].startswith(b" "):
                pieces[first_text] = pieces[first_text][1:]
        return b"".join(pieces).decode("utf-8", "replace")

    def _piece(self, token_id: int, skip_special: bool) -> bytes:
        piece = self.token_bytes(token_id)
        return b"" if skip_special and self._special[token_id] else piece

    def decoder(self, skip_special: bool = False) -> IncrementalDecoder:
        """A streaming decoder for generated tokens (it keeps every token's leading space)."""
        return IncrementalDecoder(self, skip_special)


def _mark_end_tokens(metadata: dict, tokens: list[str], vocab: dict[str, int], types: np.ndarray) -> set[int]:
    """End-of-generation ids as llama.cpp finds them; they are made control tokens (in place),
    as llama.cpp does for end markers a converter left normal."""
    n = len(tokens)
    ends = {vocab[text] for text in _EOG_TEXTS if text in vocab}
    for key, texts in _FIM_EOG.items():
        fim = _optional_id(metadata, key, n)
        if fim is None:
            fim = next((vocab[t] for t in texts if t in vocab), None)
        if fim is not None:
            ends.add(fim)
    ends |= {i for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
             if (i := _optional_id(metadata, key, n)) is not None}
    # vocabularies with these tool-call markers use <|end|> and </s> as ordinary text
    if {"<|return|>", "<|call|>"} <= vocab.keys() or {"<|calls|>", "<|flush|>"} <= vocab.keys():
        ends.discard(vocab.get("<|end|>"))
    if "<|tool_response>" in vocab:
        ends.discard(vocab.get("</s>"))
    end_ids = np.fromiter(ends, dtype=np.int64)
    types[end_ids[np.isin(types[end_ids], (NORMAL, USER_DEFINED, UNUSED))]] = CONTROL
    return ends


class IncrementalDecoder:
    """Turns a stream of token ids into text, holding back the bytes of an unfinished UTF-8
    character (a multi-byte character split across tokens or byte-fallback tokens)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        """The text completed by this token ("" while a character is still partial)."""
        return self._utf8.decode(self._tokenizer._piece(token_id, self._skip_special))

    def flush(self) -> str:
        """What is left at the end: an unfinished character comes out as U+FFFD."""
        return self._utf8.decode(b"", final=True)
