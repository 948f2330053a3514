"""The plain-Python GPT-2 BPE: known ids, special token, round trips, parity with transformers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import InputError, Tokenizer
from refimpl.oracle.tokenizer import bytes_to_unicode, default_vocabulary_files


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_folder()


def test_known_ids(tok):
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.encode("The dog") == [464, 3290]
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("<|endoftext|>So, John really is a great friend, isn't") == [
        50256, 2396, 11, 1757, 1107, 318, 257, 1049, 1545, 11, 2125, 470]
    assert tok.vocab_size == 50257


def test_single_token_helper(tok):
    assert tok.is_single_token(" she") and tok.single_token_id(" she") == 673
    assert not tok.is_single_token(" Anastasiaaa")
    with pytest.raises(InputError, match=r"' programmers and' is not a single token: it encodes to 2 tokens"):
        tok.single_token_id(" programmers and")


def test_byte_table_is_a_bijection():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord("A")] == "A" and table[ord(" ")] == "Ġ"


def test_decode_errors(tok):
    with pytest.raises(InputError, match="token id 50257 is not in the vocabulary"):
        tok.decode([50257])


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_round_trip(text):
    tok = Tokenizer.from_folder()
    assert tok.decode(tok.encode(text)) == text


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers", reason="tokenizer parity needs transformers")
    vocab, merges = default_vocabulary_files()
    return transformers.GPT2Tokenizer(vocab=str(vocab), merges=str(merges))


TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=50
) | st.lists(st.sampled_from(["<|endoftext|>", " she", "'s", "  ", "\n", "isn't", "123", "日本", "é", "🙂"]),
             max_size=8).map("".join)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_parity_with_transformers(hf_tokenizer, text):
    assert Tokenizer.from_folder().encode(text) == hf_tokenizer.encode(text)


def _letters(n: int, seed: int, alphabet: str) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


LONG_CHUNKS = {
    "random letters": _letters(3000, 0, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "one letter": "a" * 2500,
    "two letters": "ab" * 1200 + "a",
    "few letters": _letters(3000, 1, "aeinrst"),
    "digits": _letters(2000, 2, "0123456789"),
    "punctuation": _letters(2000, 3, "!?.,;:-_()[]{}'\"/\\"),
    "unicode letters": _letters(1500, 4, "日本語éàüßøΩжш"),
}


@pytest.mark.parametrize("name", sorted(LONG_CHUNKS))
def test_parity_long_chunks_without_whitespace(hf_tokenizer, tok, name):
    """One pre-split chunk of thousands of characters: the heap BPE merges in GPT-2's order."""
    text = LONG_CHUNKS[name]
    assert tok.encode(text) == hf_tokenizer.encode(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="aabbe ", min_size=1, max_size=200) | st.text(alphabet="ehlost", max_size=300))
def test_parity_repetitive_text(hf_tokenizer, text):
    """Runs of repeated pairs ("aaaa", "abab") where overlapping merges must resolve left to right."""
    assert Tokenizer.from_folder().encode(text) == hf_tokenizer.encode(text)


def test_merge_order_with_an_inconsistent_merges_table(tmp_path):
    """A merges file ranking ("ab", "a") before ("a", "b"): every ("a", "b") is merged before the pair it
    creates is considered, as GPT-2's encoder.py loop (and our pre-heap ``_bpe``) does: "abab" -> ["ab", "ab"].
    (transformers 5's GPT2Tokenizer, backed by the Rust BPE, gives ["aba", "b"] here; the released merges
    table never ranks a merge before the merge that creates its input, so the two agree on GPT-2.)"""
    import json

    vocab = {"a": 0, "b": 1, "ab": 2, "aba": 3, "abab": 4, "Ġ": 5}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nab a\na b\n")
    ours = Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    expected = {"abab": [2, 2], "ababab": [2, 2, 2], "aab": [0, 2], "abaab": [3, 2]}  # the old loop's output
    assert {text: ours.encode(text) for text in expected} == expected
