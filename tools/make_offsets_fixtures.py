#!/usr/bin/env python3
"""make_offsets_fixtures.py: reference token offsets (return_offsets_mapping) from HF transformers/tokenizers.

Writes tests/data/tokenizer/offsets_<name>.jsonl for models/tokenizers/{qwen3,llama3}, one case per line:
    {"text": str, "ids": [...], "offsets": [s0, e0, s1, e1, ...]}
where ids and offsets are tokenizer(text, add_special_tokens=False, return_offsets_mapping=True): per token the
[start, end) CHARACTER (code point) offsets into the original text, as the C2C TokenAligner reads them. These show
how HF maps offsets through NFC (a composed character keeps the range of the first character it came from, the
characters it absorbed are dropped, reordered marks keep positional ranges) and through byte-level BPE (a token that
holds part of a multi-byte character gets the whole character's range). model/kw_tokenizer.c's
kw_tokenizer_encode_offsets must reproduce them exactly (tests/c2c/test_align_offsets.c).

Texts: the tokenizer fixture corpus (tools/make_tokenizer_fixtures.py texts(), imported, not copied) without the
cases holding U+0000 (cJSON strings cannot carry it) or longer than 4000 characters, plus NFC-focused cases, chat
templated texts, random mixtures of combining marks, Hangul jamo, emoji and added tokens, and 1500 short random
strings built for the NFC paths (composition, blocked marks, reordering, decompositions that insert characters).

Usage: python3 tools/make_offsets_fixtures.py [--out tests/data/tokenizer]
"""
import argparse
import json
import os
import random
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_tokenizer_fixtures  # noqa: E402  (the shared corpus of texts)

NFC_CASES = [
    "e\u0301a",
    "cafe\u0301 x",
    "a\u0301\u0301b",
    "a\u0316\u0301b",
    "a\u0323\u0307b",
    "q\u0307\u0323 q\u0323\u0307",
    "\u1100\u1161\u11a8 x \u1100\u1161 \uac00\u11a8 \u1100\u1100\u1161\u1161",
    "\u212b \u2126 \u212a x",
    "\u0344 \u0f73 \u0f75 \u0f81 x\u0344y",
    "\u2adc\u0338 \u2adc",
    "\U0001d15e\U0001d160 x",
    "\u0958\u093c \u0915\u093c\u093c",
    "A\u030a\u0301 \u00c5\u0301",
    "\u0301\u0301 leading marks",
    "o\u0308\u0304o\u0304\u0308",
    "\u1e9b\u0323",
    "e\u0301e\u0301e\u0301e\u0301",
    " \u0301",
    "\n\u0301\n",
    "1\u0301 2\u0308",
    "\u3099\u304b\u3099 \u304b\u309a",
    "\u0cc6\u0cd5 \u0cbf\u0cd5",
    "\u0b47\u0b3e \u0b47\u0b57",
    "\u1025\u102e",
    "ﬁ ﬀ ǅ Ǆ ǆ",
    "\u00e9\u0301 \u00e9\u0323",
    "x\u0345\u0301 \u03b1\u0345\u0301",
    "\U0001f600\u0301 \u4e2d\u0301",
    "<|im_start|>e\u0301<|im_end|>a\u0301",
    "\u0301<|endoftext|>\u0301",
    "\u1100<think>\u1161",
]


def chat_texts(qwen, llama):
    """Chat templated texts, as the aligner tokenizes them."""
    out = []
    msgs = [
        [{"role": "user", "content": make_tokenizer_fixtures.MC_PROMPT}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Caf\u00e9 cafe\u0301 \u4e2d\u6587 \U0001f600"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "2+2=?"}],
    ]
    for m in msgs:
        out.append(qwen.apply_chat_template(m, tokenize=False, add_generation_prompt=True, enable_thinking=False))
        out.append(llama.apply_chat_template(m, tokenize=False, add_generation_prompt=True,
                                             chat_template=make_chat_template(), date_string="23 Nov 2026"))
    return out


def make_chat_template():
    import make_chat_fixtures  # the Llama-3.2-Instruct template the tokenizer helper typed in

    return make_chat_fixtures.LLAMA32_TEMPLATE


def random_texts(rng, n):
    pieces = (list("abeoqAE019 \n.") + ["\u0301", "\u0323", "\u0308", "\u0304", "\u0316", "\u0345", "\u093c",
                                        "\u1100", "\u1161", "\u11a8", "\uac00", "\u212b", "\u2126", "\u0344",
                                        "\u0f73", "\u3099", "\u304b", "\u00e9", "\u00c5", "\u4e2d", "\U0001f600",
                                        "\U0001f469\u200d\U0001f4bb", "\ufffd", "\u00a0", "\u3000",
                                        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "<|eot_id|>",
                                        "<|begin_of_text|>", "'s", "  ", "\r\n"])
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def nfc_stress(rng, n):
    """Short random strings over starters, marks of several classes, Hangul jamo and syllables, singletons and
    composition exclusions: the NFC change-count paths (composition, blocking, reordering, insertion)."""
    pool = ["a", "e", "n", "o", "A", "\u0391", "\u03b1", "\u0915", "\u304b", "\u1100", "\u1161", "\u11a8",
            "\uac00", "\uac01", "\u0301", "\u0303", "\u0308", "\u0323", "\u0316", "\u0345", "\u0338", "\u093c",
            "\u3099", "\u309a", "\u0f71", "\u0f72", "\u0f73", "\u0344", "\u00f1", "\u00e9", "\u1e47", "\u1ea1",
            "\u212b", "\u2126", "\u2adc", "\u0958", "\u1ff3", "\u1ffc", "\u0cc6", "\u0cd5", "\u0b47", "\u0b3e",
            "\U0001d15e", "\U0001d165", "\u05b8", "\u05b7", "\u0651", "\u064e", " ", "x"]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "tokenizer"))
    args = ap.parse_args()
    with open(os.path.join(ROOT, "tests", "data", "tokenizer", "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    qwen = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "tokenizers", "qwen3"))
    llama = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "tokenizers", "llama3"))
    base = [t for t in make_tokenizer_fixtures.texts(corpus) if "\x00" not in t and len(t) <= 4000]
    extra = NFC_CASES + chat_texts(qwen, llama)
    for name, tok in (("qwen3", qwen), ("llama3", llama)):
        rng = random.Random(4242 + len(name))
        texts = base + extra + random_texts(rng, 300) + nfc_stress(rng, 1500)
        path = os.path.join(args.out, f"offsets_{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for text in texts:
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                flat = [x for pair in enc["offset_mapping"] for x in pair]
                f.write(json.dumps({"text": text, "ids": enc["input_ids"], "offsets": flat}, ensure_ascii=False))
                f.write("\n")
        print(f"{path}: {len(texts)} cases")


if __name__ == "__main__":
    main()
