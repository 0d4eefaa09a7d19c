#!/usr/bin/env python3
"""make_tokenizer_fixtures.py: reference encodings and decodings from HF `tokenizers`, the authority for kw_tokenizer.

Writes, for each tokenizer in models/tokenizers/{qwen3,llama3,gemma3}:
  tests/data/tokenizer/hf_<name>.jsonl   one case per line:
      {"text", "ids", "decoded", "decoded_skip"}   encode(text, add_special_tokens=False) and the decodes of those ids
                                                   with skip_special_tokens False / True; "decoded" is left out when
                                                   it equals the text, "decoded_skip" when it equals "decoded"
      {"ids", "decoded", "decoded_skip"}           decode-only cases (id sequences that split UTF-8 characters, random
                                                   ids, single tokens)
      {"single_decode_fnv1a64", "n_ids"}           FNV-1a 64 over decode([id]) of every id (see single_decode_hash)
    A text or decode holding U+0000 is written as "<field>_hex" (UTF-8 bytes in hex) instead, because cJSON strings
    cannot carry it.
  tests/data/tokenizer/cli_<name>.ids      `kvwire tokenize` output for corpus.jsonl, byte for byte
  tests/data/tokenizer/cli_<name>.decoded  `kvwire tokenize --decode` output for those ids (JSON escaping as
                                           kw_json_append_string writes it)
It also compares the shared JS-port fixtures (qwen3.jsonl, llama3.jsonl, gemma3.jsonl) with HF and reports
disagreements. Gemma 3 (SentencePiece-style BPE) gets thousands of cases of its own on top of the shared ones
(gemma_texts: whitespace runs, byte fallback, its added tokens written out, random vocabulary pieces glued together,
random mixtures) and decode cases for byte-fallback runs; and
  tests/data/tokenizer/spm_variants/*.json     small SentencePiece-style tokenizer.json files (Metaspace with each
                                               prepend scheme and split, Prepend + Replace, Strip and Metaspace
                                               decoders, no byte fallback with a fused unk) cut from Gemma's vocabulary,
  tests/data/tokenizer/hf_spm_<variant>.jsonl  and their HF encodings and decodings

Other modes (they need no output directory):
  --check-gguf GGUF   checks what kw_tokenizer_from_spm assumes about a SentencePiece vocabulary against Gemma 3's
                      GGUF (spm_arrays_check)
  --unicode-tables    prints the C tables of model/kw_tokenizer.c that close the Unicode-version gaps between HF
                      (Oniguruma, its NFC) and PCRE2 10.42 / utf8proc 2.8 (needs libutf8proc.so.2; Python 3.11's
                      unicodedata is Unicode 14.0, the same as PCRE2 10.42's tables)
  --exhaustive KVWIRE compares `KVWIRE tokenize --pieces` with HF's normalizer + pre-tokenizer on every code point in
                      many contexts (a few minutes)

Usage: python3 tools/make_tokenizer_fixtures.py [--out tests/data/tokenizer] [--only gemma3,spm]
(gemma3 fixtures: tokenizers 0.21.4, transformers 4.52.4.)
"""
import argparse
import ctypes
import json
import os
import random
import subprocess
import sys
import unicodedata

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["qwen3", "llama3", "gemma3"]

MC_PROMPT = (
    "Accurately answer the following question:\n\n"
    "Which gas makes up most of the Earth's atmosphere?\n\n"
    "Choices:\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\n\n\n"
    "Instructions:\n"
    "- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    '- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n'
    "- Do not include any explanations, additional text, or punctuation besides the answer.\n\n"
    "The correct answer is"
)
GSM8K_PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n"
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in May. "
    "How many clips did Natalia sell altogether in April and May?\n\n"
    'Please think step by step and explain your reasoning. Remember to put your answer on its own line after "Answer:", '
    "and you do not need to use a \\boxed command."
)

# The Unicode-version gap tables of model/kw_tokenizer.c (kept in sync by --unicode-tables); every code point they
# name gets probe cases.
EXTRA_LETTERS = [
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3),
    (0x11BC0, 0x11BE0), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
    (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB),
    (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
]
EXTRA_NUMBERS = [
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59), (0x16130, 0x16139),
    (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
]
NFC_UNKNOWN = [
    (0x7FD, 0x7FD), (0x898, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xC3C, 0xC3C), (0xD3B, 0xD3C), (0xEBA, 0xEBA),
    (0x1715, 0x1715), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFA), (0xA82C, 0xA82C), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC),
    (0x10EFD, 0x10EFF), (0x10F46, 0x10F50), (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B),
    (0x1145E, 0x1145E), (0x11839, 0x1183A), (0x11938, 0x11938), (0x1193D, 0x1193E), (0x11943, 0x11943),
    (0x119E0, 0x119E0), (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99), (0x11D42, 0x11D42),
    (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x11F41, 0x11F42), (0x16FF0, 0x16FF1), (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF),
]


