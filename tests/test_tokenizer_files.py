"""Where a tokenizer comes from: ``tokenizer.json`` (parity with Hugging Face ``tokenizers``), GPT-2's two
files, the declaration of GPT-2's vocabulary, and a folder holding none of them (an error, no fallback)."""

import json
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl
from refimpl import CheckpointError, Tokenizer
from refimpl.oracle.tokenizer_files import DECLARATION, declare_vocabulary, default_vocabulary_files
from verification.references.fixtures import exactly, gpt_neo_config, random_tensors, write_checkpoint

tokenizers = pytest.importorskip("tokenizers", reason="tokenizer.json parity needs Hugging Face tokenizers")

SPECIALS = ["<|endoftext|>", "<|padding|>"]
SPACES = ["  ", "    ", "\t\t"]  # NeoX-style added whitespace tokens, matched after normalization


@lru_cache(maxsize=None)
def _peer_json(kind: str) -> str:
    return _build_peer(kind).to_str()


def _peer(kind: str):
    """The peer tokenizer ``kind`` (built once, then read back from its tokenizer.json)."""
    return tokenizers.Tokenizer.from_str(_peer_json(kind))


def _build_peer(kind: str):
    """A ``tokenizers.Tokenizer`` over GPT-2's vocabulary: "gpt2" as GPT-2's tokenizer.json is; "neox" with
    GPT-NeoX's extras (NFC, ignore_merges, normalized whitespace tokens, a second special token)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

    vocab, merges = default_vocabulary_files()
    peer = tokenizers.Tokenizer(models.BPE.from_file(str(vocab), str(merges), ignore_merges=kind == "neox"))
    peer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    peer.decoder = decoders.ByteLevel()
    if kind == "neox":
        peer.normalizer = normalizers.NFC()
        peer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
        peer.add_tokens([AddedToken(t, normalized=True) for t in SPACES])
    else:
        peer.add_special_tokens([AddedToken(SPECIALS[0], special=True, normalized=False)])
    return peer


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def pair(request, tmp_path_factory):
    peer = _peer(request.param)
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    path.write_text(_peer_json(request.param))
    return Tokenizer.from_tokenizer_json(path), peer


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.lists(
    st.sampled_from(SPECIALS + SPACES + [" she", "'s", "\n", "isn't", "123", "e\u0301", "\u212b", "🙂", "   x"]),
    max_size=8).map("".join)


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_encode_and_decode_equal_the_tokenizers_library(pair, text):
    ours, peer = pair
    ids = peer.encode(text).ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == peer.decode(ids, skip_special_tokens=False)


def test_gpt2_tokenizer_json_is_gpt2s_tokenizer(pair):
    ours, _ = pair
    gpt2 = refimpl.oracle.tokenizer.gpt2_tokenizer()
    assert ours.encode("Hello world!<|endoftext|> she") == [15496, 995, 0, 50256, 673]
    assert {k: ours.encoder[k] for k in gpt2.encoder} == gpt2.encoder and ours.merges == gpt2.merges


def test_the_neox_rules_each_change_a_tokenization():
    """NFC, normalized added tokens and ignore_merges each decide some text (so the parity above tests them)."""
    neox = _peer("neox")
    assert neox.encode("e\u0301").ids != _peer("gpt2").encode("e\u0301").ids  # NFC makes one character
    assert neox.encode("a  b").ids != _peer("gpt2").encode("a  b").ids  # the added "  "


def _spec(**changes) -> dict:
    """GPT-2's tokenizer.json cut to its first 300 tokens (and the merges among them), with ``changes``."""
    spec = json.loads(_peer_json("gpt2"))
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < 300}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if "".join(m) in vocab]
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = spec
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return spec


