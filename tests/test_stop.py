"""Stop strings over streamed pieces: no stop text leaks, nothing else is lost."""

from __future__ import annotations

from hypothesis import given, strategies as st

from janlib.stop import IndentLimit, StopStringFilter


def run(pieces, stop):
    f = StopStringFilter(stop)
    out = "".join(f.feed(p) for p in pieces)
    return out + f.flush(), f.stopped


def test_stop_split_across_pieces_never_leaks():
    emitted = []
    f = StopStringFilter(["</answer>"])
    for piece in ["The answer is 4", "</ans", "wer> and more"]:
        emitted.append(f.feed(piece))
    assert emitted == ["The answer is 4", "", ""]
    assert f.stopped and f.flush() == ""


def test_held_text_released_when_it_is_not_a_stop():
    f = StopStringFilter(["STOP"])
    assert f.feed("a ST") == "a "
    assert f.feed("x") == "STx"
    assert not f.stopped


def test_earliest_of_several_stops_wins():
    assert run(["xx yy zz"], ["zz", "yy"]) == ("xx ", True)


def test_a_match_waits_for_a_longer_stop_that_starts_earlier():
    assert run(["aS", "S"], ["S", "aSS"]) == ("", True)  # "aSS" from 0, not "S" from 1
    assert run(["aS", "b"], ["S", "aSS"]) == ("a", True)  # "aSS" never came: "S" from 1
    assert run(["aS"], ["S", "aSS"]) == ("a", True)  # the end settles it


def test_flush_releases_a_partial_match_at_the_end():
    assert run(["abc S", "TO"], ["STOP"]) == ("abc STO", False)


@given(st.text(alphabet="abS", max_size=30), st.lists(st.integers(0, 30), max_size=6),
       st.lists(st.text(alphabet="abS", min_size=1, max_size=4), max_size=3))
def test_matches_cutting_the_whole_text(text, cuts, stop):
    cuts = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    expected = text[:min(hits)] if hits else text
    assert run(pieces, stop) == (expected, bool(hits))


def indent_run(pieces, n_indent):
    f = IndentLimit(n_indent)
    out = "".join(f.feed(p) for p in pieces)
    return out + f.flush(), f.stopped


def test_indent_limit_cuts_the_first_shallow_line():
    code = "    x = 1\n    y = 2\nprint(x)\n"
    assert indent_run([code], 4) == ("    x = 1\n    y = 2\n", True)
    assert indent_run(list(code), 4) == ("    x = 1\n    y = 2\n", True)  # one character at a time
    assert indent_run([code], 0) == (code, False)


def test_indent_limit_ignores_the_first_line_and_holds_whitespace():
    f = IndentLimit(2)
    assert f.feed("a\n") == "a\n"
    assert f.feed("  ") == ""          # indentation alone does not decide yet
    assert f.feed(" b\nc") == "   b\n"
    assert f.stopped and f.flush() == ""


def test_indent_limit_stops_on_an_empty_line_as_llama_cpp():
    assert indent_run(["  a\n\n  b"], 2) == ("  a\n", True)