def probe(c):
    """One string that puts code point c in every context the Split regex and NFC distinguish."""
    return (f"a{c}b {c}{c}1{c}\n{c} {c}x'{c}.{c}{c}\t{c}'s {c}{c}{c}{c}1{c}2 {c}\n {c}{c}  a{c}\u0323 e{c}\u0301")


# ---------------------------------------------------------------------------------------------------------------
# Cases


def texts(corpus):
    t = list(corpus)
    t += [
        # multilingual
        "中文分词测试：今天天气很好，我们去公园散步吧。",
        "日本語のテキスト、ひらがなとカタカナと漢字。東京タワー",
        "한국어 문장입니다. 안녕하세요!",
        "مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥ و 12345.",
        "שלום עולם! זהו טקסט בעברית.",
        "हिन्दी में एक वाक्य। नमस्ते दुनिया",
        "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "Русский текст: Съешь же ещё этих мягких французских булок.",
        "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
        "Tiếng Việt có nhiều dấu: Nguyễn Văn Đức, phở, bánh mì.",
        "Türkçe: İstanbul, ıspanak, IĞDIR, ığdır",
        "Deutsch: Straße, GRÜSSE, Maß, ẞ",
        "Français: «Ça va?» — l'été, où, naïve, cœur.",
        "Español: ¿Qué tal? ¡Muy bien! Año, niño.",
        "Polski: Zażółć gęślą jaźń.",
        "Ελληνικά ΣΊΣΥΦΟΣ σίσυφος ς",
        "Mixed: English中文日本語한국어العربية",
        # emoji
        "Emoji: 😀😃😄 👍🏽 👩‍👩‍👧‍👦 👨🏿‍💻 🏳️‍🌈 🇫🇷🇯🇵 1️⃣ #️⃣ ❤️",
        "👩‍❤️‍💋‍👨",
        "🫠🫡🪿 (Unicode 14-15 emoji)",
        "text😀text 😀 text",
        "\U0001F600" * 10,
        # NFC
        "e\u0301 cafe\u0301 re\u0301sume\u0301",
        "A\u030A \u212B \u00C5",
        "\u1E9B\u0323 \u0071\u0307\u0323 a\u0301\u0323 a\u0323\u0301",
        "\u1100\u1161\u11A8 \uAC00\u11A8 \u1100\u1161",
        "\uFB01 \uFB00 \u2126 \u00B5 \u212A",
        "\u0958 \u0915\u093C \u09DC",
        "Nguye\u0302\u0303n Va\u0306n",
        "o\u0308\u0304 \u022B \u1E4D",
        "\u0041\u0300\u0041\u0301\u0041\u0302\u0041\u0303\u0041\u0308",
        "\u0301 leading combining mark",
        "\u0338= \u226E <\u0338",
        "\u0F73 \u0F75 \u0F81 \u0344",
        "\U0001D15E \U0001D160 \u2ADC",
        # numbers
        *["7" * n for n in range(1, 26)],
        *[" " + "1234567890"[: n] for n in range(1, 11)],
        "x" + "9" * 7 + "y",
        "3.14159265358979 -0.5 +42 1e-9 6.02e23 0x1F 0b1010 1,000,000 1_000_000",
        "１２３ ４５６ ٠١٢٣ ۴۵۶ ߀߁ ²³ ½ ¾ Ⅻ ⅻ ① ⑩ 〇 零",
        "abc123def 123abc abc123 a1b2c3",
        "2026-11-23T13:45:00Z 12:30 v1.2.3 192.168.0.1",
        "$19.99 €5,00 £3 ¥100 ₹500 ₿0.001",
        # contractions
        "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D",
        "'Ll 'lL 'Re 'vE 'Ve",
        "don't DON'T Don'T we'LL they'RE I'M she'D it'S",
        "’s ’ll it’s (curly)",
        "''s '''ll 's's",
        "'sup 'tis 'twas rock'n'roll o'clock",
        "'ſ 'ſt (long s folds to s)",
        "x's y'S 1's !'s",
        "'",
        "''",
        # whitespace
        " ",
        "  ",
        "   ",
        *[" " * n + "x" for n in range(1, 9)],
        *["x" + " " * n for n in range(1, 9)],
        *["a" + " " * n + "b" for n in range(1, 9)],
        "\t",
        "\t\t",
        " \t ",
        "a\tb\t\tc",
        "\n",
        "\n\n",
        "\n\n\n\n",
        "\r",
        "\r\n",
        "\r\n\r\n",
        "\r\r\n\n",
        "a\r\nb\rc\nd",
        "line \n line\n\n  indented\n\t\ttabbed",
        "trailing   \n",
        " \n \n ",
        "x \n\n y",
        "\u00A0",
        "a\u00A0b",
        "a \u00A0 b",
        "\u3000",
        "全角\u3000スペース\u3000\u3000です",
        "\u2028\u2029",
        "a\u0085b",
        "\x0b\x0c",
        "a\x0b b\x0cc",
        "\u2000\u2001\u2002\u2003\u2009\u200a\u202f\u205f",
        "zero\u200bwidth\u200cjoiner\u200dx",
        "mongolian\u180evowel \u180e",
        "\ufeffBOM at start",
        "   leading and trailing   ",
        "\t\n \r\n\t",
        # code
        "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
        "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
        "<html><body class=\"x\">Hello &amp; <b>bold</b></body></html>",
        "https://example.com/path?q=1&r=%20x#frag user@example.org",
        "regex: ^(?:[a-z0-9_-]+\\.)*[a-z]{2,}$ \\d+\\s*",
        "| col1 | col2 |\n|------|------|\n| a    | b    |",
        "$$\\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}$$",
        "    indented code\n        more\n",
        "x = y != z && a || b; i++; --j; a->b; c::d; e => f",
        "SELECT * FROM t WHERE id = 1;",
        "#!/bin/bash\nfor i in $(seq 1 10); do echo \"$i\"; done",
        "Ünïcödé_ïdéntïfïér = 1",
        # punctuation
        "!!!???...,,,;;;:::",
        "...",
        "—–-‒―",
        "«»‹›„“”‘’",
        "()[]{}<>",
        "@#$%^&*_+=~`|\\/",
        "a.b,c;d:e!f?g",
        "¿¡",
        "•◦‣⁃",
        "©®™℠",
        "←↑→↓↔⇒∀∃∈∉∑∏√∞≈≠≤≥",
        "┌─┐│└┘",
        # special tokens in text
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "<|endoftext|><|endoftext|>",
        "a<|endoftext|>b",
        " <|im_end|> ",
        "<|im_end|><|im_start|>",
        "<think>\n\n</think>\n\n",
        "<think>reasoning</think>answer",
        "</think>",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<tool_response>ok</tool_response>",
        "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|><|reserved_special_token_250|>",
        "<|im_start",
        "<|im_start|",
        "im_start|>",
        "<|IM_START|>",
        "< |im_start|>",
        "<<|im_start|>>",
        "<|im_start|><|im_start",
        "<think",
        "<think >",
        "<<think>>",
        "<|eot_id",
        "<|begin_of_text",
        "<|",
        "|>",
        "<>",
        # unusual and invalid-looking
        "\\xff\\xfe\\x00",
        "Ã© Ã¨ â€™ mojibake",
        "\ufffd",
        "a\ufffdb\ufffd\ufffd",
        "\ufffe\uffff",
        "\U0010FFFF \U000F0000 \ue000",
        "\x00",
        "a\x00b",
        "\x01\x02\x03\x1b[31mred\x1b[0m\x7f",
        "\ud7ff\ue000",
        "\u0000\u0000",
        # long words
        "a" * 1000,
        "supercalifragilisticexpialidocious" * 20,
        "中" * 1500,
        "天气很好" * 300,
        "!" * 500,
        " " * 2000,
        "\n" * 300,
        "1" * 2000,
        "ab" * 700,
        "🙂" * 400,
        "x" + " " * 300 + "y",
        "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
        "A" * 300 + "'S",
        # prompts
        MC_PROMPT,
        GSM8K_PROMPT,
        "Accurately answer the following question:\n\nWhat is 2+2?\n\nChoices:\nA. 3\nB. 4\nC. 5\nD. 22\n\n\n",
    ]
    # Unicode-version gap probes: first, middle and last code point of every table range, and U+180E.
    for table in (EXTRA_LETTERS, EXTRA_NUMBERS, NFC_UNKNOWN):
        for lo, hi in table:
            for cp in sorted({lo, (lo + hi) // 2, hi}):
                t.append(probe(chr(cp)))
    t.append(probe("\u180e"))
    # Random mixtures.
    rng = random.Random(20261123)
    pieces = (
        list("abcXYZ019 \t\n\r.,'!?-_") + ["'s", "'LL", "  ", "\r\n", "\u00a0", "\u3000", "\u0301", "\u0323"]
        + list("中文日本한국ñéü") + ["😀", "👩‍💻", "🇫🇷", "\ufffd", "\u200b", "\u180e", "１", "٣", "½"]
        + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<|eot_id|>", "<|begin_of_text|>",
           "<|im_", "<|", "|>", "<think"]
    )
    for _ in range(200):
        t.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))))
    return t


