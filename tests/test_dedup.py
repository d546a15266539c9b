"""Near-duplicate removal equals the naive keep-first loop (reference_near_duplicates)."""

import random

import pytest
from rapidfuzz import fuzz

from redheart.data.dedup import cross_pairs, near_duplicates, reference_near_duplicates

WORDS = [
    "my",
    "roommate",
    "sister",
    "boss",
    "friend",
    "wedding",
    "money",
    "car",
    "dog",
    "party",
    "rent",
    "dinner",
    "gift",
    "told",
    "asked",
    "refused",
    "yelled",
    "because",
    "never",
    "always",
    "work",
    "school",
    "phone",
    "game",
    "house",
    "mother",
    "father",
]


def random_text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def edited(rng, text, substitutions):
    chars = list(text)
    for position in rng.sample(range(len(chars)), substitutions):
        chars[position] = rng.choice("0123456789#@%&")  # never in WORDS, so each edit costs 2 indels
    return "".join(chars)


@pytest.fixture(scope="module")
def texts():
    """~300 texts: random stories, and copies edited just above or just below the 92 threshold."""
    rng = random.Random(7)
    texts = [random_text(rng, rng.randint(5, 120)) for _ in range(240)]
    for _ in range(60):
        source = rng.choice(texts)
        # fuzz.ratio = 100 (1 - substitutions / len): these land on both sides of 92.
        share = rng.choice([0.06, 0.075, 0.08, 0.085, 0.1])
        texts.insert(rng.randrange(len(texts) + 1), edited(rng, source, max(1, round(share * len(source)))))
    return texts


def test_fast_dedup_equals_the_reference_loop(texts):
    fast = near_duplicates(texts, 92.0)
    assert fast == reference_near_duplicates(texts, 92.0)
    scores = [fuzz.ratio(a, b) for a in texts for b in texts if a is not b and len(a) > 200]
    assert any(88 <= s < 92 for s in scores) and any(92 <= s <= 95 for s in scores)  # planted on both sides
    assert len(fast.removed) >= 10
    assert all(d.kept < d.removed and d.score >= 92 for d in fast.removed)
    assert sorted(fast.kept + [d.removed for d in fast.removed]) == list(range(len(texts)))


@pytest.mark.parametrize("threshold", [85.0, 97.5])
def test_fast_dedup_equals_the_reference_at_other_thresholds(texts, threshold):
    assert near_duplicates(texts[:150], threshold) == reference_near_duplicates(texts[:150], threshold)


def test_keep_first_is_not_transitive():
    # b is near a and c is near b but not a: the loop keeps a, removes b, and keeps c.
    a = "x" * 100
    b = "x" * 94 + "y" * 6
    c = "x" * 88 + "y" * 12
    assert fuzz.ratio(a, b) >= 92 and fuzz.ratio(b, c) >= 92 and fuzz.ratio(a, c) < 92
    result = near_duplicates([a, b, c], 92.0)
    assert result == reference_near_duplicates([a, b, c], 92.0)
    assert result.kept == [0, 2] and [(d.removed, d.kept) for d in result.removed] == [(1, 0)]


def test_cross_pairs_finds_every_pair_across_two_sets(texts):
    queries, choices = texts[:120], texts[120:]
    expected = sorted(
        (q, c, fuzz.ratio(a, b))
        for q, a in enumerate(queries)
        for c, b in enumerate(choices)
        if fuzz.ratio(a, b) >= 92.0
    )
    assert expected and cross_pairs(queries, choices, 92.0) == expected


def test_threshold_outside_the_scale_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(["a", "b"], 0.0)
