"""The plain-Python GPT-2 BPE: known ids, special token, round trips, parity with transformers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import InputError, Tokenizer
from refimpl.tokenizer import bytes_to_unicode, default_vocabulary_files


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
