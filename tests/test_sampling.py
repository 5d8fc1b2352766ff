"""The sampler chain against plain numpy references: each sampler's survivors on hand-made
logits, chain order, seeding, distributions (chi-square), mirostat's surprise, bans, masks,
reported probabilities and parameter validation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from janlib.errors import JanlibError
from janlib.sampling import Sampler, SamplingParams, SamplingParamsError, canonical_samplers

CHI2_P_MIN = 1e-4  # a correct sampler fails a chi-square test this often


def neutral(**changes) -> SamplingParams:
    """Every sampler off (no order, no penalties, temperature 1) except the given changes."""
    base = dict(samplers=[], repeat_penalty=1.0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    return SamplingParams(**{**base, **changes})


def survivors(logits, history=(), token_bytes=None, **changes) -> dict[int, float]:
    logits = np.asarray(logits, np.float32)
    s = Sampler(neutral(**changes), len(logits), token_bytes=token_bytes)
    s.accept_prompt(list(history))
    ids, probs = s.survivors(logits)
    return dict(zip(ids.tolist(), probs.tolist()))


def softmax(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def dist(ids, logits) -> dict[int, float]:
    """The draw's distribution over the surviving ids: softmax of their logits."""
    ids = list(ids)
    return dict(zip(ids, softmax(np.asarray(logits, np.float64)[ids]).tolist()))


def assert_dist(got: dict, expected: dict, tol=2e-6):
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for t, p in expected.items():
        assert got[t] == pytest.approx(p, abs=tol), t


def by_logit(logits) -> list[int]:
    """Ids best first: higher logit, then lower id."""
    return sorted(range(len(logits)), key=lambda i: (-logits[i], i))


def chi2_p_value(counts, expected_probs) -> float:
    """Upper tail of the chi-square statistic (Wilson-Hilferty approximation)."""
    n = sum(counts)
    stat = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, expected_probs))
    df = len(counts) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


LOGITS = [1.0, 3.0, 3.0, 2.0, 0.0, -1.0, 2.5, 0.5]


# ---- each sampler on its own ------------------------------------------------------------------

def test_top_k_keeps_the_k_highest_and_breaks_ties_by_lower_id():
    assert_dist(survivors(LOGITS, samplers=["top_k"], top_k=3), dist([1, 2, 6], LOGITS))
    assert_dist(survivors(LOGITS, samplers=["top_k"], top_k=2), dist([1, 2], LOGITS))
    tied = [0.0, 5.0, 1.0, 5.0, 5.0]
    assert set(survivors(tied, samplers=["top_k"], top_k=2)) == {1, 3}


def test_top_k_zero_or_beyond_the_vocabulary_keeps_everything():
    for k in (0, 100):
        assert_dist(survivors(LOGITS, samplers=["top_k"], top_k=k), dist(range(8), LOGITS))


def ref_top_p(logits, p, min_keep=0):
    probs = softmax(logits)
    order = by_logit(logits)
    total = 0.0
    for i, t in enumerate(order):
        total += probs[t]
        if total >= p and i + 1 >= min_keep:
            return order[:i + 1]
    return order


