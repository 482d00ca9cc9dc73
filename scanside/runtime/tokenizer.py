"""CLIP byte-level BPE, id for id what transformers' ``CLIPTokenizer`` returns.

``CLIPTokenizer`` (the Python tokenizer diffusers' Stable Diffusion pipelines load; transformers
< 5) pre-tokenizes with BERT's BasicTokenizer when ftfy is absent: it lowercases, drops control
characters and puts spaces around every CJK ideograph, so each ideograph is its own word and
ends in ``</w>``. The ``tokenizers`` fast conversion skips that step and returns other ids for
such prompts, which is why this is a port of the slow algorithm, not a wrapper of the fast one.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import regex

from scanside.errors import EngineError

FORMAT = "scanside-clip-bpe"
FORMAT_VERSION = 1
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# CLIPTokenizer reads at most this many merges (49152 - 256 bytes - 2 specials).
MAX_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (no spaces or controls)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_clean(text: str) -> str:
    """BERT BasicTokenizer(strip_accents=False, do_split_on_punc=False), joined by spaces."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(word.lower() for word in words)


def merge_pair(parts: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """One BPE merge: every left-to-right occurrence of ``pair`` becomes one symbol."""
    merged, i = [], 0
    while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


@dataclass(frozen=True)
class ClipTokenizer:
    vocab: Mapping[str, int]
    merges: Sequence[tuple[str, str]]
    max_length: int = 77
    pad_token: str = EOS

    def __post_init__(self) -> None:
        ranks = {pair: i for i, pair in enumerate(self.merges[:MAX_MERGES])}
        object.__setattr__(self, "_ranks", ranks)
        object.__setattr__(self, "_cache", {BOS: BOS, EOS: EOS})
        missing = [t for t in (BOS, EOS, self.pad_token) if t not in self.vocab]
        if missing:
            raise EngineError(f"tokenizer: special token(s) {missing} missing from the vocabulary")

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_file: Path, merges_file: Path, *, max_length: int = 77,
                   pad_token: str = EOS) -> "ClipTokenizer":
        """Read a diffusers/transformers ``tokenizer/`` folder's vocab.json and merges.txt."""
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        lines = Path(merges_file).read_text(encoding="utf-8").strip().split("\n")[1:]
        return cls(vocab, [tuple(line.split()) for line in lines], max_length, pad_token)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "max_length": self.max_length,
                "pad_token": self.pad_token, "vocab": dict(self.vocab),
                "merges": [" ".join(m) for m in self.merges]}

    @classmethod
    def from_json(cls, data: dict, source: str = "tokenizer.json") -> "ClipTokenizer":
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise EngineError(
                f"{source}: format {data.get('format')!r} v{data.get('version')!r}, expected "
                f"{FORMAT!r} v{FORMAT_VERSION}; re-run `scanside export` to rewrite it"
            )
        merges = [tuple(m.split()) for m in data["merges"]]
        return cls(data["vocab"], merges, int(data["max_length"]), data["pad_token"])

    # -- tokenisation --------------------------------------------------------------------
    def bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached.split(" ")
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            parts = merge_pair(parts, best)
        self._cache[word] = " ".join(parts)
        return parts

    def tokenize(self, text: str) -> list[str]:
        byte_map = bytes_to_unicode()
        tokens: list[str] = []
        # Special tokens are split out before cleaning, as transformers' added-token trie does.
        for piece in SPECIAL.split(text):
            if piece in (BOS, EOS):
                tokens.append(piece)
                continue
            for word in WORDS.findall(basic_clean(piece)):
                tokens.extend(self.bpe("".join(byte_map[b] for b in word.encode("utf-8"))))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Ids with BOS/EOS, truncated to max_length, unpadded."""
        unk = self.vocab[EOS]
        ids = [self.vocab.get(tok, unk) for tok in self.tokenize(text)]
        return [self.vocab[BOS], *ids[: self.max_length - 2], self.vocab[EOS]]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """(B, max_length) int32 ids padded with the pad token, as diffusers' pipelines ask."""
        pad = self.vocab[self.pad_token]
        out = np.full((len(prompts), self.max_length), pad, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            out[row, : len(ids)] = ids
        return out
