"""A small byte-level CLIP vocabulary, learnt by BPE from a built-in corpus.

Tiny test models use it so their embedding table stays small; it is laid out exactly as
CLIP's (256 byte symbols, the same with ``</w>``, one token per merge, then the two specials),
so every tokenizer path runs as it does on the real 49,408-token vocabulary.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from scanside.runtime.tokenizer import BOS, EOS, bytes_to_unicode, merge_pair

CORPUS = """
a photo of a cat low dose ct denoise enhance the image computed tomography scan of the chest
lung nodule lesion liver kidney bone soft tissue contrast noise reduction magnetic resonance
mr t1 t2 weighted axial coronal sagittal slice radiograph x-ray thorax abdomen pelvis brain
head neck spine knee sharp clear high quality diagnostic image with fine detail and texture
"""


def learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on the words of ``text``; ties broken by pair order, so it is deterministic."""
    byte_map = bytes_to_unicode()
    words = collections.Counter(
        tuple(byte_map[b] for b in w.encode()[:-1]) + (byte_map[w.encode()[-1]] + "</w>",)
        for w in text.lower().split()
    )
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: collections.Counter = collections.Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = collections.Counter({tuple(merge_pair(w, best)): f for w, f in words.items()})
    return merges


def write_vocab(folder: Path, n_merges: int = 256) -> int:
    """Write vocab.json and merges.txt into ``folder``; returns the vocabulary size."""
    symbols = list(bytes_to_unicode().values())
    merges = learn_merges(CORPUS, n_merges)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)