# Gemma 3's added tokens and SentencePiece specifics, for gemma_texts.
GEMMA_ADDED = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>",
               "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<unused0>", "<unused99>", "<unused6241>"]
GEMMA_NEAR = ["<start_of_turn", "start_of_turn>", "<unused", "<unused6242>", "<0x41>", "<0x0A>", "<0xZZ>", "<0x",
              "▁", "▁▁", " ▁", "▁ ", "<", ">", "<<bos>>", "<bos", "[multimodal"]


def gemma_texts(tok, rng):
    """Cases for a SentencePiece-style vocabulary: runs of every whitespace kind (the user-defined pieces), characters
    the vocabulary lacks (byte fallback), Gemma's added tokens and near misses, random vocabulary pieces glued
    together (what real text tokenizes into), and random mixtures of all of it."""
    t = []
    for ws in (" ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2581"):
        for n in list(range(1, 34)) + [40, 63, 64, 100]:
            t.append(ws * n)
            t.append("a" + ws * n + "b")
            t.append(ws * n + "x" + ws * (n % 5))
    for s in GEMMA_ADDED + GEMMA_NEAR:
        t += [s, "a" + s + "b", " " + s + " ", s + s, "\n" + s + "\n", s + "\u2581x"]
    # characters missing from the vocabulary take the byte fallback (probed: HF gives <0xXX> ids for them)
    vocab = tok.get_vocab()
    missing = []
    for cp in list(range(0x01, 0x20)) + list(range(0x7F, 0xA0)) + list(range(0xE000, 0xE100)) + \
            list(range(0x20000, 0x20400)) + list(range(0xF0000, 0xF0040)) + list(range(0x1D400, 0x1D480)):
        c = chr(cp)
        if c not in vocab:
            missing.append(c)
    print(f"gemma3: {len(missing)} probed characters are missing from the vocabulary (byte fallback)")
    for i in range(0, len(missing), 7):
        chunk = "".join(missing[i:i + 7])
        t += [chunk, "a" + chunk + " b", " " + chunk[0] + "x" + chunk[-1]]
    pieces = [p for p in vocab if not (p.startswith("<") and p.endswith(">"))]
    pieces.sort()
    for _ in range(1500):
        k = rng.randint(1, 12)
        t.append("".join(rng.choice(pieces) for _ in range(k)).replace("\u2581", " "))
    mix = (list("abcXYZ019 \t\n\r.,'!?-_") + ["  ", "   ", "\n\n", "\t\t", "\u2581", "\u00a0", "\u3000"]
           + list("中文日本한국ñéü") + ["😀", "👩‍💻", "🇫🇷", "\ufffd", "\u200b", "\x01", "\x7f", "\ue000",
                                       "\U00020001", "\U000F0001", "𝐀"]
           + GEMMA_ADDED + GEMMA_NEAR)
    for _ in range(1500):
        t.append("".join(rng.choice(mix) for _ in range(rng.randint(1, 40))))
    return t


