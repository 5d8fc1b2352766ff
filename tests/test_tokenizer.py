"""Tests for janlib.tokenizer: token ids against llama.cpp's tokenizer on the same GGUF (when
llama-cpp-python is installed) and against ids recorded from it, plus round trips, streaming
decoding and small hand-built vocabularies for the pre-tokenizers and SentencePiece rules."""

from __future__ import annotations

import ctypes
import time

import gguf
import pytest

from janlib.errors import UnsupportedError
from janlib.gguf import load_gguf
from janlib.tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, Tokenizer, TokenizerError

slow = pytest.mark.slow

# Every string must survive a round trip on both vocabularies: SmolLM2's byte-level vocabulary
# lacks a few bytes (some C0 controls, UTF-8 lead bytes of planes 1-3) and a literal "▁"
# decodes as a space in SentencePiece, so neither appears here.
CORPUS = [
    "",
    " ",
    "Hello world",
    " leading space",
    "   three leading spaces and trailing   ",
    "tabs\tand\t\ttabs\n",
    "lines\n\nand\r\nCRLF\n\n\n",
    " \t \n\t\n  mixed whitespace \t",
    "12345678901234567890",
    "3.14159, -2.5e-10, 1,000,000.00 and 007",
    "你好，世界！我们去吃饭吧。",
    "日本語のテキストと English 混在 123",
    "안녕하세요 세계",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Привет, мир! Съешь же ещё этих мягких булок.",
    "Ünïcödé façade naïve e\u0301 (combining accent)",
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 🧑🏿‍🚀 🎉",
    "rare emoji spelled in byte tokens: 🫨🪿",
    "def square(x):\n    return x ** 2  # comment\n\n\tpass\n",
    'if (a<b && c>=d) { printf("%d\\n", a); } // C',
    "<table><tr><td>1</td></tr></table>",
    "I'm sure you've seen it; they'll say we'd CAN'T",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<eos><bos><pad> and <|endoftext|> mid<|endoftext|>text",
    "<0x41> looks like a byte token",
    "$$$ 100% @#&* ...!!!???",
    "x" * 300,
]

# ids recorded once from llama.cpp (llama-cpp-python 0.3.36): (text, add_special, parse_special) -> ids
RECORDED = {
    "smollm2": [
        ("Hello, world!", True, False, [19556, 28, 905, 17]),
        ("  two  spaces\n\n\ttab 12345", False, False,
         [216, 827, 216, 5600, 1116, 197, 15999, 216, 33, 34, 35, 36, 37]),
        ("你好 🫨 👍🏽", False, False,
         [18645, 250, 48392, 138, 15107, 121, 118, 15107, 235, 231, 10813, 233, 138]),
        ("<|im_start|>user\nHi<|im_end|>", False, True, [1, 4093, 198, 26843, 2]),
        ("<|im_start|>user\nHi<|im_end|>", False, False,
         [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46]),
        ("", True, False, []),
    ],
    "gemma3": [
        ("Hello, world!", True, False, [2, 9259, 236764, 1902, 236888]),
        ("  two  spaces\n\n\ttab 12345", False, False,
         [138, 13498, 138, 35220, 108, 255968, 4823, 236743, 236770, 236778, 236800, 236812, 236810]),
        ("你好 🫨 👍🏽", False, False, [144626, 236743, 478, 397, 409, 406, 103712, 242713]),
        ("<start_of_turn>user\nHi<end_of_turn>", True, True, [2, 105, 2364, 107, 10979, 106]),
        ("<start_of_turn>user\nHi<end_of_turn>", True, False,
         [2, 236820, 3041, 236779, 1340, 236779, 887, 236813, 2364, 107, 10979,
          236820, 643, 236779, 1340, 236779, 887, 236813]),
        ("", True, False, [2]),
    ],
}

MODELS = ["smollm2", "gemma3"]


@pytest.fixture(scope="module")
def built(request):
    """name -> (tokenizer, path, CPU seconds to build: a busy machine does not count), each model built once."""
    cache = {}

    def get(name):
        if name not in cache:
            path = request.getfixturevalue(f"{name}_path")
            metadata = load_gguf(path).metadata
            start = time.process_time()
            tokenizer = Tokenizer.from_metadata(metadata)
            cache[name] = (tokenizer, path, time.process_time() - start)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def reference(built):
    """name -> (llama_cpp.Llama with only the vocabulary, its llama_vocab pointer)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cache = {}

    def get(name):
        if name not in cache:
            llama = llama_cpp.Llama(model_path=str(built(name)[1]), vocab_only=True, verbose=False)
            cache[name] = (llama, llama_cpp.llama_model_get_vocab(llama.model))
        return cache[name]

    return get


def _assert_encodes_like(tokenizer: Tokenizer, llama, corpus: list[str]) -> None:
    """tokenizer gives llama.cpp's ids for every text, with and without BOS/EOS and special parsing."""
    for text in corpus:
        for add_special in (False, True):
            for parse_special in (False, True):
                expected = llama.tokenize(text.encode(), add_bos=add_special, special=parse_special)
                ours = tokenizer.encode(text, add_special, parse_special)
                assert ours == expected, (text, add_special, parse_special)


