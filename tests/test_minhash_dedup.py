"""MinHash LSH near-duplicate removal gives the reference loop's result on planted near-duplicates."""

import gzip
import json
import random

import pytest
from rapidfuzz import fuzz

from redheart.data.dedup import DedupResult, reference_near_duplicates
from redheart.data.minhash_dedup import candidate_pairs, minhash_near_duplicates, read_texts


def story(rng, vocabulary):
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(20, 160)))


def substituted(text, positions):
    # '#' is in no word, so each substitution costs exactly two indels: fuzz.ratio = 100 (1 - edits / length).
    chars = list(text)
    for position in positions:
        chars[position] = "#"
    return "".join(chars)


@pytest.fixture(scope="module")
def texts():
    """~200 stories and copies edited just above, just below and well below the 92 threshold.

    The edits sit at random or evenly spaced positions: spread edits break the most shingles."""
    rng = random.Random(3)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)
    ]
    texts = [story(rng, vocabulary) for _ in range(160)] + ["", "", "short", "short"]
    for k in range(48):
        source = rng.choice(texts[:160])
        ratio = [92.5, 92.0, 91.5, 95.0, 88.0, 99.0][k % 6]
        edits = round(len(source) * (100 - ratio) / 100)
        positions = rng.sample(range(len(source)), edits) if k % 2 else range(0, len(source), len(source) // edits)
        texts.insert(rng.randrange(len(texts) + 1), substituted(source, list(positions)[:edits]))
    return texts


def test_minhash_dedup_equals_the_reference_loop(texts):
    expected = reference_near_duplicates(texts, 92.0)
    assert minhash_near_duplicates(texts, 92.0) == expected
    scores = [fuzz.ratio(a, b) for a in texts for b in texts if a is not b and len(a) > 100]
    assert any(91 <= s < 92 for s in scores) and any(92 <= s < 93 for s in scores)  # planted on both sides
    assert len(expected.removed) >= 20


@pytest.mark.parametrize("threshold", [90.0, 97.5])
def test_minhash_dedup_equals_the_reference_at_other_thresholds(texts, threshold):
    assert minhash_near_duplicates(texts, threshold) == reference_near_duplicates(texts, threshold)


def test_lsh_leaves_few_pairs_to_score(texts):
    candidates = candidate_pairs(texts, 92.0)
    all_pairs = len(texts) * (len(texts) - 1) // 2
    assert candidates.collisions < all_pairs / 5 and len(candidates.pairs) < all_pairs / 100
    earlier, later = candidates.pairs.T
    assert (earlier < later).all() and sorted(zip(later, earlier)) == list(zip(later, earlier))


def test_empty_input_keeps_nothing_and_removes_nothing():
    assert minhash_near_duplicates([], 92.0) == DedupResult([], [])


def test_threshold_outside_the_scale_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        minhash_near_duplicates(["a", "b"], 101.0)


@pytest.mark.parametrize("opener", [open, gzip.open])
def test_read_texts_takes_the_text_of_each_line(tmp_path, opener):
    path = tmp_path / "texts.jsonl"
    lines = [{"id": "a", "title": "AITA?", "text": "first story"}, {"id": "b", "title": "", "text": ""}]
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_texts(path) == ["first story", ""]


def test_read_texts_names_the_line_without_a_text(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "title": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2.*'text'"):
        read_texts(path)
