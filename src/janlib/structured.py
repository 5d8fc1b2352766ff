"""Structured output: token masks that make generations follow a GBNF grammar or a JSON schema.

The engine is llguidance. GBNF (llama.cpp's notation) is translated here to llguidance's Lark
dialect, with every terminal a single character: llguidance's lexer is greedy, so a multi-character
lexeme (a literal-only rule turned into a token, as llguidance's own GBNF converter does, or a
literal that is a prefix of another) could reject strings the grammar allows. Single-character
lexemes leave all the structure to the Earley parser, which gives GBNF's exact meaning.

A grammar or schema that cannot be compiled raises GrammarError; it never runs unconstrained."""

from __future__ import annotations

import json
import re
import weakref
from typing import Any

import llguidance
import numpy as np

from janlib.errors import JanlibError

__all__ = ["GrammarError", "Constraint", "gbnf_to_lark"]


class GrammarError(JanlibError, ValueError):
    """A grammar, schema or response_format that cannot be used; .field names which."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


# bounds on compile time and per-token work: a pathological grammar fails fast with GrammarError
_LIMITS = dict(max_items_in_row=2000, initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000,
               step_max_items=50_000, max_lexer_states=100_000, max_grammar_size=200_000,
               verbose_errors=False)
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_GRAMMAR_CHARS = 1_000_000
_MAX_DEPTH = 200


def _limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**_LIMITS)


# ---------------------------------------------------------------- GBNF -> Lark translation

class _GbnfParser:
    """llama.cpp's GBNF grammar parser (grammar-parser.cpp), emitting Lark."""

    def __init__(self, text: str):
        self.s = text
        self.names: dict[str, str] = {}
        self.refs: dict[str, int] = {}  # referenced rule -> first position
        self.rules: dict[str, str] = {}

    def error(self, pos: int, message: str) -> GrammarError:
        line = self.s.count("\n", 0, pos) + 1
        col = pos - (self.s.rfind("\n", 0, pos) + 1) + 1
        line_text = self.s.splitlines()[line - 1] if self.s.splitlines()[line - 1:line] else ""
        near = repr(self.s[pos:pos + 20]) if pos < len(self.s) else "end of grammar"
        return GrammarError("grammar", f"{message} at line {line}, column {col} (near {near}): {line_text.strip()[:80]!r}")

    def cur(self, pos: int) -> str:
        return self.s[pos] if pos < len(self.s) else ""

    def space(self, pos: int, newline_ok: bool) -> int:
        s = self.s
        while pos < len(s):
            c = s[pos]
            if c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            elif c == "#":
                while pos < len(s) and s[pos] not in "\r\n":
                    pos += 1
            else:
                break
        return pos

    def name(self, pos: int) -> tuple[str, int]:
        end = pos
        while end < len(self.s) and (self.s[end].isascii() and (self.s[end].isalnum() or self.s[end] in "-_")):
            end += 1
        if end == pos:
            raise self.error(pos, "expecting a rule name")
        return self.s[pos:end], end

    def lark_name(self, name: str) -> str:
        if name not in self.names:
            self.names[name] = f"g{len(self.names)}_" + "".join(c if c.isalnum() else "_" for c in name.lower())
        return self.names[name]

    def char(self, pos: int) -> tuple[int, int]:
        """One (possibly escaped) character of a literal or class: (code point, next pos)."""
        s = self.s
        if pos >= len(s):
            raise self.error(pos, "unexpected end of grammar")
        if s[pos] != "\\":
            return ord(s[pos]), pos + 1
        e = self.cur(pos + 1)
        digits = {"x": 2, "u": 4, "U": 8}.get(e)
        if digits:
            hexs = s[pos + 2:pos + 2 + digits]
            if len(hexs) != digits or any(c not in "0123456789abcdefABCDEF" for c in hexs):
                raise self.error(pos, f"expecting {digits} hex digits after \\{e}")
            cp = int(hexs, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise self.error(pos, f"\\{e}{hexs} is not a Unicode scalar value")
            return cp, pos + 2 + digits
        simple = {"t": 9, "n": 10, "r": 13, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45, "^": 94}
        if e in simple:
            return simple[e], pos + 2
        raise self.error(pos, f"unknown escape \\{e}" if e else "unexpected end of grammar after \\")

    @staticmethod
    def lit(cp: int) -> str:
        c = chr(cp)
        if c.isascii() and c.isprintable() and c not in '"\\':
            return f'"{c}"'
        return f"/\\x{{{cp:x}}}/"

    def parse(self) -> str:
        if len(self.s) > _MAX_GRAMMAR_CHARS:
            raise GrammarError("grammar", f"the grammar is longer than {_MAX_GRAMMAR_CHARS} characters")
        pos = self.space(0, True)
        while pos < len(self.s):
            name, pos = self.name(pos)
            pos = self.space(pos, False)
            if not self.s.startswith("::=", pos):
                raise self.error(pos, "expecting ::=")
            pos = self.space(pos + 3, True)
            body, pos = self.alternates(pos, nested=False)
            self.rules[self.lark_name(name)] = body  # a second definition replaces the first, as in llama.cpp
            self.defined = getattr(self, "defined", set()) | {name}
            if pos < len(self.s):
                if self.s[pos] == "\r":
                    pos += 1
                if self.cur(pos) == "\n":
                    pos += 1
                elif pos < len(self.s):
                    raise self.error(pos, "expecting newline or end")
            pos = self.space(pos, True)
        defined = getattr(self, "defined", set())
        for ref, at in self.refs.items():
            if ref not in defined:
                raise self.error(at, f"undefined rule identifier '{ref}'")
        self.check_depth()
        if "root" not in defined:
            raise GrammarError("grammar", "the grammar does not define the start rule 'root'")
        lines = ["start: " + self.names["root"]]
        lines += [f"{n}: {body}" for n, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    def check_depth(self) -> None:
        """Refuse rule chains deeper than _MAX_DEPTH: llguidance recurses on them (a crash, not an error)."""
        deps = {n: set(re.findall(r"\bg\d+_\w*", body)) for n, body in self.rules.items()}
        depth: dict[str, int] = {}
        for root in deps:
            stack = [(root, iter(deps[root]))]
            on_path = {root}
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    on_path.discard(node)
                    depth[node] = 1 + max((depth.get(c, 0) for c in deps[node] if c not in on_path), default=0)
                    if depth[node] > _MAX_DEPTH:
                        raise GrammarError("grammar", f"rules nest deeper than {_MAX_DEPTH} levels")
                elif child not in depth and child not in on_path and child in deps:
                    on_path.add(child)
                    stack.append((child, iter(deps[child])))

    def alternates(self, pos: int, nested: bool) -> tuple[str, int]:
        alts = []
        seq, pos = self.sequence(pos, nested)
        alts.append(seq)
        while self.cur(pos) == "|":
            pos = self.space(pos + 1, True)
            seq, pos = self.sequence(pos, nested)
            alts.append(seq)
        return " | ".join(alts), pos

    def sequence(self, pos: int, nested: bool) -> tuple[str, int]:
        items: list[str] = []
        s = self.s
        while pos < len(s):
            c = s[pos]
            start = pos
            if c == '"':
                pos += 1
                chars = []
                while self.cur(pos) != '"':
                    if pos >= len(s):
                        raise self.error(start, "unterminated literal")
                    cp, pos = self.char(pos)
                    chars.append(self.lit(cp))
                pos += 1
                items.append("(" + " ".join(chars) + ")" if len(chars) > 1 else (chars[0] if chars else '""'))
            elif c == "[":
                pos += 1
                negated = self.cur(pos) == "^"
                if negated:
                    pos += 1
                parts = []
                while self.cur(pos) != "]":
                    if pos >= len(s):
                        raise self.error(start, "unterminated character class")
                    lo, pos = self.char(pos)
                    if self.cur(pos) == "-" and self.cur(pos + 1) not in ("]", ""):
                        hi, pos = self.char(pos + 1)
                        if hi < lo:
                            raise self.error(start, "character class range out of order")
                        parts.append(f"\\x{{{lo:x}}}-\\x{{{hi:x}}}")
                    else:
                        parts.append(f"\\x{{{lo:x}}}")
                pos += 1
                if not parts:
                    if not negated:
                        raise self.error(start, "empty character class")
                    items.append("/(?s:.)/")
                else:
                    items.append(f"/[{'^' if negated else ''}{''.join(parts)}]/")
            elif c == ".":
                pos += 1
                items.append("/(?s:.)/")  # any character, newline included, as in llama.cpp
            elif c == "(":
                self.nesting = getattr(self, "nesting", 0) + 1
                if self.nesting > _MAX_DEPTH:
                    raise self.error(pos, f"groups nest deeper than {_MAX_DEPTH} levels")
                pos = self.space(pos + 1, True)
                body, pos = self.alternates(pos, nested=True)
                if self.cur(pos) != ")":
                    raise self.error(pos, "expecting ')'")
                pos += 1
                self.nesting -= 1
                items.append(f"({body})")
            elif c.isascii() and (c.isalnum() or c in "-_"):
                name, pos = self.name(pos)
                self.refs.setdefault(name, start)
                items.append(self.lark_name(name))
            elif c in "*+?":
                if not items:
                    raise self.error(pos, f"expecting an item before '{c}'")
                items[-1] = f"({items[-1]}){c}"
                pos += 1
            elif c == "{":
                if not items:
                    raise self.error(pos, "expecting an item before '{'")
                pos = self.space(pos + 1, nested)
                lo, pos = self.integer(pos, default=0)
                pos = self.space(pos, nested)
                hi: int | None = lo
                if self.cur(pos) == ",":
                    pos = self.space(pos + 1, nested)
                    hi, pos = self.integer(pos, default=None)
                    pos = self.space(pos, nested)
                if self.cur(pos) != "}":
                    raise self.error(pos, "expecting '}' in a repetition")
                pos += 1
                if hi is not None and hi < lo:
                    raise self.error(start, f"repetition {{{lo},{hi}}} has max < min")
                if hi == 0:
                    items[-1] = '""'
                elif hi is None:
                    items[-1] = f"({items[-1]}){{{lo},}}" if lo else f"({items[-1]})*"
                else:
                    items[-1] = f"({items[-1]}){{{lo},{hi}}}"
            else:
                break
            pos = self.space(pos, nested)
        return (" ".join(items) if items else '""'), pos

    def integer(self, pos: int, default: int | None) -> tuple[int | None, int]:
        end = pos
        while end < len(self.s) and self.s[end] in "0123456789":
            end += 1
        if end == pos:
            if default is None and self.cur(pos) == "}":
                return None, pos
            if default == 0 and self.cur(pos) == ",":
                return 0, pos
            raise self.error(pos, "expecting an integer")
        n = int(self.s[pos:end])
        if n > 100_000:
            raise self.error(pos, f"repetition count {n} is too large")
        return n, end


def gbnf_to_lark(text: str) -> str:
    """llguidance Lark for a llama.cpp GBNF grammar; GrammarError (with the position) when invalid."""
    if not isinstance(text, str):
        raise GrammarError("grammar", f"the grammar must be a string, got {type(text).__name__}")
    return _GbnfParser(text).parse()


# ---------------------------------------------------------------- tokenizer data

class _TokenSource:
    """What llguidance.TokenizerWrapper reads from a janlib Tokenizer."""

    def __init__(self, tokenizer, n_vocab: int):
        self._tok = tokenizer
        eos = sorted(tokenizer.eos_token_ids) or [tokenizer.eos_id or 0]
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id in tokenizer.eos_token_ids else eos[0]
        self.bos_token_id = tokenizer.bos_id
        n = tokenizer.n_vocab
        self.tokens = [tokenizer.token_bytes(i) for i in range(n)] + [b""] * (n_vocab - n)
        self.special_token_ids = [i for i in range(n) if tokenizer.is_special(i)] + list(range(n, n_vocab))

    def __call__(self, text: str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tok.encode(text, add_special=False)


_LL_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict[int, llguidance.LLTokenizer]]" = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer, n_vocab: int | None = None) -> llguidance.LLTokenizer:
    """The llguidance tokenizer for a janlib Tokenizer, built once and cached."""
    n_vocab = n_vocab or tokenizer.n_vocab
    per = _LL_TOKENIZERS.setdefault(tokenizer, {})
    if n_vocab not in per:
        eos = sorted(tokenizer.eos_token_ids) or None
        per[n_vocab] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenSource(tokenizer, n_vocab)),
                                              n_vocab=n_vocab, eos_token=eos)
    return per[n_vocab]


