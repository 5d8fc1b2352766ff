"""Structured output: GBNF translation, JSON schemas, and constrained generation with SmolLM2."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import janlib
from janlib.gguf import load_gguf
from janlib.sampling import SamplingParams
from janlib.structured import Constraint, GrammarError, gbnf_to_lark
from janlib.tokenizer import Tokenizer


# ------------------------------------------------------------ translation (no model)

@pytest.mark.parametrize("bad, words", [
    ('root ::= foo', ["undefined rule", "foo", "line 1, column 10"]),
    ('root ::= "abc', ["unterminated literal"]),
    ('x ::= "a"', ["root"]),
    ('root ::= [b-a]', ["range"]),
    ('root ::= "\\q"', ["unknown escape"]),
    ('root ::= "\\x4"', ["hex digits"]),
    ('root ::= "\\UFFFFFFFF"', ["Unicode"]),
    ('root ::= "a"{3,1}', ["max < min"]),
    ('root ::= "a"{}', ["integer"]),
    ('root ::= * "a"', ["before"]),
    ('root ::= ("a"', ["')'"]),
    ('root "a"', ["::="]),
    ('root ::= []', ["empty character class"]),
    ('root ::= "a"\nb ::= "x" )', ["newline"]),
])
def test_bad_gbnf_is_a_grammar_error_with_position(bad, words):
    with pytest.raises(GrammarError) as info:
        gbnf_to_lark(bad)
    assert info.value.field == "grammar"
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_translation_is_character_level():
    lark = gbnf_to_lark('root ::= word "x"\nword ::= "ab" | [a-x]+  # comment\n')
    assert lark.startswith("start: ")
    assert '"a" "b"' in lark  # literals are split into single characters, never greedy lexemes


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('root::= |()[]^-*+?{},."\\xuU0123456789abcAZ#\n\t\u4e2d')), max_size=60))
def test_fuzzed_gbnf_translation_only_raises_grammar_error(text):
    try:
        gbnf_to_lark("root ::= " + text)
    except GrammarError:
        pass


def test_response_format_unknown_type():
    with pytest.raises(GrammarError) as info:
        Constraint.from_response_format({"type": "yaml"}, None)
    assert info.value.field == "response_format" and "yaml" in str(info.value)


# ------------------------------------------------------------ constructs, against the real vocabulary

@pytest.fixture(scope="module")
def tok(smollm2_path):
    return Tokenizer.from_metadata(load_gguf(smollm2_path).metadata)


def matches(tok, grammar: str, text: str) -> bool:
    """Whether text (tokenized as the model would) is a complete match of the GBNF grammar."""
    c = Constraint.from_gbnf(grammar, tok)
    for t in tok.encode(text, add_special=False):
        if c.is_stopped() or not c.allowed_mask()[t]:
            return False
        c.accept(t)
    return c.is_accepting()


CASES = [
    # literal-only rules must not become greedy lexemes: "ab" "x" and the class must both work
    ('root ::= w "x"\nw ::= [a-x]+ | "ab"', ["abx", "ax", "xx"], ["ab", "abxy"]),
    ('root ::= ("a" | "ab") "bc"', ["abc", "abbc"], ["ab", "ac"]),
    (r'root ::= "\x41\u4e2d\U0001F600\t\n\\\""', ['A中😀\t\n\\"'], ["A"]),
    ('root ::= "a"{3}', ["aaa"], ["aa", "aaaa"]),
    ('root ::= "a"{2,}', ["aa", "aaaaa"], ["a"]),
    ('root ::= "a"{1,3}', ["a", "aaa"], ["", "aaaa"]),
    ('root ::= "a"{,2} "b"', ["b", "ab", "aab"], ["aaab"]),
    ('root ::= "a"* "b"+ "c"?', ["b", "aabbc", "bc"], ["a", "cc"]),
    ('root ::= [a-cx] [^a-z0-9] .', ["a-\n", "xZ中"], ["aa1", "d--"]),
    ('root ::= ("ab" | "c")+ # comment\n', ["abcab", "c"], ["a", "abb"]),
    ('root ::= "x" opt "y"\nopt ::= "z" | ', ["xy", "xzy"], ["xzzy"]),
    ('root ::= [\u4e00-\u9fff]{2,4}', ["中文字", "中文"], ["中", "abc"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("grammar, good, bad", CASES)
def test_gbnf_constructs_mean_what_gbnf_says(tok, grammar, good, bad):
    for text in good:
        assert matches(tok, grammar, text), (grammar, text)
    for text in bad:
        assert not matches(tok, grammar, text), (grammar, text)


@pytest.mark.slow
def test_end_of_generation_only_where_the_grammar_accepts(tok):
    c = Constraint.from_gbnf('root ::= "a" [b-z]*', tok)
    eos = sorted(tok.eos_token_ids)
    assert not c.allowed_mask()[eos].any()
    c.accept(tok.encode("a", add_special=False)[0])
    assert c.is_accepting() and c.allowed_mask()[eos].all()


@pytest.mark.slow
@pytest.mark.parametrize("schema, field", [
    ("{not json", "json_schema"),
    ({"type": "object", "if": {"type": "object"}}, "json_schema"),
    ({"type": "nonsense"}, "json_schema"),
    (["a"], "json_schema"),
])
def test_bad_schemas_are_grammar_errors(tok, schema, field):
    with pytest.raises(GrammarError) as info:
        Constraint.from_json_schema(schema, tok)
    assert info.value.field == field and info.value.reason


@pytest.mark.slow
def test_response_format(tok):
    assert Constraint.from_response_format({"type": "text"}, tok) is None
    assert Constraint.from_response_format({"type": "json_object"}, tok) is not None
    c = Constraint.from_response_format({"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}, tok)
    assert c.field == "response_format"
    with pytest.raises(GrammarError) as info:
        Constraint.from_response_format({"type": "json_schema", "json_schema": {"schema": {"type": 3}}}, tok)
    assert info.value.field == "response_format"


@pytest.mark.slow
@pytest.mark.parametrize("grammar", [
    "root ::= " + " ".join(f'"{c}"{{0,99999}}' for c in "abcdefgh"),
    'root ::= ((("a"{0,1000}){0,1000}){0,1000}){0,1000}',
    "root ::= " + "(" * 5000 + '"a"' + ")" * 5000,
    "root ::= r0\n" + "\n".join(f"r{i} ::= r{i + 1} r{i + 1} | \"x\"" for i in range(3000)) + '\nr3000 ::= "y"',
])
def test_pathological_grammar_is_bounded(tok, grammar):
    start = time.perf_counter()
    try:
        Constraint.from_gbnf(grammar, tok).allowed_mask()
    except GrammarError:
        pass
    assert time.perf_counter() - start < 10


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list('root::= |()[]^-*+?{},."\\xu0123456789abc#\n')), max_size=40))
def test_fuzzed_grammars_never_crash(tok, text):
    try:  # a typed error, at build time or at the first mask (llguidance checks some grammars lazily), is fine
        Constraint.from_gbnf("root ::= " + text, tok).allowed_mask()
    except GrammarError:
        pass


# ------------------------------------------------------------ generation with SmolLM2

@pytest.fixture(scope="module")
def model(smollm2_path):
    return janlib.Model(str(smollm2_path), n_threads=2)


SAMPLINGS = [None, SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.5, seed=7)]


def _parse_c(text: str) -> None:
    """A recursive check of the C-like language below."""
    pos = 0

    def eat(pattern):
        nonlocal pos
        m = re.compile(pattern).match(text, pos)
        assert m, (text, pos, pattern)
        pos = m.end()
        return m.group()

    def stmt():
        nonlocal pos
        if text.startswith("{", pos):
            eat(r"\{")
            while not text.startswith("}", pos):
                stmt()
            eat(r"\}")
        elif text.startswith("if", pos):
            eat(r"if \("), eat(r"[a-z]+ [<>=] [0-9]+"), eat(r"\) "), stmt()
        else:
            eat(r"[a-z]+ = [0-9]+;")

    stmt()
    assert pos == len(text), text


GENERATIONS = [
    ("Write an arithmetic expression.",
     'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= num | "(" expr ")"\nnum ::= [1-9] [0-9]{0,2}',
     lambda s: eval(s, {"__builtins__": {}}) is not None and re.fullmatch(r"[0-9+\-()]+", s)),
    ("List three fruits.", 'root ::= item{3}\nitem ::= "- " [a-z]{1,12} "\\n"',
     lambda s: re.fullmatch(r"(- [a-z]{1,12}\n){3}", s)),
    ("Write a tiny program.",
     'root ::= stmt\nstmt ::= "{" stmt* "}" | "if (" [a-z]+ " " [<>=] " " [0-9]+ ") " stmt | [a-z]+ " = " [0-9]+ ";"',
     lambda s: _parse_c(s) is None),
    ("Say hello in Chinese.", 'root ::= [\\u4e00-\\u9fff]{2,6} "。"', lambda s: re.fullmatch(r"[\u4e00-\u9fff]{2,6}。", s)),
    ("Give a code.", r'root ::= [A-Z]{2} "-" [^a-z\n -]{3} "\x21"', lambda s: re.fullmatch(r"[A-Z]{2}-[^a-z\n -]{3}!", s)),
    ("Give a JSON list of numbers.",
     'root ::= "[" ws (num ("," ws num)*)? "]"\nnum ::= "-"? [0-9]{1,4}\nws ::= " "?',
     lambda s: isinstance(json.loads(s), list)),
]


@pytest.mark.slow
@pytest.mark.parametrize("prompt, grammar, check", GENERATIONS)
def test_generations_follow_the_grammar(model, prompt, grammar, check):
    checked = 0
    for sampling in SAMPLINGS:
        _, ids = model.chat_prompt([{"role": "user", "content": prompt}])
        gen = model.generate(ids, max_tokens=120, grammar=grammar, sampling=sampling)
        out = "".join(t.text for t in gen)
        if gen.finish_reason == "stop":  # an unbounded grammar may run out of tokens first
            assert check(out), (grammar, out)
            checked += 1
    assert checked, f"no generation under {grammar!r} finished within 120 tokens"


_PROP = st.sampled_from([
    {"type": "integer", "minimum": 0, "maximum": 100},
    {"type": "string", "maxLength": 12},
    {"type": "boolean"},
    {"enum": ["red", "green", "blue"]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"], "additionalProperties": False},
])
_SCHEMAS = st.dictionaries(st.sampled_from(["name", "age", "ok", "color", "items", "pos"]), _PROP,
                           min_size=1, max_size=3).flatmap(
    lambda props: st.sets(st.sampled_from(sorted(props))).map(
        lambda req: {"type": "object", "properties": props, "required": sorted(req),
                     "additionalProperties": False}))


REF_AND_ANY_OF = [
    {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                         "required": ["x", "y"], "additionalProperties": False}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
     "required": ["a", "b"], "additionalProperties": False},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}]},
                                      "w": {"oneOf": [{"const": "on"}, {"const": "off"}]}},
     "required": ["v", "w"], "additionalProperties": False},
    {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}},
     "required": ["date"], "additionalProperties": False},
]


@pytest.mark.slow
@pytest.mark.parametrize("schema", REF_AND_ANY_OF)
def test_refs_alternatives_and_patterns_validate(model, schema):
    out = model.chat([{"role": "user", "content": "Reply with a JSON object."}], max_tokens=150,
                     json_schema=schema, sampling=SamplingParams(temperature=0.8, seed=5))
    jsonschema.validate(json.loads(out), schema)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_SCHEMAS, st.integers(0, 1000))
def test_json_schema_outputs_validate(model, schema, seed):
    """Every finished document validates; one may be left unfinished only where max_tokens cut it (the
    grammar allows numbers and strings of any length, and a sampled one can run on)."""
    _, ids = model.chat_prompt([{"role": "user", "content": "Reply with a JSON object."}])
    generation = model.generate(ids, max_tokens=150, json_schema=schema,
                                sampling=SamplingParams(temperature=0.8, seed=seed))
    out = "".join(t.text for t in generation if t.text)
    try:
        document = json.loads(out)
    except json.JSONDecodeError:
        assert generation.finish_reason == "length", out
        return
    jsonschema.validate(document, schema)


@pytest.mark.slow
def test_generate_stops_when_the_grammar_is_complete(model):
    ids = model.tokenize("The answer is", add_special=False)
    gen = model.generate(ids, max_tokens=50, grammar='root ::= " yes" | " no"')
    text = "".join(t.text for t in gen)
    assert text in (" yes", " no") and gen.finish_reason == "stop"
    with pytest.raises(GrammarError):
        model.generate(ids, grammar="root ::= missing")
    with pytest.raises(ValueError):
        model.generate(ids, grammar='root ::= "a"', json_schema={"type": "object"})
    c = Constraint.from_response_format({"type": "json_object"}, model)
    gen = model.generate(ids, max_tokens=200, constraint=c)
    out = "".join(t.text for t in gen)
    assert out.startswith("{")