def decode_cases(tok, rng):
    """Id sequences: prefixes and single tokens of texts that split UTF-8 characters, random sequences."""
    cases = []
    for s in ["中文😀", "👩‍👩‍👧‍👦", "é\u0301ñ", "🇫🇷🇯🇵", "ภาษาไทย", "<|im_start|>中<|im_end|>", "a😀<|eot_id|>b"]:
        ids = tok.encode(s, add_special_tokens=False).ids
        for i in range(1, len(ids) + 1):
            cases.append(ids[:i])
        for i in range(len(ids)):
            cases.append([ids[i]])
            cases.append(ids[i:])
        cases.append(ids[::-1])
    n = tok.get_vocab_size(with_added_tokens=True)
    specials = [i for i in range(n) if tok.id_to_token(i) is not None and is_special(tok, i)]
    for _ in range(150):
        k = rng.randint(1, 12)
        seq = [rng.randrange(n) for _ in range(k)]
        if rng.random() < 0.3:
            seq.insert(rng.randrange(len(seq) + 1), rng.choice(specials))
        cases.append(seq)
    # Single tokens: every added token, a sample of the vocabulary, and tokens that are not whole UTF-8.
    singles = set(tok.get_added_tokens_decoder().keys())
    singles.update(range(0, n, 499))
    partial = [i for i in range(0, n) if "\ufffd" in tok.decode([i], skip_special_tokens=False)]
    singles.update(rng.sample(partial, min(300, len(partial))))
    cases += [[i] for i in sorted(singles)]
    byte_ids = [tok.token_to_id("<0x%02X>" % b) for b in range(256)]
    if all(i is not None for i in byte_ids):
        # SentencePiece byte fallback: runs of byte tokens, valid UTF-8 or not, between other tokens
        word = tok.token_to_id("\u2581the")
        for _ in range(300):
            seq = []
            for _ in range(rng.randint(1, 6)):
                r = rng.random()
                if r < 0.3:
                    seq += [byte_ids[b] for b in "é中😀".encode()[rng.randrange(0, 9):][:rng.randint(1, 4)]]
                elif r < 0.6:
                    seq += [byte_ids[rng.randrange(256)] for _ in range(rng.randint(1, 4))]
                elif r < 0.8:
                    seq.append(word)
                else:
                    seq.append(rng.choice(specials))
            cases.append(seq)
    return cases


