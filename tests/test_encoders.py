import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from redheart.config import EncoderConfig
from redheart.data.encoders import HashingEncoder, MiniLMEncoder, build_encoder, document_text, minilm_model_dir

HASHING = EncoderConfig(name="hashing", dim=64, window_tokens=8, max_segments=3)
LONG_TEXT = (
    "My roommate borrowed my car without asking and returned it with an empty tank. "
    "I told her she owes me for gas and now our friends say I am being petty about it. "
    "Last winter I drove her to the airport at four in the morning and never asked for anything. "
    "She says friends share, but she has never once offered to share her own things with me. "
    "Yesterday she took the car again while I was asleep and missed my job interview because of it. "
) * 3


def test_document_text_joins_title_and_body():
    assert document_text({"id": "a", "title": "AITA?", "text": "Body."}) == "AITA?\n\nBody."
    assert document_text({"id": "a", "title": "", "text": "Body."}) == "Body."
    assert document_text({"id": "a", "text": "Body."}) == "Body."


def test_document_text_names_record_and_field_on_bad_input():
    with pytest.raises(ValueError, match=r"record 'r7': field 'text'"):
        document_text({"id": "r7", "title": "t", "text": None})
    with pytest.raises(ValueError, match=r"record 'r8': field 'title'"):
        document_text({"id": "r8", "title": 3, "text": "x"})


def test_build_encoder_picks_by_name():
    assert isinstance(build_encoder(HASHING), HashingEncoder)
    assert build_encoder(EncoderConfig()).key == "minilm-l6-v2-w128-s4"
    with pytest.raises(ValueError, match="unknown encoder.name"):
        build_encoder(EncoderConfig(name="word2vec"))


def test_hashing_shapes_mask_and_distinct_segments():
    encoder = build_encoder(HASHING)
    vectors, mask = encoder.encode(["two words", "", LONG_TEXT], progress=False)
    assert vectors.shape == (3, 3, 64) and vectors.dtype == np.float32
    assert mask.tolist() == [[True, False, False], [True, False, False], [True, True, True]]
    # Unit vectors stored in fp32, their norm summed in fp32 over 64 squares: within gamma_64 ~ 64 * 2^-24.
    assert np.allclose(np.linalg.norm(vectors[mask], axis=1), 1.0, atol=64 * 2.0**-24)
    assert not vectors[~mask].any()
    long = vectors[2]
    assert all(not np.allclose(long[i], long[j]) for i in range(3) for j in range(i + 1, 3))


def test_hashing_texts_sharing_words_are_closer():
    encoder = build_encoder(EncoderConfig(name="hashing", dim=256))
    vectors, _ = encoder.encode(
        ["my sister ruined my wedding dress", "my sister ruined my wedding cake", "quarterly tax forms are due soon"],
        progress=False,
    )
    a, b, c = vectors[:, 0]
    # Hashed word counts: 4 of 5 distinct words shared against none, whatever the machine (integer hashing; fp32
    # rounding moves a cosine by ~1e-6).
    assert a @ b > 0.6 and a @ b > a @ c + 0.4


def test_hashing_is_identical_in_a_fresh_process():
    texts = ["the same words", LONG_TEXT]
    here, _ = build_encoder(HASHING).encode(texts, progress=False)
    script = (
        "import json, sys; from redheart.config import EncoderConfig; "
        "from redheart.data.encoders import build_encoder; "
        f"v, _ = build_encoder(EncoderConfig(**{json.dumps(HASHING.__dict__)})).encode({texts!r}, progress=False); "
        "sys.stdout.write(v.tobytes().hex())"
    )
    # A different PYTHONHASHSEED would change Python's str hash(); the encoder must not depend on it.
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert bytes.fromhex(out.stdout) == here.tobytes()


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(EncoderConfig(batch_size=8))


def test_minilm_equals_sentence_transformers_on_a_short_text(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    text = "AITA for hiding my controller?\n\nMy little brother keeps breaking my things."
    reference = sentence_transformers.SentenceTransformer(str(minilm_model_dir()), device="cpu").encode([text])
    vectors, mask = minilm.encode([text], progress=False)
    assert vectors.shape == (1, 4, 384) and mask.tolist() == [[True, False, False, False]]
    # Both run the same fp32 weights on this machine; they differ only in the order of float operations (padding,
    # pooling), ~2^-24 relative per operation through 6 layers: 1e-5 of a unit vector's component (~0.05) is
    # hundreds of ulps, while another pooling or normalisation would be off by 1e-2 and more.
    assert np.abs(vectors[0, 0] - reference[0]).max() < 1e-5


def test_minilm_long_text_gives_distinct_windows(minilm):
    vectors, mask = minilm.encode([LONG_TEXT, "Short."], progress=False)
    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    tokens = len(tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"])
    windows = min(math.ceil(tokens / 126), 4)
    assert windows >= 3
    assert mask.tolist() == [[True] * windows + [False] * (4 - windows), [True, False, False, False]]
    # Unit vectors stored in fp32, their norm summed in fp32 over 384 squares: within gamma_384 ~ 384 * 2^-24.
    assert np.allclose(np.linalg.norm(vectors[mask], axis=1), 1.0, atol=384 * 2.0**-24)
    assert not vectors[~mask].any()
    real = vectors[0, :windows]
    # Different windows of text are different sentences: 0.999 is a near-copy, far above rounding's 1e-6.
    assert all(real[i] @ real[j] < 0.999 for i in range(windows) for j in range(i + 1, windows))
