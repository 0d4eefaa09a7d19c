#!/usr/bin/env python3
"""make_answer_fixtures.py: expected outputs of the reference answer extractor, for tests/c2c.

Runs `extract_answer_from_content` from the C2C reference (rosetta/utils/evaluate.py of github.com/thu-nics/C2C) on
the inputs listed below and writes
  tests/data/c2c/answer_vectors.jsonl   {"input": str, "hex": utf-8 bytes in hex, "expected": "A".."D" or null}
  tests/data/c2c/answer_inputs.jsonl    one JSON string per line (what `kvwire extract-answer` reads)
  tests/data/c2c/answer_expected.txt    the letter or "null" per line (what it must print)

The reference code is NOT part of this repository: pass the path of a checked-out evaluate.py. Only the function's
source is taken from that file (with ast), so its heavy imports (torch, transformers, rosetta) are not needed.

    python3 tools/make_answer_fixtures.py --evaluate /path/to/C2C/rosetta/utils/evaluate.py [--out tests/data/c2c]

Before writing anything, the script checks the facts about Python's `re` that the C port relies on (the \\s set, \\w as
letters/numbers/_, the IGNORECASE equivalences of ASCII letters, which code points lowercase to ASCII) over all code
points, and stops if any differs.
"""
import argparse
import ast
import json
import os
import random
import re
import sys
import unicodedata