def _tokenizer_of(target) -> tuple[Any, int]:
    tok = getattr(target, "tokenizer", None)
    if tok is not None and hasattr(target, "n_vocab"):  # a janlib Model
        return tok, int(target.n_vocab)
    return target, int(target.n_vocab)


# ---------------------------------------------------------------- the constraint

class Constraint:
    """One generation's grammar state: the allowed-token mask before each draw, advanced by accept."""

    def __init__(self, lark_or_grammar: str, target, field: str = "grammar"):
        tokenizer, n_vocab = _tokenizer_of(target)
        self.field = field
        self.n_vocab = n_vocab
        self._eos = np.fromiter(sorted(tokenizer.eos_token_ids), dtype=np.int64)
        try:
            matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, n_vocab), lark_or_grammar, log_level=0,
                                           limits=_limits())
        except (ValueError, TypeError, RuntimeError) as e:
            raise GrammarError(field, str(e)) from None
        if matcher.is_error():
            raise GrammarError(field, matcher.get_error())
        self._matcher = matcher
        self._bitmask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    @classmethod
    def from_gbnf(cls, text: str, target) -> Constraint:
        """A llama.cpp GBNF grammar (start rule ``root``) for a janlib Model (or Tokenizer)."""
        return cls(gbnf_to_lark(text), target, "grammar")

    @classmethod
    def from_json_schema(cls, schema: dict | str | bool, target, field: str = "json_schema") -> Constraint:
        """A JSON schema (dict or its JSON text); unsupported keywords are an error, never ignored."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(field, f"the schema is not valid JSON: {e}") from None
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise GrammarError(field, f"the schema must be a JSON object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=dict(_JSON_OPTIONS))
        except (ValueError, TypeError, RuntimeError) as e:
            raise GrammarError(field, str(e)) from None
        return cls(grammar, target, field)

    @classmethod
    def from_response_format(cls, obj: Any, target) -> Constraint | None:
        """An OpenAI response_format: None for {"type": "text"}, else the constraint."""
        field = "response_format"
        if not isinstance(obj, dict):
            raise GrammarError(field, f"must be an object, got {type(obj).__name__}")
        kind = obj.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.from_json_schema(obj.get("schema") or {"type": "object"}, target, field)
        if kind == "json_schema":
            spec = obj.get("json_schema")
            if not isinstance(spec, dict):
                raise GrammarError(field, "type 'json_schema' needs a 'json_schema' object")
            schema = spec.get("schema", {})
            return cls.from_json_schema(schema, target, field)
        raise GrammarError(field, f"unknown type {kind!r}; expected 'text', 'json_object' or 'json_schema'")

    def allowed_mask(self) -> np.ndarray:
        """uint8 (n_vocab,): 1 for the tokens the grammar allows next (end-of-generation tokens
        only where the grammar accepts)."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        if m.is_error():
            raise GrammarError(self.field, m.get_error())
        mask = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:self.n_vocab]
        if not mask.any():
            raise GrammarError(self.field, "the grammar allows no token here")
        return mask

    def accept(self, token: int) -> None:
        """Advance past a drawn token (one the last mask allowed)."""
        if not self._matcher.consume_token(int(token)):
            raise GrammarError(self.field, self._matcher.get_error() or f"token {token} is not allowed here")

    def is_accepting(self) -> bool:
        """True when the text so far is a complete match (generation may end here)."""
        return self._matcher.is_accepting()

    def is_stopped(self) -> bool:
        """True when the grammar is complete: nothing more can follow."""
        return self._matcher.is_stopped()

    def copy(self) -> Constraint:
        """An independent constraint in the same state."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._matcher = self._matcher.deep_copy()
        twin._bitmask = np.zeros_like(self._bitmask)
        return twin

    def reset(self) -> None:
        self._matcher.reset()