REFUSED = {
    "normalizer": (dict(normalizer={"type": "Lowercase"}), "normalizer {'type': 'Lowercase'} is not supported"),
    "pre_tokenizer": (dict(pre_tokenizer={"type": "Metaspace"}), "pre_tokenizer {'type': 'Metaspace'} is not supp"),
    "prefix space": (dict(pre_tokenizer__add_prefix_space=True), "add_prefix_space True is not supported"),
    "no regex": (dict(pre_tokenizer__use_regex=False), "use_regex False is not supported"),
    "dropout": (dict(model__dropout=0.1), "model: dropout 0.1 is not supported"),
    "unknown token": (dict(model__unk_token="<unk>"), "model: unk_token '<unk>' is not supported"),
    "byte fallback": (dict(model__byte_fallback=True), "byte_fallback True is not supported"),
    "suffix": (dict(model__end_of_word_suffix="</w>"), "end_of_word_suffix '</w>' is not supported"),
    "not BPE": (dict(model__type="WordPiece"), "model: type 'WordPiece' is not supported"),
    "adds a BOS": (dict(post_processor={"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}),
        "a post_processor that adds tokens is not supported"),
    "post_processor": (dict(post_processor={"type": "BertProcessing"}), "post_processor {'type': 'BertPro"),
    "decoder": (dict(decoder={"type": "WordPiece"}), "decoder {'type': 'WordPiece'} is not supported"),
    "lstrip": (dict(added_tokens__0__lstrip=True), r"added_tokens\[0\]: lstrip True is not supported"),
    "single word": (dict(added_tokens__0__single_word=True), r"added_tokens\[0\]: single_word True is not"),
    "added id clash": (dict(added_tokens__0__id=256), r"added_tokens\[0\]: '<\|endoftext\|>' with id 256, where tokenizers gives it id 300"),
    "added id gap": (dict(added_tokens__0__id=301), r"with id 301, where tokenizers gives it id 300"),
    "surrogate": (dict(added_tokens__0__content="\ud800"), r"added_tokens\[0\]: the content holds a lone surrogate"),
    "long added": (dict(added_tokens=[{"id": 300 + i, "content": f"<{i}>" + "x" * 100} for i in range(700)]),
                   "the added tokens hold 7.* characters; at most 65536 are supported"),
    "truncation": (dict(truncation={"max_length": 2}), "truncation {'max_length': 2} is not supported"),
    "padding": (dict(padding={"pad_id": 0}), "padding {'pad_id': 0} is not supported"),
    "no decoder": (dict(decoder=None), "decoder None is not supported"),
    "added empty": (dict(added_tokens__0__content=""), r"added_tokens\[0\] must be an object with a non-empty"),
    "added id": (dict(added_tokens__0__id=-1), r"added_tokens\[0\]: id -1 is not a non-negative integer"),
    "added not list": (dict(added_tokens={}), "added_tokens must be a list, got dict"),
    "too many added": (dict(added_tokens=[{"id": 300 + i, "content": f"<{i}>"} for i in range(4097)]),
                       "holds 4097 added tokens; at most 4096 are supported"),
    "merge makes nothing": (dict(model__merges=[["Ġ", "t"], ["x", "qqq"]]),
                            r"model.merges\[1\]: the merge 'x qqq' makes 'xqqq', which model.vocab does not hold"),
    "merge shape": (dict(model__merges=[["Ġ", "t", "h"]]), r"model.merges\[0\]: a merge is two tokens separated by one space, got 'Ġ t h'"),
    "merges not list": (dict(model__merges="Ġ t"), "model.merges must be a list, got str"),
    "vocab token": (dict(model__vocab={"a b": 0}), r"model.vocab: token 'a b' is not a byte-level BPE token"),
    "vocab id": (dict(model__vocab={"a": True}), "model.vocab: token 'a' has id True, not a non-negative integer"),
    "vocab ids clash": (dict(model__vocab={"a": 1, "b": 1}), "model.vocab: two tokens have the same id"),
    "model missing": (dict(model=None), "must be a JSON object with a 'model' object"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_tokenizer_json_is_refused_by_name(tmp_path, name):
    changes, message = REFUSED[name]
    (tmp_path / "tokenizer.json").write_text(json.dumps(_spec(**changes)))
    with pytest.raises(CheckpointError, match=message):
        Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json", tmp_path)


def test_the_most_added_tokens_supported_are_read(tmp_path):
    spec = _spec(added_tokens=[{"id": 300 + i, "content": f"<{i}>"} for i in range(4096)])
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    ours = Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert ours.encode("a<4095>b<40>") == [64, 300 + 4095, 65, 300 + 40]


def test_old_merges_format_reads_as_pairs(tmp_path):
    """Merges as "a b" strings (tokenizers < 0.20) read as the pairs they are."""
    spec = json.loads(_peer_json("gpt2"))
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json").merges == refimpl.oracle.tokenizer.gpt2_tokenizer().merges


ADDED = {  # added tokens tokenizers handles in its own way, each compared with it on texts that use them
    "normalized content NFC changes": ([{"id": 300, "content": "e\u0301", "normalized": True}], ["e\u0301", "ae\u0301b"]),
    "mixed-table content decodes raw": ([{"id": 300, "content": "é日", "normalized": False}], ["xé日y"]),
    "table-only content decodes as bytes": ([{"id": 300, "content": "Ġx", "normalized": False}], ["aĠxb"]),
    "whitespace": ([{"id": 300, "content": " " * 4, "normalized": True}], ["a    b", "     "]),
}


@pytest.mark.parametrize("name", ADDED)
def test_added_tokens_encode_and_decode_as_tokenizers_does(tmp_path, name):
    entries, texts = ADDED[name]
    spec = _spec(normalizer={"type": "NFC"}, added_tokens=[dict(e, special=False, single_word=False, lstrip=False,
                                                                 rstrip=False) for e in entries])
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    ours, peer = Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json"), tokenizers.Tokenizer.from_str(json.dumps(spec))
    for text in texts:
        ids = peer.encode(text).ids
        assert 300 in ids and ours.encode(text) == ids, text
        assert ours.decode(ids) == peer.decode(ids, skip_special_tokens=False), text


# ------------------------------------------------------------------ which file a folder's tokenizer is read from
def _folder(tmp_path, *files):
    vocab, merges = default_vocabulary_files()
    contents = {"tokenizer.json": lambda: _peer_json("neox"), "vocab.json": vocab.read_text,
                "merges.txt": merges.read_text, DECLARATION: lambda: '{"vocabulary": "gpt2"}'}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (tmp_path / name).write_text(contents[name]())
    return tmp_path


def test_tokenizer_json_comes_first_then_gpt2s_files_then_the_declaration(tmp_path):
    both = Tokenizer.from_folder(_folder(tmp_path / "a", "tokenizer.json", "vocab.json", "merges.txt"))
    assert "<|padding|>" in both.added  # tokenizer.json was read, as transformers' fast tokenizers do
    two = Tokenizer.from_folder(_folder(tmp_path / "b", "vocab.json", "merges.txt", DECLARATION))
    assert set(two.added) == {"<|endoftext|>"} and two is not refimpl.oracle.tokenizer.gpt2_tokenizer()
    assert Tokenizer.from_folder(_folder(tmp_path / "c", DECLARATION)) is refimpl.oracle.tokenizer.gpt2_tokenizer()


@pytest.mark.parametrize("files", [(), ("vocab.json",), ("merges.txt",)])
def test_a_folder_without_a_tokenizer_is_an_error_naming_what_was_looked_for(tmp_path, files):
    folder = _folder(tmp_path, *files)
    looked_for = (f"{folder} holds no tokenizer: looked for tokenizer.json, vocab.json + merges.txt, or {DECLARATION}"
                  ' ({"vocabulary": "gpt2"})')
    with pytest.raises(CheckpointError, match=exactly(looked_for)):
        Tokenizer.from_folder(folder)


@pytest.mark.parametrize("content", ['{"vocabulary": "llama"}', '["gpt2"]', '{"vocabulary": ["gpt2"]}'])
def test_a_declaration_of_another_vocabulary_is_refused(tmp_path, content):
    (tmp_path / DECLARATION).write_text(content)
    with pytest.raises(CheckpointError, match="must be an object whose 'vocabulary' is one of gpt2"):
        Tokenizer.from_folder(tmp_path)


def test_the_declaration_writer_writes_what_the_reader_reads_and_nothing_else(tmp_path):
    assert declare_vocabulary(tmp_path).read_text() == '{"vocabulary": "gpt2"}\n'
    assert Tokenizer.from_folder(tmp_path) is refimpl.oracle.tokenizer.gpt2_tokenizer()
    with pytest.raises(refimpl.InputError, match=exactly("vocabulary must be one of gpt2, got 'llama'")):
        declare_vocabulary(tmp_path / "x", "llama")


def test_a_broken_tokenizer_json_link_is_an_error_not_absence(tmp_path):
    _folder(tmp_path, DECLARATION)
    (tmp_path / "tokenizer.json").symlink_to(tmp_path / "missing.json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


def test_load_reads_the_folders_tokenizer_and_refuses_a_folder_without_one(tmp_path):
    config = gpt_neo_config(vocab=50257, d_model=8, n_layers=1, n_heads=2, window=3, n_ctx=8)
    folder = write_checkpoint(tmp_path / "m", config, random_tensors(config, seed=0))
    assert refimpl.load(folder).tokenizer is refimpl.oracle.tokenizer.gpt2_tokenizer()
    (folder / "tokenizer.json").write_text(_peer_json("neox"))
    assert "<|padding|>" in refimpl.load(folder).tokenizer.added
    (folder / "tokenizer.json").unlink()
    (folder / DECLARATION).unlink()
    with pytest.raises(CheckpointError, match="holds no tokenizer: looked for tokenizer.json"):
        refimpl.load(folder)


def test_uses_gpt2_vocabulary_is_decided_by_the_tokens_and_the_embedding(tmp_path):
    """The one test of "the paper's prompts and observables apply": GPT-2's vocabulary and merges, and an
    embedding row for each token; each part alone decides it."""
    import types

    import refimpl
    from refimpl.oracle.tokenizer import Tokenizer, gpt2_tokenizer, uses_gpt2_vocabulary
    from verification.references.fixtures import small_model

    assert uses_gpt2_vocabulary(refimpl.load()) and uses_gpt2_vocabulary(refimpl.load("organism-gpt2"))
    assert not uses_gpt2_vocabulary(small_model(tmp_path))  # GPT-2's tokenizer, but 61 embedding rows
    gpt2 = gpt2_tokenizer()

    def stub(tokenizer, d_vocab):
        return types.SimpleNamespace(tokenizer=tokenizer, config=types.SimpleNamespace(d_vocab=d_vocab))

    assert uses_gpt2_vocabulary(stub(gpt2, 50400))  # GPT-J pads the embedding past the tokens
    assert not uses_gpt2_vocabulary(stub(gpt2, 50256))
    other = Tokenizer({**gpt2.encoder, "Ġshe": gpt2.encoder["Ġhe"], "Ġhe": gpt2.encoder["Ġshe"]}, gpt2.merges,
                      added={"<|endoftext|>": (50256, False)})
    assert not uses_gpt2_vocabulary(stub(other, 50257))  # the same size, other ids
    fewer = Tokenizer(gpt2.encoder, gpt2.merges[:-1], added={"<|endoftext|>": (50256, False)})
    assert not uses_gpt2_vocabulary(stub(fewer, 50257))  # one merge fewer