@pytest.mark.parametrize("p, min_keep", [(0.5, 0), (0.8, 0), (0.95, 0), (0.5, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, min_keep):
    got = survivors(LOGITS, samplers=["top_p"], top_p=p, min_keep=min_keep)
    assert_dist(got, dist(ref_top_p(LOGITS, p, min_keep), LOGITS))


def test_top_p_on_a_large_flat_vocabulary_widens_past_its_first_guess():
    logits = np.random.default_rng(1).normal(0, 0.3, 5000).astype(np.float32)  # nucleus >> 256
    got = survivors(logits, samplers=["top_p"], top_p=0.9)
    expected = ref_top_p(logits, 0.9)
    assert len(expected) > 1024
    # float32 running sums may settle the last place differently from float64
    assert abs(len(got) - len(expected)) <= 1 and set(got) == set(by_logit(logits)[:len(got)])


def ref_min_p(logits, p, min_keep=0):
    threshold = max(logits) + math.log(p)
    passing = [t for t in by_logit(logits) if logits[t] >= threshold]
    return passing if len(passing) >= min_keep else by_logit(logits)[:min_keep]


@pytest.mark.parametrize("p, min_keep", [(0.3, 0), (0.05, 0), (0.99, 0), (0.99, 3)])
def test_min_p_keeps_tokens_near_the_best(p, min_keep):
    got = survivors(LOGITS, samplers=["min_p"], min_p=p, min_keep=min_keep)
    assert_dist(got, dist(ref_min_p(LOGITS, p, min_keep), LOGITS))


def test_min_keep_forces_survivors_after_a_sort_too():
    # after top_k the list is sorted, which takes min_p's other path
    got = survivors(LOGITS, samplers=["top_k", "min_p"], top_k=6, min_p=0.99, min_keep=4)
    assert_dist(got, dist(by_logit(LOGITS)[:4], LOGITS))


def ref_typical(logits, p, min_keep=0):
    probs = softmax(logits)
    entropy = -sum(q * math.log(q) for q in probs if q > 0)
    order = sorted(range(len(logits)), key=lambda t: (abs(-math.log(probs[t]) - entropy), t))
    total = 0.0
    for i, t in enumerate(order):
        total += probs[t]
        if total > p and (min_keep == 0 or i + 1 >= min_keep):
            return order[:i + 1]
    return order


@pytest.mark.parametrize("p, min_keep", [(0.2, 0), (0.5, 0), (0.9, 0), (0.2, 5)])
def test_typical_p_keeps_the_tokens_closest_to_the_entropy(p, min_keep):
    got = survivors(LOGITS, samplers=["typ_p"], typical_p=p, min_keep=min_keep)
    assert_dist(got, dist(ref_typical(LOGITS, p, min_keep), LOGITS))


def test_xtc_removes_the_top_choices_but_the_least_likely_of_them():
    probs = softmax(LOGITS)
    above = [t for t in by_logit(LOGITS) if probs[t] >= 0.1]
    assert len(above) >= 3
    kept = [t for t in range(8) if t not in above[:-1]]
    assert_dist(survivors(LOGITS, samplers=["xtc"], xtc_probability=1.0, xtc_threshold=0.1), dist(kept, LOGITS))


ONE_LIKELY = [0.0, 4.0, 1.0, 2.0, 0.5, -1.0, 1.5, 0.2]  # only token 1 reaches p 0.4


@pytest.mark.parametrize("logits, changes", [
    (LOGITS, dict(xtc_probability=0.0, xtc_threshold=0.1)),              # off
    (LOGITS, dict(xtc_probability=1.0, xtc_threshold=0.6)),              # above 0.5 disables it
    (ONE_LIKELY, dict(xtc_probability=1.0, xtc_threshold=0.4)),          # nothing to exclude
    (LOGITS, dict(xtc_probability=1.0, xtc_threshold=0.1, min_keep=7)),  # fewer than min_keep left
])
def test_xtc_leaves_the_list_alone(logits, changes):
    assert_dist(survivors(logits, samplers=["xtc"], **changes), dist(range(8), logits))


def test_xtc_fires_with_its_probability():
    s = Sampler(neutral(samplers=["xtc"], xtc_probability=0.3, xtc_threshold=0.1), 8)
    logits = np.asarray(LOGITS, np.float32)
    fired = sum(len(s.survivors(logits)[0]) < 8 for _ in range(4000))
    assert abs(fired / 4000 - 0.3) < 0.03


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_temperature_scales_the_logits(t):
    got = survivors(LOGITS, samplers=["temperature"], temperature=t)
    assert_dist(got, dict(enumerate(softmax(np.asarray(LOGITS) / t).tolist())))


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_temperature_zero_or_below_is_greedy_with_the_lower_id_on_ties(t):
    assert survivors(LOGITS, samplers=["temperature"], temperature=t) == {1: 1.0}
    assert survivors([2.0] * 6, samplers=["temperature"], temperature=t) == {0: 1.0}


def test_all_equal_logits_give_a_uniform_distribution():
    got = survivors([0.5] * 10, samplers=list(canonical_samplers("kypmt")), top_k=0)
    assert_dist(got, {t: 0.1 for t in range(10)})


@pytest.mark.parametrize("t, spread, exponent", [(0.8, 0.5, 1.0), (1.0, 0.7, 2.0), (0.3, 0.5, 0.5)])
def test_dynamic_temperature_follows_the_entropy(t, spread, exponent):
    probs = softmax(LOGITS)
    entropy = -sum(q * math.log(q) for q in probs)
    low, high = max(0.0, t - spread), t + spread
    dyn = low + (high - low) * (entropy / math.log(len(LOGITS))) ** exponent
    got = survivors(LOGITS, samplers=["temperature"], temperature=t, dynatemp_range=spread,
                    dynatemp_exponent=exponent)
    assert_dist(got, dict(enumerate(softmax(np.asarray(LOGITS) / dyn).tolist())), tol=1e-5)


# ---- penalties and DRY ----------------------------------------------------------------------

def ref_penalties(logits, window, repeat, freq, present):
    out = list(logits)
    for t, count in Counter(window).items():
        out[t] = out[t] * repeat if out[t] <= 0 else out[t] / repeat
        out[t] -= count * freq + present
    return out


LOGITS_WITH_NEGATIVES = [1.0, 3.0, -2.0, 2.0, 0.0, -1.0, 2.5, 0.5]


@pytest.mark.parametrize("last_n", [3, 64, -1])
def test_penalties_touch_only_tokens_repeated_in_the_window(last_n):
    history = [2, 7, 1, 1, 3, 1, 2]
    window = history if last_n == -1 else history[-last_n:]
    changes = dict(repeat_penalty=1.5, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=last_n)
    expected = ref_penalties(LOGITS_WITH_NEGATIVES, window, 1.5, 0.25, 0.5)
    got = survivors(LOGITS_WITH_NEGATIVES, history, **changes)
    assert_dist(got, dist(range(8), expected))
    untouched = set(range(8)) - set(window)
    assert all(expected[t] == LOGITS_WITH_NEGATIVES[t] for t in untouched)


def test_penalties_follow_the_window_as_it_slides_and_off_when_zero():
    s = Sampler(neutral(repeat_penalty=2.0, repeat_last_n=2), 8)
    s.accept_prompt([1, 1, 3])  # token 1 once in the last two
    ids, probs = s.survivors(np.asarray(LOGITS, np.float32))
    expected = ref_penalties(LOGITS, [1, 3], 2.0, 0.0, 0.0)
    assert_dist(dict(zip(ids.tolist(), probs.tolist())), dist(range(8), expected))
    assert_dist(survivors(LOGITS, [1, 1, 3], repeat_penalty=2.0, repeat_last_n=0), dist(range(8), LOGITS))


def ref_dry(history, texts, multiplier, base, allowed, breakers):
    """Per-token DRY penalty by the definition: the longest suffix of the history (not reaching
    back past the latest breaker) that occurred before followed by that token."""
    n = len(history)
    if n <= allowed:
        return {}
    joined = b"".join(texts[t] for t in history)
    owner = [i for i, t in enumerate(history) for _ in texts[t]]  # the token of each byte
    best_head, best_end = -1, -1
    for b in breakers:
        start = joined.find(b)
        while start >= 0:
            head, end = owner[start], owner[start + len(b) - 1]
            if (head, end) > (best_head, best_end):
                best_head, best_end = head, end
            start = joined.find(b, start + 1)
    limit = n if best_head < 0 else n - 1 - best_end
    if limit < allowed:
        return {}
    longest = {}
    for j in range(n - 1):
        length = 0
        while length <= j and history[j - length] == history[n - 1 - length]:
            length += 1
        length = min(length, limit)
        if length >= allowed:
            t = history[j + 1]
            longest[t] = max(longest.get(t, 0), length)
    holds = {t for t, text in enumerate(texts) if any(b in text for b in breakers)}
    return {t: multiplier * base ** (length - allowed) for t, length in longest.items() if t not in holds}


DRY_TEXTS = [b"a", b"b", b"c", b"d", b"e", b":", b"x\n", b"\ny", b"q:z", b"f"]
DRY = dict(samplers=["dry"], dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2,
           dry_sequence_breakers=[":", "\n\n"])


def dry_case(history, **changes):
    params = {**DRY, **changes}
    got = survivors([0.0] * len(DRY_TEXTS), history, token_bytes=DRY_TEXTS, **params)
    last_n = params.get("dry_penalty_last_n", -1)
    penalties = ref_dry(history if last_n == -1 else history[-last_n:], DRY_TEXTS, params["dry_multiplier"], params["dry_base"],
                        params["dry_allowed_length"], [b.encode() for b in params["dry_sequence_breakers"]])
    expected = [-penalties.get(t, 0.0) for t in range(len(DRY_TEXTS))]
    assert_dist(got, dist(range(len(DRY_TEXTS)), expected), tol=1e-5)
    return penalties


def test_dry_penalty_grows_with_the_repeat_length():
    short = dry_case([0, 1, 3, 9, 9, 0, 1])            # "a b" seen before "d": length 2
    long = dry_case([0, 1, 2, 3, 9, 0, 1, 2])          # "a b c" seen before "d": length 3
    longer = dry_case([0, 1, 2, 4, 3, 9, 1, 2, 4])     # "b c e" before "d": 3; also "c e" ...
    assert short == {3: pytest.approx(0.8)}
    assert long == {3: pytest.approx(0.8 * 1.75)}
    assert longer[3] == pytest.approx(0.8 * 1.75)
    assert dry_case([0, 1, 2, 4, 3, 0, 1, 2, 4])[3] == pytest.approx(0.8 * 1.75 ** 2)


def test_dry_stops_at_a_breaker_token():
    assert dry_case([0, 1, 2, 3, 9, 0, 1, 2]) != {}
    assert dry_case([0, 1, 2, 3, 9, 0, 5, 1, 2]) == {3: pytest.approx(0.8)}   # ':' caps it at "b c"
    assert dry_case([0, 1, 2, 3, 9, 0, 1, 5, 2]) == {}                        # one token after ':'


def test_dry_finds_breakers_spelled_across_token_boundaries():
    # "\n\n" is the end of "x\n" and the start of "\ny": nothing reaches back past "\ny"
    assert dry_case([0, 1, 2, 3, 6, 7, 1, 2]) == {3: pytest.approx(0.8)}
    assert dry_case([0, 1, 2, 3, 6, 7, 2]) == {}
    assert dry_case([0, 1, 2, 3, 6, 9, 0, 1, 2]) != {}                         # "x\n" "f": no breaker
    # a breaker inside a longer token: "q:z" holds ':'
    assert dry_case([0, 1, 2, 3, 8, 1, 2]) == {3: pytest.approx(0.8)}
    assert dry_case([0, 1, 2, 3, 8, 2]) == {}


@pytest.mark.parametrize("breaker, penalty", [
    ("zzz", 0.8 * 1.75 ** 3),  # none: the whole "< br r>q b c" repeats (5 tokens)
    ("<b", 0.8 * 1.75),        # ends in "br": 3 tokens since
    ("<brr>", 0.8),            # "<" "br" "r>q", the last running on: 2 tokens since
    ("r>qb", None),            # "r>q" "b": 1 token since, under the allowed length
])
def test_dry_breakers_spelled_over_several_tokens(breaker, penalty):
    texts = [b"a", b"b", b"c", b"d", b"<", b"br", b"r>q"]
    history = [4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2]
    got = survivors([0.0] * 7, history, token_bytes=texts, **{**DRY, "dry_sequence_breakers": [breaker]})
    penalties = ref_dry(history, texts, 0.8, 1.75, 2, [breaker.encode()])
    assert penalties == ({} if penalty is None else {3: pytest.approx(penalty)})
    assert_dist(got, dist(range(7), [-penalties.get(t, 0.0) for t in range(7)]), tol=1e-5)


def test_dry_never_penalizes_a_token_holding_a_breaker():
    penalties = dry_case([0, 1, 5, 3, 0, 1], dry_sequence_breakers=["\n\n"])
    assert penalties == {5: pytest.approx(0.8)}  # ':' is no breaker here: penalized
    assert dry_case([0, 1, 5, 3, 0, 1]) == {}    # with ':' a breaker it is exempt


def test_dry_window_and_off_switches():
    history = [0, 1, 2, 3, 9, 9, 9, 0, 1, 2]
    assert dry_case(history, dry_penalty_last_n=5) == {}  # the earlier "a b c d" is out of view
    assert dry_case(history, dry_penalty_last_n=-1) != {}
    assert_dist(survivors([0.0] * 10, history, token_bytes=DRY_TEXTS, **{**DRY, "dry_multiplier": 0.0}),
                {t: 0.1 for t in range(10)})


def test_dry_needs_the_token_texts():
    with pytest.raises(ValueError, match="token_bytes"):
        Sampler(neutral(**DRY), len(DRY_TEXTS))


# ---- logit bias, bans, masks ---------------------------------------------------------------

def test_logit_bias_adds_and_false_bans():
    got = survivors(LOGITS, logit_bias={1: False, "6": 2.0, 0: -1.5})
    biased = list(LOGITS)
    biased[6] += 2.0
    biased[0] -= 1.5
    assert_dist(got, dist([0, 2, 3, 4, 5, 6, 7], biased))


def draw(sampler, logits, n):
    logits = np.asarray(logits, np.float32)
    return [sampler.sample(logits) for _ in range(n)]


def test_a_banned_token_is_never_drawn():
    logits = [0.0, 8.0, 0.5, 7.5]
    drawn = Counter(draw(Sampler(neutral(logit_bias={1: False}, seed=1), 4), logits, 10_000))
    assert drawn[1] == 0 and drawn[3] > 9000
    drawn = Counter(draw(Sampler(neutral(ignore_eos=True, seed=2), 4, eos_token_ids={1, 3}), logits, 10_000))
    assert drawn[1] == drawn[3] == 0
    drawn = Counter(draw(Sampler(neutral(seed=3), 4, eos_token_ids={1, 3}), logits, 2000))
    assert drawn[1] > 0  # eos ids are banned only with ignore_eos


def test_the_mask_constrains_until_lifted():
    s = Sampler(neutral(seed=4), 4)
    s.set_allowed_tokens(np.array([True, False, True, False]))
    assert set(draw(s, [0.0, 8.0, 0.5, 7.5], 2000)) == {0, 2}
    s.set_allowed_tokens(None)
    assert 1 in draw(s, [0.0, 8.0, 0.5, 7.5], 200)


def test_nothing_left_to_draw_is_an_error():
    s = Sampler(neutral(logit_bias={0: False, 1: False}), 2)
    with pytest.raises(ValueError, match="banned or masked"):
        s.sample(np.zeros(2, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_rejected(bad):
    with pytest.raises(ValueError, match=r"logits\[1\]"):
        Sampler(neutral(), 3).sample(np.array([0.0, bad, 1.0], np.float32))


def test_logits_of_the_wrong_shape_or_type_are_rejected():
    s = Sampler(neutral(), 3)
    with pytest.raises(ValueError):
        s.sample(np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        s.sample(np.zeros(3, np.float64))


def test_minus_infinity_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 1.0], np.float32)
    assert set(draw(Sampler(neutral(seed=5), 4), logits, 2000)) == {1, 3}


# ---- the chain ------------------------------------------------------------------------------

def test_order_matters_where_it_should():
    # min_p compares logits: after temperature 3 the spread shrinks and more tokens pass
    before = survivors(LOGITS, samplers=["min_p", "temperature"], min_p=0.3, temperature=3.0)
    after = survivors(LOGITS, samplers=["temperature", "min_p"], min_p=0.3, temperature=3.0)
    scaled = np.asarray(LOGITS) / 3.0
    assert_dist(before, dist(ref_min_p(LOGITS, 0.3), scaled))
    assert_dist(after, dist(ref_min_p(list(scaled), 0.3), scaled))
    assert set(before) != set(after)
    # top_p after top_k measures p within the k survivors, so it keeps fewer
    k_then_p = survivors(LOGITS, samplers=["top_k", "top_p"], top_k=3, top_p=0.7)
    p_then_k = survivors(LOGITS, samplers=["top_p", "top_k"], top_k=3, top_p=0.7)
    assert set(k_then_p) == {1, 2} and set(p_then_k) == {1, 2, 6}


def ref_chain(logits, top_k, top_p, min_p, temperature):
    """top_k -> top_p (over the k survivors' softmax) -> min_p -> temperature, then the draw."""
    kept = by_logit(logits)[:top_k]
    cumulative = np.cumsum(softmax(np.asarray(logits)[kept]))
    kept = kept[:int(np.searchsorted(cumulative, top_p)) + 1]
    kept = [t for t in kept if logits[t] >= logits[kept[0]] + math.log(min_p)]
    return dist(kept, np.asarray(logits) / temperature)


def test_the_default_chain_matches_its_reference():
    logits = np.random.default_rng(2).normal(0, 2, 60)
    s = Sampler(SamplingParams(seed=1), 60)  # top_k 40, top_p 0.95, min_p 0.05, temperature 0.8
    ids, probs = s.survivors(logits.astype(np.float32))
    assert_dist(dict(zip(ids.tolist(), probs.tolist())), ref_chain(logits, 40, 0.95, 0.05, 0.8), tol=1e-5)


def test_top_k_one_is_greedy():
    rng = np.random.default_rng(3)
    s = Sampler(SamplingParams(top_k=1, seed=-1, repeat_penalty=1.0), 1000)
    for _ in range(50):
        logits = rng.normal(0, 3, 1000).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))


@pytest.mark.parametrize("letters, names", [
    ("dkypmxt", ["dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]),
    ("tk", ["temperature", "top_k"]),
])
def test_samplers_by_letters(letters, names):
    assert list(canonical_samplers(letters)) == names


def test_samplers_by_llama_cpp_spellings():
    spelled = ["top-k", "typical", "typical_p", "typ", "nucleus", "top-p", "min-p", "temp", "dry", "xtc"]
    assert canonical_samplers(spelled) == ("top_k", "typ_p", "typ_p", "typ_p", "top_p", "top_p", "min_p",
                                           "temperature", "dry", "xtc")


# ---- distributions and seeds ----------------------------------------------------------------

def test_sampled_frequencies_match_the_chain_probabilities():
    logits = np.random.default_rng(4).normal(0, 1.5, 12)
    params = SamplingParams(seed=11, repeat_penalty=1.0, top_k=8, top_p=0.9, min_p=0.05, temperature=0.7)
    expected = ref_chain(logits, 8, 0.9, 0.05, 0.7)
    assert len(expected) >= 4
    counts = Counter(draw(Sampler(params, 12), logits, 20_000))
    assert set(counts) <= set(expected)
    assert chi2_p_value([counts[t] for t in expected], list(expected.values())) > CHI2_P_MIN


def test_same_seed_same_tokens_and_random_seeds_differ():
    logits = np.zeros(1000, np.float32)
    seeded = [draw(Sampler(SamplingParams(seed=123), 1000), logits, 50) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert draw(Sampler(SamplingParams(seed=124), 1000), logits, 50) != seeded[0]
    randoms = [Sampler(SamplingParams(seed=-1), 1000) for _ in range(2)]
    assert randoms[0].seed != randoms[1].seed
    assert draw(randoms[0], logits, 50) != draw(randoms[1], logits, 50)


def test_reset_replays_and_clone_continues_independently():
    logits = np.random.default_rng(5).normal(0, 1, 200).astype(np.float32)
    params = SamplingParams(seed=9, xtc_probability=0.5, dry_multiplier=0.5)
    texts = [bytes([97 + i % 26]) * (1 + i // 26) for i in range(200)]
    s = Sampler(params, 200, token_bytes=texts)
    s.accept_prompt([1, 2, 3])
    first = draw(s, logits, 30)
    fork = s.clone()
    assert draw(s, logits, 30) == draw(fork, logits, 30)
    s.reset()
    s.accept_prompt([1, 2, 3])
    assert draw(s, logits, 30) == first


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_surprise_approaches_tau(version):
    ranks = np.arange(1, 4001)
    logits = (-1.2 * np.log(ranks)).astype(np.float32)  # Zipf, as mirostat assumes
    tau = 4.0
    s = Sampler(SamplingParams(mirostat=version, mirostat_tau=tau, mirostat_eta=0.1, temperature=1.0,
                               repeat_penalty=1.0, seed=3, n_probs=1, post_sampling_probs=True), len(logits))
    surprises = []
    for _ in range(3000):
        s.sample(logits)
        surprises.append(-math.log2(s.last_probs().token_prob))
    assert np.mean(surprises[1000:]) == pytest.approx(tau, abs=0.35)


def test_mirostat_replaces_the_ordered_samplers():
    # top_k 1 would make it greedy; under mirostat it is not in the chain
    s = Sampler(SamplingParams(mirostat=2, top_k=1, temperature=1.0, repeat_penalty=1.0, seed=5), 50)
    assert len(set(draw(s, np.zeros(50, np.float32), 300))) > 1


# ---- reported probabilities -----------------------------------------------------------------

def test_n_probs_reports_the_raw_softmax_before_logit_bias():
    logits = np.asarray(LOGITS, np.float32)
    s = Sampler(SamplingParams(n_probs=3, logit_bias={1: False}, top_k=2, seed=2), 8)
    token = s.sample(logits)
    top = s.last_probs()
    raw = softmax(LOGITS)
    assert top.ids.tolist() == [1, 2, 6]
    np.testing.assert_allclose(top.probs, raw[[1, 2, 6]], rtol=1e-5)
    assert top.token_prob == pytest.approx(raw[token], rel=1e-5)


def test_post_sampling_probs_report_the_chain_and_leave_out_zeros():
    logits = np.asarray(LOGITS, np.float32)
    s = Sampler(SamplingParams(n_probs=5, post_sampling_probs=True, top_k=3, temperature=0.5, seed=2), 8)
    token = s.sample(logits)
    top = s.last_probs()
    expected = dist([1, 2, 6], np.asarray(LOGITS) / 0.5)
    assert top.ids.tolist() == [1, 2, 6]
    np.testing.assert_allclose(top.probs, [expected[t] for t in (1, 2, 6)], rtol=1e-5)
    assert top.token_prob == pytest.approx(expected[token], rel=1e-5)
    greedy = Sampler(SamplingParams(n_probs=4, post_sampling_probs=True, temperature=0.0), 8)
    greedy.sample(logits)
    assert greedy.last_probs().ids.tolist() == [1] and greedy.last_probs().token_prob == 1.0


def test_no_probs_unless_asked():
    s = Sampler(SamplingParams(), 8)
    s.sample(np.asarray(LOGITS, np.float32))
    assert len(s.last_probs().ids) == 0


# ---- parameters -----------------------------------------------------------------------------

def test_defaults_are_the_specs():
    p = SamplingParams()
    assert (p.temperature, p.dynatemp_range, p.dynatemp_exponent) == (0.8, 0, 1)
    assert (p.top_k, p.top_p, p.min_p, p.typical_p, p.min_keep) == (40, 0.95, 0.05, 1.0, 0)
    assert (p.presence_penalty, p.frequency_penalty, p.repeat_penalty, p.repeat_last_n) == (0, 0, 1.1, 64)
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n) == (0, 1.75, 2, -1)
    assert p.dry_sequence_breakers == ["\n", ":", '"', "*"]
    assert (p.xtc_probability, p.xtc_threshold) == (0, 0.1)
    assert (p.mirostat, p.mirostat_tau, p.mirostat_eta) == (0, 5, 0.1)
    assert (p.seed, p.ignore_eos, p.logit_bias, p.n_probs, p.post_sampling_probs) == (-1, False, {}, 0, False)
    assert p.samplers == ["dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def test_from_request_takes_the_sampling_fields():
    p = SamplingParams.from_request({"model": "m", "messages": [], "top_k": 5, "seed": 3, "stream": True})
    assert (p.top_k, p.seed, p.top_p) == (5, 3, 0.95)


@pytest.mark.parametrize("field_name, value", [
    ("top_k", -1), ("top_k", 1.5), ("top_k", True), ("top_k", "40"),
    ("top_p", 1.5), ("top_p", -0.1), ("top_p", float("nan")), ("top_p", False),
    ("min_p", 2.0), ("typical_p", -1.0), ("xtc_probability", 1.1), ("xtc_threshold", float("nan")),
    ("temperature", float("inf")), ("temperature", "hot"), ("dynatemp_range", -0.5),
    ("dynatemp_exponent", float("-inf")),
    ("mirostat", 3), ("mirostat", True), ("mirostat", 1.0), ("mirostat_tau", -1.0), ("mirostat_eta", float("nan")),
    ("repeat_penalty", 0.0), ("repeat_last_n", -2), ("frequency_penalty", float("inf")),
    ("presence_penalty", None),
    ("dry_multiplier", -1.0), ("dry_base", 0.5), ("dry_allowed_length", -1), ("dry_penalty_last_n", -2),
    ("dry_sequence_breakers", []), ("dry_sequence_breakers", [""]), ("dry_sequence_breakers", "abc"),
    ("dry_sequence_breakers", [1]),
    ("min_keep", -1), ("n_probs", -1), ("n_probs", 2**31),
    ("seed", -2), ("seed", 2**64), ("seed", 1.0), ("seed", True),
    ("samplers", ["top_k", "bogus"]), ("samplers", "kz"), ("samplers", [3]), ("samplers", ["penalties"]),
    ("samplers", None),
    ("logit_bias", {100: 1.0}), ("logit_bias", {"-1": 1.0}), ("logit_bias", {"abc": 1.0}),
    ("logit_bias", {1.5: 1.0}), ("logit_bias", {True: 1.0}), ("logit_bias", {5: True}),
    ("logit_bias", {5: 101.0}), ("logit_bias", {5: float("nan")}), ("logit_bias", {5: "x"}),
    ("logit_bias", [[5, 1.0]]),
    ("ignore_eos", 1), ("post_sampling_probs", "yes"),
])
def test_a_bad_field_is_named(field_name, value):
    params = SamplingParams(**{field_name: value})
    with pytest.raises(SamplingParamsError) as caught:
        params.validate(100)
    assert caught.value.field == field_name
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, JanlibError)
    with pytest.raises(SamplingParamsError):
        Sampler(params, 100)


def test_good_edge_values_pass():
    SamplingParams(top_k=0, top_p=1.0, min_p=0.0, typical_p=0.0, temperature=-1.0, seed=2**64 - 1,
                   logit_bias={"99": -100, 0: 100, 3: False}, samplers="", repeat_last_n=-1).validate(100)


def test_accepting_a_token_outside_the_vocabulary_is_an_error():
    s = Sampler(SamplingParams(), 10)
    with pytest.raises(ValueError, match="token 10"):
        s.accept_prompt([1, 10])
    with pytest.raises(ValueError):
        s.accept(-1)


def test_a_penalty_that_overflows_the_logits_still_draws():
    """repeat_penalty 1e-39 divides repeated positive logits to +inf: they share the draw."""
    logits = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    s = Sampler(SamplingParams(repeat_penalty=1e-39, top_k=0, top_p=1.0, min_p=0.0, seed=3), 4)
    s.accept_prompt([0, 2])
    draws = {s.sample(logits) for _ in range(200)}
    assert draws == {0, 2}  # the two repeated tokens now dominate, equally; no failure