@pytest.fixture(params=MODELS)
def name(request):
    return request.param


# --- real vocabularies -------------------------------------------------------------------------

@slow
@pytest.mark.parametrize("case", range(6))
def test_recorded_llama_cpp_ids(built, name, case):
    text, add_special, parse_special, expected = RECORDED[name][case]
    assert built(name)[0].encode(text, add_special=add_special, parse_special=parse_special) == expected


@slow
def test_ids_equal_llama_cpp(built, reference, name):
    tokenizer = built(name)[0]
    llama, _ = reference(name)
    _assert_encodes_like(tokenizer, llama, CORPUS)


@slow
def test_token_bytes_equal_llama_cpp_pieces(built, reference, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = built(name)[0]
    _, vocab = reference(name)
    buffer = ctypes.create_string_buffer(1024)
    for token_id in range(tokenizer.n_vocab):
        for special in (True, False):
            n = llama_cpp.llama_token_to_piece(vocab, token_id, buffer, len(buffer), 0, special)
            ours = b"" if not special and tokenizer.is_special(token_id) else tokenizer.token_bytes(token_id)
            assert ours == buffer.raw[:n], (token_id, special)


@slow
def test_eos_token_ids_equal_llama_cpp_eog(built, reference, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = built(name)[0]
    _, vocab = reference(name)
    eog = {i for i in range(tokenizer.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert tokenizer.eos_token_ids == eog
    assert tokenizer.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)


@slow
def test_eos_token_ids(built):
    smollm2, gemma3 = built("smollm2")[0], built("gemma3")[0]
    # <|endoftext|>, <|im_end|>, and <reponame>, which llama.cpp takes for a FIM repository token
    assert smollm2.eos_token_ids == {0, 2, 4}
    assert [smollm2.token_text(i) for i in (0, 2, 4)] == ["<|endoftext|>", "<|im_end|>", "<reponame>"]
    assert smollm2.eos_id == 2
    # <eos>, <end_of_turn>, and the HTML tag </s>, an end marker by its text
    assert gemma3.eos_token_ids == {1, 106, 212}
    assert [gemma3.token_text(i) for i in (1, 106, 212)] == ["<eos>", "<end_of_turn>", "</s>"]
    assert gemma3.eos_id == 1


@slow
def test_add_bos(built):
    smollm2, gemma3 = built("smollm2")[0], built("gemma3")[0]
    # SmolLM2's GGUF says add_bos_token = false, and llama.cpp follows it
    assert (smollm2.add_bos, smollm2.add_eos, smollm2.bos_id) == (False, False, 1)
    assert smollm2.encode("Hi") == smollm2.encode("Hi", add_special=False)
    assert (gemma3.add_bos, gemma3.add_eos, gemma3.bos_id) == (True, False, 2)
    assert gemma3.encode("Hi") == [2] + gemma3.encode("Hi", add_special=False)
    assert gemma3.encode("") == [2] and gemma3.encode("", add_special=False) == []


@slow
def test_builds_in_time(built, name):
    # Gemma-3's 262,144 tokens take about a second; a per-token slow path would take many
    tokenizer, _, seconds = built(name)
    assert tokenizer.n_vocab == {"smollm2": 49152, "gemma3": 262144}[name]
    assert seconds < 6


@slow
def test_parse_special_switches_control_tokens(built, name):
    tokenizer = built(name)[0]
    marker = {"smollm2": "<|im_start|>", "gemma3": "<start_of_turn>"}[name]
    marker_id = {"smollm2": 1, "gemma3": 105}[name]
    assert tokenizer.encode(marker, add_special=False, parse_special=True) == [marker_id]
    typed = tokenizer.encode(marker, add_special=False, parse_special=False)
    assert marker_id not in typed and len(typed) > 1
    assert tokenizer.decode(typed) == marker


@slow
def test_user_defined_tokens_are_always_matched(built):
    gemma3 = built("gemma3")[0]
    # Gemma's whitespace runs are user-defined: matched with and without parse_special
    for parse_special in (False, True):
        assert gemma3.encode("\n\n", add_special=False, parse_special=parse_special) == [108]
        assert gemma3.encode("  ", add_special=False, parse_special=parse_special) == [138]


@slow
def test_round_trip(built, name):
    tokenizer = built(name)[0]
    for text in CORPUS:
        assert tokenizer.decode(tokenizer.encode(text, add_special=False)) == text
        assert tokenizer.decode(tokenizer.encode(text), skip_special=True) == text


@slow
def test_incremental_decoder_equals_decode(built, name):
    tokenizer = built(name)[0]
    held_back = 0
    for text in CORPUS:
        ids = tokenizer.encode(text, add_special=False)
        decoder = tokenizer.decoder()
        pieces = [decoder.feed(i) for i in ids]
        tail = decoder.flush()
        assert "".join(pieces) + tail == tokenizer.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces) and tail == ""
        held_back += sum(1 for i, p in zip(ids, pieces) if p == "" and tokenizer.token_bytes(i))
    assert held_back > 0  # some characters really were split across tokens


@slow
def test_incremental_decoder_holds_back_byte_tokens(built):
    gemma3 = built("gemma3")[0]
    ids = gemma3.encode("🫨!", add_special=False)
    assert [gemma3.token_text(i) for i in ids[:4]] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    decoder = gemma3.decoder()
    assert [decoder.feed(i) for i in ids] == ["", "", "", "🫨", "!"]


@slow
def test_invalid_utf8_is_replaced(built):
    gemma3 = built("gemma3")[0]
    lead, continuation = gemma3.encode("🫨", add_special=False)[:2]
    assert gemma3.decode([continuation]) == "\ufffd"
    decoder = gemma3.decoder()
    assert decoder.feed(lead) == "" and decoder.flush() == "\ufffd"
    assert decoder.feed(continuation) == "\ufffd"


@slow
def test_lone_surrogates_encode_as_replacement_character(built, name):
    # a Python str (and JSON's "\\ud800") can hold a lone surrogate; UTF-8 text cannot
    tokenizer = built(name)[0]
    assert tokenizer.encode("\ud800 hi \udfff", add_special=False) == tokenizer.encode("\ufffd hi \ufffd",
                                                                                      add_special=False)


@slow
def test_special_tokens(built):
    smollm2 = built("smollm2")[0]
    ids = smollm2.encode("<|im_start|>user\nHi<|im_end|>", parse_special=True)
    assert smollm2.is_special(1) and not smollm2.is_special(ids[1])
    assert smollm2.decode(ids) == "<|im_start|>user\nHi<|im_end|>"
    assert smollm2.decode(ids, skip_special=True) == "user\nHi"
    decoder = smollm2.decoder(skip_special=True)
    assert "".join(decoder.feed(i) for i in ids) == "user\nHi"
    assert smollm2.token_text(198) == "Ċ" and smollm2.token_bytes(198) == b"\n"


@slow
def test_token_ids_are_checked(built):
    smollm2 = built("smollm2")[0]
    for bad in (-1, smollm2.n_vocab):
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            smollm2.decode([bad])
        with pytest.raises(TokenizerError):
            smollm2.decoder().feed(bad)


# --- hand-built vocabularies -------------------------------------------------------------------

def _gpt2_byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode, written out independently of janlib: byte -> stand-in character."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    moved = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(moved)}
    return [table[b] for b in range(256)]


def _byte_level_metadata(pre: str, merges: list[str], extra_tokens: tuple[str, ...] = ()) -> dict:
    """A gpt2 vocabulary: the 256 byte tokens (id = byte), the merge results in order, extra_tokens."""
    tokens = _gpt2_byte_chars() + [m.replace(" ", "") for m in merges] + list(extra_tokens) + ["<|endoftext|>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [NORMAL] * (len(tokens) - 1) + [CONTROL],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 1,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }


_DIGIT_MERGES = ["1 2", "12 3", "123 4", "Ġ Ġ", "h e", "he l", "hel l", "hell o", "Ġ hello", "' s", "Ġ 1"]
_PRE_CORPUS = ["1234", "hello hello's", " 1234 12", "a  \n\n b\t\t\n", "$x+=y<=>z^~|", "A1b22c333d4444",
               "héllo 你好 1.5"]


@pytest.mark.parametrize(("pre", "expected"), [
    ("smollm", [ord("1"), ord("2"), ord("3"), ord("4")]),  # digits one by one
    ("qwen2", [ord("1"), ord("2"), ord("3"), ord("4")]),
    ("llama-bpe", [257, ord("4")]),  # groups of up to three digits
    ("default", [257, ord("4")]),
    ("gpt-2", [258]),  # a digit run is one piece
    ("gpt2", [258]),
])
def test_pre_tokenizer_digit_splits(pre, expected):
    tokenizer = Tokenizer.from_metadata(_byte_level_metadata(pre, _DIGIT_MERGES))
    assert tokenizer.token_text(257) == "123" and tokenizer.token_text(258) == "1234"
    assert tokenizer.encode("1234", add_special=False) == expected


def test_llama3_keeps_whole_vocab_words_without_merges():
    # "ab" is a token but no merge builds it: llama3's ignore_merges still picks it
    metadata = _byte_level_metadata("llama3", _DIGIT_MERGES, extra_tokens=("ab",))
    ab = metadata["tokenizer.ggml.tokens"].index("ab")
    assert Tokenizer.from_metadata(metadata).encode("ab") == [metadata["tokenizer.ggml.bos_token_id"], ab]
    metadata["tokenizer.ggml.pre"] = "gpt-2"
    assert Tokenizer.from_metadata(metadata).encode("ab") == [ord("a"), ord("b")]


def _write_vocab_gguf(path, metadata: dict) -> None:
    """A vocabulary-only llama GGUF (hyperparameters just large enough for llama.cpp to load it)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
        writer.add_uint32(f"llama.{key}", 8)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _assert_same_ids_as_llama_cpp(tmp_path, metadata: dict, corpus: list[str]) -> None:
    """Write metadata as a GGUF; janlib (reading it back) and llama.cpp must agree on it."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = tmp_path / "vocab.gguf"
    _write_vocab_gguf(path, metadata)
    tokenizer = Tokenizer.from_metadata(load_gguf(path).metadata)
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    _assert_encodes_like(tokenizer, llama, corpus)
    assert tokenizer.add_bos == llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llama.model))


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "smollm", "starcoder", "dbrx"])
def test_pre_tokenizers_equal_llama_cpp(tmp_path, pre):
    _assert_same_ids_as_llama_cpp(tmp_path, _byte_level_metadata(pre, _DIGIT_MERGES), _PRE_CORPUS + ["<|endoftext|>1"])


