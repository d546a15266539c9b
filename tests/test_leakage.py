"""The leakage check measures what near-duplicate removal leaves: near-copies planted across the splits,
below the dedup threshold, are counted at the looser thresholds and named."""

import json
import random

from rapidfuzz import fuzz

from redheart.config import DataConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.encoders import document_text
from redheart.data.prepare import format_summary, prepare
from redheart.data.split import Split

VOCABULARY = ["".join(random.Random(k).choices("abcdefghijklmnopqrstuvwxyz", k=6)) for k in range(3000)]


def story(rng: random.Random, n: int = 80) -> str:
    return " ".join(rng.choices(VOCABULARY, k=n))


def reworded(text: str, rng: random.Random, every: int = 6) -> str:
    """Every `every`-th word replaced: a rewrite between fuzz.ratio 80 and the dedup threshold of 92."""
    words = text.split()
    return " ".join(rng.choice(VOCABULARY) if i % every == every // 2 else w for i, w in enumerate(words))


def record(i: int, text: str, title: str = "") -> dict:
    return {"id": f"r{i:03d}", "title": title, "text": text, "label": ["OTHER", "AUTHOR"][i % 2]}


def test_near_copies_planted_across_the_splits_are_counted_after_dedup(tmp_path):
    rng = random.Random(0)
    records = [record(i, story(rng)) for i in range(120)]
    for k in range(30):  # near-copies of the first 30 stories, appended at the end
        records.append(record(200 + k, reworded(records[k]["text"], rng)))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = RunDir(tmp_path / "run")
    summary = prepare(path, run, DataConfig())
    assert summary.duplicates_removed == 0 and summary.leaks == 0  # every copy is below 92: dedup keeps it

    # The expectation, by brute force over every held-out x train pair of what the model reads.
    manifest, by_id = read_json(run.split_manifest), {r["id"]: r for r in records}
    scores = [
        fuzz.ratio(document_text(by_id[h]), document_text(by_id[t]))
        for h in manifest["val"] + manifest["test"]
        for t in manifest["train"]
    ]
    crossing = sum(score >= 80 for score in scores)
    assert crossing >= 3 and max(scores) < 92
    stats = read_json(run.data_stats)["leakage"]
    assert stats["pairs"] == {"fuzz.ratio >= 92": 0, "fuzz.ratio >= 80": crossing, "shingle Jaccard >= 0.5": 0}
    planted = {(f"r{200 + k:03d}", f"r{k:03d}") for k in range(30)} | {
        (f"r{k:03d}", f"r{200 + k:03d}") for k in range(30)
    }
    assert all((e["id"], e["train_id"]) in planted for e in stats["examples"]["fuzz.ratio"])
    assert f"fuzz.ratio >= 80: at least {crossing}" in format_summary(summary)
    assert stats["lower_bounds"] == ["fuzz.ratio >= 92", "fuzz.ratio >= 80"]


def test_a_reordered_copy_is_caught_by_shingles_and_a_shared_title_by_the_dedup_threshold():
    from redheart.data.leakage import leakage_report, shingles

    rng = random.Random(1)
    texts = [story(rng, 120) for _ in range(30)]
    first, second = " ".join(texts[0].split()[:60]), " ".join(texts[0].split()[60:])
    records = [record(i, t) for i, t in enumerate(texts)]
    records.append(record(30, second + " " + first))  # the same story, its halves swapped
    # Short bodies 85 apart, one long shared title: together above 92, what the model reads is a copy.
    body = story(rng, 8)
    title = story(rng, 40)
    records += [record(31, body, title), record(32, reworded(body, rng, every=4), title)]
    split = Split(train=[f"r{i:03d}" for i in range(30)] + ["r031"], val=["r030"], test=["r032"], stratified_by={})

    report = leakage_report(records, split, 92.0)
    swapped_ratio = fuzz.ratio(texts[0], second + " " + first)
    title_ratio = fuzz.ratio(document_text(records[32]), document_text(records[31]))
    assert swapped_ratio < 80 and title_ratio >= 92 and fuzz.ratio(records[31]["text"], records[32]["text"]) < 92
    expected_jaccard = len(shingles(texts[0]) & shingles(second + " " + first)) / len(
        shingles(texts[0]) | shingles(second + " " + first)
    )
    assert expected_jaccard > 0.9  # exact set arithmetic on shingles: the same on any machine
    assert report["pairs"] == {"fuzz.ratio >= 92": 1, "fuzz.ratio >= 80": 1, "shingle Jaccard >= 0.5": 2}
    assert [(e["id"], e["train_id"]) for e in report["examples"]["fuzz.ratio"]] == [("r032", "r031")]
    assert {(e["id"], e["train_id"]) for e in report["examples"]["jaccard"]} == {("r030", "r000"), ("r032", "r031")}


def test_the_shingle_jaccard_is_exact_for_every_pair():
    # Copies sharing a controlled share of their shingles, around the 0.2 at which fuzz.ratio is scored: an
    # LSH proposal is probabilistic at that edge (it misses some pairs above and proposes some below); the
    # sparse product must give exactly the brute-force set.
    from redheart.data.leakage import PROPOSAL, close_pairs, jaccard, shingles

    rng = random.Random(2)
    choices = [story(rng, 60) for _ in range(40)]
    queries = []
    for k in range(40):
        words = choices[k].split()
        keep = 10 + k  # a prefix of 10..49 of the 60 words, the rest new: Jaccard from about 0.07 to 0.7
        queries.append(" ".join(words[:keep] + rng.choices(VOCABULARY, k=60 - keep)))
    expected = {
        (q, c)
        for q, query in enumerate(queries)
        for c, choice in enumerate(choices)
        if jaccard(shingles(query), shingles(choice)) >= PROPOSAL
    }
    found = close_pairs(queries, choices)
    assert {(q, c) for q, c, _, _ in found} == expected
    assert 5 < len(expected) < 40  # the edge is inside the planted range
    for q, c, similarity, ratio in found:
        assert similarity == jaccard(shingles(queries[q]), shingles(choices[c]))
        assert ratio == fuzz.ratio(queries[q], choices[c])