def load_reference(path, names):
    """Compiles only the named top-level functions of the reference module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        sys.exit(f"{path}: functions not found: {sorted(missing)}")
    module = ast.Module(body=wanted, type_ignores=[])
    ns = {"re": re}
    exec("from typing import Dict, Any, List, Tuple, Optional", ns)
    exec(compile(module, path, "exec"), ns)
    return [ns[n] for n in names]


def check_python_facts():
    """The character facts kw_answer.c hard-codes; all must hold for this Python."""
    space = [c for c in range(0x110000) if chr(c).isspace()]
    expected_space = [0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680] + \
        list(range(0x2000, 0x200B)) + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    assert space == expected_space, "str.isspace set differs"
    for c in range(0x110000):
        ch = chr(c)
        assert bool(re.match(r"\s", ch)) == ch.isspace(), hex(c)
        word = unicodedata.category(ch)[0] in "LN" or ch == "_"
        assert bool(re.match(r"\w", ch)) == word, f"\\w differs at {c:#x}"
        if c >= 0x80:
            assert not any(ord(x) < 0x80 for x in ch.lower()) or c in (0x130, 0x212A), f"lower() of {c:#x}"
    extra = {}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        eq = [c for c in range(0x80, 0x110000) if re.match(letter, chr(c), re.IGNORECASE)]
        if eq:
            extra[letter] = eq
    assert extra == {"i": [0x130, 0x131], "k": [0x212A], "s": [0x17F]}, extra
    assert not [c for c in range(0x80, 0x110000) if re.match("[A-D]", chr(c), re.IGNORECASE)]
    assert "\u0130".lower() == "i\u0307" and "\u212a".lower() == "k"


# The 22 vectors of c2c_spec.md §5.6, then our own: anchors, case equivalences, standalone patterns, boundaries next
# to CJK, combining marks, digits and '_', Unicode whitespace, math indicators hidden in words, newlines.
SPEC_INPUTS = [
    "The correct answer is B", "The correct answer is B.", "b", " C.", "answer: c", "Answer: The Civil War",
    "The correct answer is Brazil", "The correct answer is: D", "The correct answer is\n\nA",
    "The correct answer is $\\boxed{A}$", "I think it's a trick question", "A dog is an animal",
    "x-ray is the answer, A", "2+2=4 so the result is d", "None of the above", "Option (C) is correct", "(B)",
    "B) 42", "正确答案是B", "答案：C", "选B。", "",
]

OWN_INPUTS = [
    # anchors
    "Answer: D", "ANSWER:\n\n  c\nB", "answer:\nno letters here\nB", "Your answer: (A)", "The answer is: C",
    "the answer is c, not B", "THE ANSWER IS\tD.", "Correct answer: B) Paris", "correct answer is: a", "Jibu: C",
    "Jibu lako: b", "JIBU SAHIHI: D", "jibu sahihi:\nA", "Response: B", "response: the first", "Choice: D",
    "Option: A is wrong, B is right", "OPTION:c", "Answer: none\nResponse: C", "Answer:C", "answer:   \n\n   \n",
    "Answer: 42\nThe answer is B", "Answer: the one\nOption: D", "The answer is [C]", "The answer isB",
    "My answer: c", "Final Answer: B", "So the Answer: is A", "answer :B", "The answer\nis C",
    # IGNORECASE equivalences in the anchors (long s, Kelvin sign, dotted/dotless i)
    "AN\u017fWER: b", "AN\u017fWER: B", "Jibu la\u212ao: C", "J\u0130BU: D", "J\u0131BU: a", "OPT\u0130ON: B",
    "Respon\u017fe: C", "CHO\u0131CE: A",
    # standalone patterns
    "I pick b)", "It must be d!", "c?", "Maybe a: yes", "Guess: b , then c , then a", "a, b, c, d",
    "So: A. Also B. Finally", "First A, then B , ok", "The pick is\nD", "The pick is\n D .", "x C", "xC",
    "x\u00a0C", "x\u3000C", "x\u2003c", "x\u200bC", "x\x1cB", "x\x85B", "end with A\n", "\n\n  B  \n\n",
    "letters a b c d", "Best is (d).", "B.", "d.", "E", "The letter is e", "ABCD", "abcd", "Ab", "see part (b) here",
    # word boundaries: CJK, combining marks, digits, underscore, accented letters
    "选项B", "选项 B", "答案是 C。", "答案是C", "e\u0301B", "e\u0301 B", "caf\u00e9B", "3B", "B2", "_A", "A_",
    "\u00c9A", "\u0661B", "\u2460C", "(C)\u0301", "\u0391B", "\uff21B", "B\uff0e",
    # has_math / has_answer_indicators
    "Using the rule, it is C", "The single best is B", "x = 5 so b", "x = 5 so the option is b", "5 mod 3 is B",
    "a*b", "a/b = c", "The answer - B", "y^2 is D", "sqrt of A", "Cosine: d", "SAHIH\u0130 b = c",
    "SAHIHI b = c", "J\u0130BU b = c", "\u212aNOW b = c", "ANSWER b = c", "choice b - c", "tan(a)",
    "Response is a + b", "the correct one + C", "+", "-A", "A-", "well-known: B",
    # lowercase articles and fallbacks
    "i think it is a", "a", "It's a cat", "Nothing", "zzz", "DOG", "I'd say Dog", "hmm... D or maybe C?",
    "I choose option C because B is wrong", "Maybe B\nor maybe C", "B\n\nExplanation: because A is wrong",
    "\tB\t", "\u3000C\u3000", "\x1c\x1dA\x1e\x1f", "\u2028D\u2029", "\u00a0\u00a0", " ",
    "x\u0000B", "Answer:\u0000C",
]


def random_inputs(rng, count):
    """Concatenations of fragments that exercise the interactions of the rules above."""
    frags = ["Answer:", "answer", " ", "\n", "\t", "\u3000", "A", "b", "C", "d", "E", ".", ")", "(", ",", "!", "?",
             ":", "-", "+", "=", "x", "The", "option", "is", "sin", "mod", "\u0130", "\u017f", "\u212a", "选",
             "é", "e\u0301", "_", "3", "Response:", "correct", "jibu", "\u00a0", "Brazil", "Dog", "a "]
    out = []
    for _ in range(count):
        n = rng.randint(1, 9)
        out.append("".join(rng.choice(frags) for _ in range(n)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluate", required=True, help="path of the reference rosetta/utils/evaluate.py")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "c2c"))
    ap.add_argument("--random", type=int, default=400, help="number of random fragment strings to add")
    args = ap.parse_args()

    check_python_facts()
    (extract,) = load_reference(args.evaluate, ["extract_answer_from_content"])
    inputs = SPEC_INPUTS + OWN_INPUTS + random_inputs(random.Random(20260514), args.random)
    seen = set()
    inputs = [s for s in inputs if not (s in seen or seen.add(s))]

    spec_expected = ["B", "B", "B", "C", "C", "C", "B", "D", "A", "A", "A", "A", "A", None, None, "C", "B", "B", "B",
                     "C", "B", None]
    os.makedirs(args.out, exist_ok=True)
    vec = open(os.path.join(args.out, "answer_vectors.jsonl"), "w", encoding="utf-8")
    inp = open(os.path.join(args.out, "answer_inputs.jsonl"), "w", encoding="utf-8")
    exp = open(os.path.join(args.out, "answer_expected.txt"), "w", encoding="utf-8")
    for i, s in enumerate(inputs):
        got = extract(s)
        if i < len(spec_expected) and got != spec_expected[i]:
            sys.exit(f"spec vector {s!r}: reference gives {got!r}, spec says {spec_expected[i]!r}")
        vec.write(json.dumps({"input": s, "hex": s.encode("utf-8").hex(), "expected": got}, ensure_ascii=True) + "\n")
        inp.write(json.dumps(s, ensure_ascii=True) + "\n")
        exp.write(("null" if got is None else got) + "\n")
    for f in (vec, inp, exp):
        f.close()
    counts = {}
    for s in inputs:
        r = extract(s)
        counts[r] = counts.get(r, 0) + 1
    print(f"{len(inputs)} vectors ({len(SPEC_INPUTS)} from the spec); outputs: {counts}")


if __name__ == "__main__":
    main()