def _spm_metadata(**extra) -> dict:
    """A small SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then scored pieces."""
    pieces = {"▁": -10.0, "a": -10.0, "b": -10.0, "▁a": -1.0, "ab": -2.0, "▁ab": -3.0, "▁▁": -4.0}
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + list(pieces.values()),
        "tokenizer.ggml.token_type": [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(pieces),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        **extra,
    }


def test_sentencepiece_rules():
    tokenizer = Tokenizer.from_metadata(_spm_metadata())
    piece = {text: i for i, text in enumerate(_spm_metadata()["tokenizer.ggml.tokens"])}
    # the dummy prefix makes "ab ab" "▁ab▁ab"; "▁a" (best score) merges first, then "▁ab"
    assert tokenizer.encode("ab ab") == [1, piece["▁ab"], piece["▁ab"]]
    # no token for "é": its UTF-8 bytes as byte tokens
    assert tokenizer.encode("é", add_special=False) == [piece["▁"], 3 + 0xC3, 3 + 0xA9]
    # a fragment after a special token gets the prefix too, as in llama.cpp
    assert tokenizer.encode("<s>ab", add_special=False, parse_special=True) == [1, piece["▁ab"]]
    assert tokenizer.decode(tokenizer.encode("ab ab", add_special=False)) == "ab ab"
    assert tokenizer.decode(tokenizer.encode("ab  é"), skip_special=True) == "ab  é"
    assert tokenizer.token_bytes(3 + 0xC3) == b"\xc3" and tokenizer.token_bytes(piece["▁ab"]) == b" ab"
    assert tokenizer.eos_token_ids == {2}
    without_prefix = Tokenizer.from_metadata(_spm_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    assert without_prefix.encode("ab ab", add_special=False) == [piece["ab"], piece["▁ab"]]


@pytest.mark.parametrize("add_space_prefix", [True, False])
def test_sentencepiece_equals_llama_cpp(tmp_path, add_space_prefix):
    metadata = _spm_metadata(**{"tokenizer.ggml.add_space_prefix": add_space_prefix})
    corpus = ["ab ab", "  ab", "é a b", "<s>ab</s> ab", "abab  ", "", "b"]
    _assert_same_ids_as_llama_cpp(tmp_path, metadata, corpus)


def test_unsupported_vocabularies_are_named():
    with pytest.raises(UnsupportedError, match=r"tokenizer.ggml.pre 'klingon' is not supported; supported: .*smollm"):
        Tokenizer.from_metadata(_byte_level_metadata("klingon", []))
    with pytest.raises(UnsupportedError, match="tokenizer.ggml.model 't5' is not supported; supported: .*'bert'"):
        Tokenizer.from_metadata(_spm_metadata(**{"tokenizer.ggml.model": "t5"}))
    with pytest.raises(TokenizerError, match="duplicate"):
        Tokenizer.from_metadata(_spm_metadata(**{"tokenizer.ggml.tokens": ["a"] * 266}))
    with pytest.raises(TokenizerError, match="bos_token_id is not set"):
        Tokenizer.from_metadata(_byte_level_metadata("llama-bpe", []) | {"tokenizer.ggml.bos_token_id": 10**6})