_ADDED = {}


def is_special(tok, i):
    if id(tok) not in _ADDED:  # get_added_tokens_decoder() builds a dict: once per tokenizer (Gemma has 6415)
        _ADDED[id(tok)] = (tok, tok.get_added_tokens_decoder())
    t = _ADDED[id(tok)][1].get(i)
    return t is not None and t.special


def fnv1a64(data, h=0xCBF29CE484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def single_decode_hash(tok):
    """FNV-1a 64 over, for every id in order, its decode([id]) as UTF-8, each preceded by its byte length as 4 bytes
    little-endian. The C test computes the same and must agree."""
    n = tok.get_vocab_size(with_added_tokens=True)
    buf = bytearray()
    for i in range(n):
        d = tok.decode([i], skip_special_tokens=False).encode("utf-8")
        buf += len(d).to_bytes(4, "little") + d
    return n, fnv1a64(buf)


def put_str(row, key, s):
    if "\x00" in s:
        row[key + "_hex"] = s.encode("utf-8").hex()
    else:
        row[key] = s


def put_decodes(tok, row, ids, text):
    """Adds "decoded" (left out when it equals the text) and "decoded_skip" (left out when it equals "decoded")."""
    dec = tok.decode(ids, skip_special_tokens=False)
    skip = tok.decode(ids, skip_special_tokens=True)
    if dec != text:
        put_str(row, "decoded", dec)
    if skip != dec:
        put_str(row, "decoded_skip", skip)


def c_json_string(s):
    """JSON string literal exactly as common/kw_json.c kw_json_append_string writes it (UTF-8 kept raw)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def generate(out_dir, only=None):
    with open(os.path.join(out_dir, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    for name in NAMES:
        if only and name not in only:
            continue
        tok = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizers", name, "tokenizer.json"))
        # The JS-port fixtures against HF.
        disagree = 0
        with open(os.path.join(out_dir, f"{name}.jsonl"), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids = tok.encode(row["text"], add_special_tokens=False).ids
                if ids != row["ids"] or tok.decode(ids, skip_special_tokens=False) != row["decoded"]:
                    disagree += 1
                    print(f"{name}: JS fixture disagrees with HF for {row['text']!r}", file=sys.stderr)
        print(f"{name}: {disagree} JS fixture lines disagree with HF")

        rng = random.Random(7 + len(name))
        rows = []
        extra = gemma_texts(tok, random.Random(20260301)) if name == "gemma3" else []
        for s in texts(corpus) + extra:
            ids = tok.encode(s, add_special_tokens=False).ids
            row = {}
            put_str(row, "text", s)
            row["ids"] = ids
            put_decodes(tok, row, ids, s)
            rows.append(row)
        for ids in decode_cases(tok, rng):
            row = {"ids": ids}
            put_decodes(tok, row, ids, None)
            rows.append(row)
        n, h = single_decode_hash(tok)
        rows.append({"single_decode_fnv1a64": "%016x" % h, "n_ids": n})
        path = os.path.join(out_dir, f"hf_{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} cases")

        # The command line's exact output for the shared corpus.
        with open(os.path.join(out_dir, f"cli_{name}.ids"), "w", encoding="utf-8", newline="\n") as f_ids, open(
            os.path.join(out_dir, f"cli_{name}.decoded"), "w", encoding="utf-8", newline="\n"
        ) as f_dec:
            for s in corpus:
                ids = tok.encode(s, add_special_tokens=False).ids
                f_ids.write("[" + ",".join(str(i) for i in ids) + "]\n")
                f_dec.write(c_json_string(tok.decode(ids, skip_special_tokens=False)) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece-style variants and the array constructor

SPM_VOCAB_BELOW = 2500  # the variants keep Gemma's ids below this (specials, whitespace runs, bytes, common pieces)

GEMMA_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
LLAMA2_DECODER = {"type": "Sequence", "decoders": GEMMA_DECODER["decoders"] + [
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
REPLACE_SPACE = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


def spm_variants(gemma):
    """Small tokenizer.json files cut from Gemma's (ids below SPM_VOCAB_BELOW and the merges among them), one per
    normalizer / pre-tokenizer / decoder / model option the SentencePiece-style loader implements."""
    model = gemma["model"]
    vocab = {p: i for p, i in model["vocab"].items() if i < SPM_VOCAB_BELOW}
    merges = [m for m in model["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    added = [a for a in gemma["added_tokens"] if a["id"] < SPM_VOCAB_BELOW]

    def make(normalizer, pre, decoder, **model_opts):
        t = dict(gemma)
        t["added_tokens"] = added
        t["normalizer"] = normalizer
        t["pre_tokenizer"] = pre
        t["decoder"] = decoder
        t["post_processor"] = None
        m = dict(model)
        m["vocab"] = vocab
        m["merges"] = merges
        m.update(model_opts)
        t["model"] = m
        return t

    def meta(scheme, split):
        return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}

    # unk without byte fallback: the vocabulary lacks most CJK, so unk (fused or not) shows
    return {
        "meta_first_split": make(None, meta("first", True),
                                 {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                  "split": True}),
        "meta_always_nosplit": make(None, meta("always", False), LLAMA2_DECODER),
        # what kw_tokenizer_from_spm builds with add_space_prefix (LlamaConverter's tokenizer.json, legacy=False)
        "meta_first_nosplit": make(None, meta("first", False), LLAMA2_DECODER),
        "meta_never_split": make(None, meta("never", True),
                                 {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never",
                                  "split": True}),
        "meta_legacy": make(None, {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
                            {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}),
        "prepend_replace": make({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                                     REPLACE_SPACE]}, None, LLAMA2_DECODER),
        "unk_fused": make(REPLACE_SPACE, None, GEMMA_DECODER, byte_fallback=False, fuse_unk=True),
        "unk_unfused": make(REPLACE_SPACE, None, GEMMA_DECODER, byte_fallback=False, fuse_unk=False),
        "ignore_merges": make(REPLACE_SPACE, None, GEMMA_DECODER, ignore_merges=True),
    }


def spm_fixtures(out_dir):
    """The variant tokenizers (tests/data/tokenizer/spm_variants/<name>/tokenizer.json) and their HF cases."""
    with open(os.path.join(ROOT, "models", "tokenizers", "gemma3", "tokenizer.json"), encoding="utf-8") as f:
        gemma = json.load(f)
    with open(os.path.join(out_dir, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    rng = random.Random(77)
    cases = [c for c in texts(corpus) if len(c) <= 200]  # the long-word cases are hf_gemma3.jsonl's business
    # text that starts with an added token, whitespace at every edge, and repeated replacements
    cases += ["<bos>hello", "<start_of_turn>user\n hi", " lead", "  two", "x<end_of_turn> y", "\u2581x", "\u2581",
              "a\u2581\u2581b", " \u2581 ", "中文 unk 日本語テキスト", "中中 中", "ab中cd中中ef"]
    for name, t in spm_variants(gemma).items():
        folder = os.path.join(out_dir, "spm_variants", name)
        os.makedirs(folder, exist_ok=True)
        text = json.dumps(t, ensure_ascii=False, separators=(",", ":"))
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        tok = Tokenizer.from_str(text)
        rows = []
        for c in cases:
            ids = tok.encode(c, add_special_tokens=False).ids
            row = {}
            put_str(row, "text", c)
            row["ids"] = ids
            put_decodes(tok, row, ids, c)
            rows.append(row)
        for ids in decode_cases(tok, rng)[:250]:
            row = {"ids": ids}
            put_decodes(tok, row, ids, None)
            rows.append(row)
        with open(os.path.join(out_dir, f"hf_spm_{name}.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"spm variant {name}: {len(t['model']['vocab'])} pieces, {len(t['model']['merges'])} merges, "
              f"{len(rows)} cases")


def spm_arrays_check(gguf_path):
    """One-off check behind kw_tokenizer_from_spm (needs the `gguf` package and a Gemma 3 GGUF, e.g. from
    `kvwire fetch-model gemma-3-270m`): the GGUF's pieces, scores and types, with spaces read as U+2581 and control /
    user-defined pieces at score 0, give exactly the merges of Gemma 3's tokenizer.json through transformers'
    generate_merges; so do the arrays test_tokenizer_spm derives from tokenizer.json alone (types from the added
    tokens and the <0xXX> names, normal pieces scored by their order)."""
    import gguf
    import numpy as np
    r = gguf.GGUFReader(gguf_path)
    f = r.fields["tokenizer.ggml.tokens"]
    pieces = [bytes(f.parts[i]).decode("utf-8").replace(" ", "\u2581") for i in f.data]
    scores = [float(r.fields["tokenizer.ggml.scores"].parts[i][0]) for i in r.fields["tokenizer.ggml.scores"].data]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    with open(os.path.join(ROOT, "models", "tokenizers", "gemma3", "tokenizer.json"), encoding="utf-8") as fh:
        t = json.load(fh)
    want = [tuple(m) for m in t["model"]["merges"]]
    inv = {i: p for p, i in t["model"]["vocab"].items()}
    assert pieces == [inv[i] for i in range(len(pieces))], "GGUF pieces differ from tokenizer.json's"

    def generate_merges(score_of):
        vocab = {p: i for i, p in enumerate(pieces)}
        merges = []
        for i, p in enumerate(pieces):
            local = [(p[:k], p[k:], score_of[i]) for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
            local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
            merges.extend(local)
        merges.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
        return [(a, b) for a, b, _ in merges]

    gguf_scores = [0.0 if ty in (3, 4) else sc for sc, ty in zip(scores, types)]
    added = {a["id"] for a in t["added_tokens"]}
    derived, rank = [], 0
    for i, p in enumerate(pieces):
        if i in added or (len(p) == 6 and p.startswith("<0x") and p.endswith(">")):
            derived.append(0.0)
        else:
            derived.append(-float(rank))
            rank += 1
    for name, sc in (("GGUF scores", gguf_scores), ("derived from tokenizer.json", derived)):
        ok = generate_merges(sc) == want
        print(f"{name}: generate_merges {'equals' if ok else 'DIFFERS FROM'} tokenizer.json's {len(want)} merges")
        if not ok:
            return 1
    raw = generate_merges(scores) == want
    print(f"GGUF scores as written (-1000 for control/user-defined): {'equal' if raw else 'differ'} (expected: differ)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Unicode tables and the exhaustive check


def hf_classes():
    """HF's class of every code point under the Split regex: L, N, S(pace), R (\\r \\n), O(ther), - (surrogate)."""
    q = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizers", "qwen3", "tokenizer.json")).pre_tokenizer
    ll = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizers", "llama3", "tokenizer.json")).pre_tokenizer
    out = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if c in "\r\n":
            out[cp] = "R"
        elif c == " ":
            out[cp] = "S"
        elif len(q.pre_tokenize_str("a" + c)) == 1:
            out[cp] = "L"
        elif len(ll.pre_tokenize_str(c * 4)) == 2:
            out[cp] = "N"
        elif len(q.pre_tokenize_str("x" + c + "!")) == 3:
            out[cp] = "S"
        else:
            out[cp] = "O"
    return out


def ranges(cps):
    r = []
    for cp in sorted(cps):
        if r and r[-1][1] == cp - 1:
            r[-1][1] = cp
        else:
            r.append([cp, cp])
    return r


def print_table(name, cps):
    items = [f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges(cps)]
    print(f"static const uint32_t {name}[][2] = {{")
    for i in range(0, len(items), 5):
        print("    " + ", ".join(items[i : i + 5]) + ",")
    print("};")


def unicode_tables():
    cls = hf_classes()
    # PCRE2 10.42's \p{L} / \p{N} use Unicode 14.0, the version of this Python's unicodedata.
    assert unicodedata.unidata_version == "14.0.0", "run with a Python whose unicodedata is Unicode 14.0"
    letters = [cp for cp, k in cls.items() if k == "L" and not unicodedata.category(chr(cp)).startswith("L")]
    numbers = [cp for cp, k in cls.items() if k == "N" and not unicodedata.category(chr(cp)).startswith("N")]
    lost = [cp for cp, k in cls.items() if k not in "LN" and unicodedata.category(chr(cp))[0] in "LN"]
    spaces = [cp for cp, k in cls.items() if k in "SR"]
    print_table("kw_tok_extra_letters", letters)
    print_table("kw_tok_extra_numbers", numbers)
    print("/* HF whitespace (\\s): " + " ".join("U+%04X" % c for c in spaces) + " */")
    if lost:
        print("/* WARNING: letters/numbers in Unicode 14 that HF does not treat as such: %d */" % len(lost))
    # NFC: code points where HF's normalizer and utf8proc disagree in some context.
    lib = ctypes.CDLL("libutf8proc.so.2")
    libc = ctypes.CDLL("libc.so.6")
    for f in (lib.utf8proc_NFC, lib.utf8proc_NFD):
        f.restype = ctypes.c_void_p
        f.argtypes = [ctypes.c_char_p]
    libc.free.argtypes = [ctypes.c_void_p]

    def up(f, s):
        p = f(s.encode("utf-8"))
        r = ctypes.string_at(p).decode("utf-8")
        libc.free(p)
        return r

    from tokenizers import normalizers

    hf = normalizers.NFC()
    bad = []
    for cp in range(1, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        d = up(lib.utf8proc_NFD, c)
        ctx = (c, d, "a" + c + "\u0323", "a" + c + "\u0301", "a" + c + "\u0334", "a\u0323" + c, d + "\u0301", "e" + c,
               c + "\u0301")
        if any(hf.normalize_str(s) != up(lib.utf8proc_NFC, s) for s in ctx):
            bad.append(cp)
    print_table("kw_tok_nfc_unknown", bad)


def exhaustive(kvwire):
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    inv = {chr(c): b for b, c in zip(bs, cs)}
    strings = [probe(chr(cp)) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    payload = "".join(json.dumps(s) + "\n" for s in strings).encode("utf-8")
    failures = 0
    for name in NAMES:
        path = os.path.join(ROOT, "models", "tokenizers", name)
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        res = subprocess.run([kvwire, "tokenize", "--tokenizer", path, "--pieces"], input=payload,
                             stdout=subprocess.PIPE, check=True)
        lines = res.stdout.decode("utf-8").split("\n")[:-1]  # not splitlines(): U+2028 etc. are raw in the JSON
        assert len(lines) == len(strings)
        bad = 0
        for s, line in zip(strings, lines):
            n = tok.normalizer.normalize_str(s) if tok.normalizer else s
            want = [bytes(inv[ch] for ch in p).decode("utf-8") for p, _ in tok.pre_tokenizer.pre_tokenize_str(n)]
            if want != json.loads(line):
                bad += 1
                if bad <= 5:
                    print(f"{name}: pieces differ for {s[:20]!r}", file=sys.stderr)
        print(f"{name}: {bad} of {len(strings)} probe strings pre-tokenize differently")
        failures += bad
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "tokenizer"))
    ap.add_argument("--unicode-tables", action="store_true")
    ap.add_argument("--exhaustive", metavar="KVWIRE")
    ap.add_argument("--only", help="comma-separated tokenizer names to regenerate (default: all)")
    ap.add_argument("--check-gguf", metavar="GGUF", help="spm_arrays_check against a Gemma 3 GGUF, then exit")
    args = ap.parse_args()
    if args.unicode_tables:
        unicode_tables()
        return 0
    if args.exhaustive:
        return exhaustive(args.exhaustive)
    if args.check_gguf:
        return spm_arrays_check(args.check_gguf)
    only = set(args.only.split(",")) if args.only else None
    generate(args.out, only)
    if only is None or "spm" in only:
        spm_fixtures(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
