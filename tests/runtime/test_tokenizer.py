"""scanside's CLIP tokenizer against transformers' CLIPTokenizer, the one diffusers loads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from scanside.runtime.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

CLIP_DIR = Path(__file__).resolve().parents[2] / "scanside" / "training" / "data" / "clip-tokenizer"
PROMPTS = [
    "a photo of a cat",
    "一张肺部CT扫描图像，显示出明显的肿瘤",  # the fast tokenizer gives other ids here
    "Low-dose CT, denoise!! 12.5mm slices; T2-weighted MR (axial)",
    "Café naïve résumé — ÉCOLE",
    "x-ray <|endoftext|>tail!<|startoftext|> and it's they'll we'd",
    "tabs\tand\nnewlines\r\x00control\u200bzero-width",
    "emoji 🫁🩻 and ＦＵＬＬＷＩＤＴＨ ｋａｔａｋａｎａ カタカナ, 한국어, Ελληνικά, русский",
    "   ",
    "",
    "word " * 100,  # truncation at 77
]


@pytest.fixture(scope="module")
def pair():
    ours = ClipTokenizer.from_files(CLIP_DIR / "vocab.json", CLIP_DIR / "merges.txt")
    theirs = transformers.CLIPTokenizer(str(CLIP_DIR / "vocab.json"), str(CLIP_DIR / "merges.txt"))
    return ours, theirs


def reference(theirs, prompt: str) -> list[int]:
    return theirs(prompt, padding="max_length", max_length=77, truncation=True).input_ids


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_clip_tokenizer(pair, prompt):
    ours, theirs = pair
    assert ours([prompt])[0].tolist() == reference(theirs, prompt)


def test_random_unicode_prompts_match(pair):
    ours, theirs = pair
    rng = random.Random(0)
    alphabet = ("abcXYZ019 ,.!?'-_/()[]<>|éüßçñ中文字肺癌ã̃ｱ한😀\t\n" "\u0301\u00a0\u3000")
    for _ in range(300):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert ours([prompt])[0].tolist() == reference(theirs, prompt), repr(prompt)


def test_known_ids(pair):
    ours, _ = pair
    assert ours.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_fast_tokenizer_really_differs_here(pair):
    """Guards the reason this module exists: if the fast tokenizer agreed, we could use it."""
    ours, _ = pair
    fast = transformers.CLIPTokenizerFast(str(CLIP_DIR / "vocab.json"), str(CLIP_DIR / "merges.txt"))
    prompt = PROMPTS[1]
    assert fast(prompt).input_ids != ours.encode(prompt)


def test_json_round_trip(pair):
    ours, _ = pair
    again = ClipTokenizer.from_json(ours.to_json())
    assert again([PROMPTS[2]]).tolist() == ours([PROMPTS[2]]).tolist()
