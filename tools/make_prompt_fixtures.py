#!/usr/bin/env python3
"""make_prompt_fixtures.py: prompts made by the C2C reference's own prompt code, for tests/c2c.

Takes `build_prompt` from rosetta/utils/evaluate.py and the `_format_<dataset>_example` methods of the evaluator in
script/evaluation/unified_evaluator.py (github.com/thu-nics/C2C), runs them on the items below and writes
tests/data/c2c/prompts.jsonl, one case per line:
  {"dataset": name, "use_cot": bool, "use_template": bool, "item": {...}, "prompt": str}
  {"dataset": "build_prompt", "question": str, "choices": str, "use_cot": bool, "use_template": bool, "prompt": str}

The reference code is NOT part of this repository: pass the paths of checked-out files. Only the needed functions are
compiled (with ast), so the reference's heavy imports are not needed.

    python3 tools/make_prompt_fixtures.py --evaluate C2C/rosetta/utils/evaluate.py \\
        --unified C2C/script/evaluation/unified_evaluator.py [--out tests/data/c2c]
"""
import argparse
import ast
import json
import os
import sys
import types
from typing import Any, Dict, List, Optional, Tuple


def compile_functions(path, names, inside_class=None, extra_ns=None):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    body = tree.body
    if inside_class:
        classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == inside_class]
        if not classes:
            sys.exit(f"{path}: class {inside_class} not found")
        body = classes[0].body
    wanted = [n for n in body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        sys.exit(f"{path}: functions not found: {sorted(missing)}")
    ns = {"Dict": Dict, "Any": Any, "List": List, "Optional": Optional, "Tuple": Tuple}
    ns.update(extra_ns or {})
    exec(compile(ast.Module(body=wanted, type_ignores=[]), path, "exec"), ns)
    return {n: ns[n] for n in names}


FORMATTERS = {
    "mmlu-redux": "_format_mmlu_redux_example",
    "openbookqa": "_format_openbookqa_example",
    "ai2-arc": "_format_ai2_arc_example",
    "ceval": "_format_ceval_example",
    "mmmlu": "_format_mmmlu_example",
    "mmlu-pro": "_format_mmlu_pro_example",
    "gsm8k": "_format_math_problem_example",
    "math-500": "_format_math_problem_example",
}

ITEMS = [
    ("mmlu-redux", {"question": "Which planet is known as the Red Planet?",
                    "choices": ["Venus", "Mars", "Jupiter", "Saturn"], "answer": 1}),
    ("mmlu-redux", {"question": "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.",
                    "choices": ["0", "1", "2", "3"]}),
    ("mmlu-redux", {"question": "Multi-line\nquestion with \"quotes\" and\ttabs?", "choices": ["", " x ", "y\n", "z"]}),
    ("mmlu-redux", {"question": "Tricky {{choices}} inside and {{question}} too", "choices": ["one", "two"]}),
    ("mmlu-redux", {"question": "中文问题：哪个是正确的？", "choices": ["甲", "乙", "丙", "丁"]}),
    ("mmlu-redux", {"question": "", "choices": []}),
    ("openbookqa", {"question_stem": "Sunlight is a source of", "id": "7-980",
                    "choices": {"text": ["heat", "cold", "sound", "gravity"], "label": ["A", "B", "C", "D"]}}),
    ("openbookqa", {"question_stem": "List form", "choices": [{"text": "t1", "label": "A"}, {"label": "B"}, "plain"]}),
    ("openbookqa", {"choices": {"label": ["A"]}}),
    ("ai2-arc", {"question": "Which gas do plants absorb?", "choices": {"text": ["O2", "CO2", "N2"],
                                                                      "label": ["A", "B", "C"]}}),
    ("ai2-arc", {"question": "Five options", "choices": {"text": ["a", "b", "c", "d", "e"],
                                                       "label": ["1", "2", "3", "4", "5"]}}),
    ("ceval", {"question": "下列哪项正确？", "A": "选项一", "B": "", "C": "选项三", "D": "选项四", "answer": "A"}),
    ("ceval", {"question": "Only two", "A": "x", "D": "y"}),
    ("mmmlu", {"Question": "Swali?", "A": "moja", "B": "", "C": "tatu"}),
    ("mmlu-pro", {"question": "Ten at most", "options": [f"opt{i}" for i in range(12)]}),
    ("gsm8k", {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                           "in May. How many clips did Natalia sell altogether in April and May?"}),
    ("gsm8k", {"question": "Braces {question} stay as they are.\n\nTwo lines."}),
    ("gsm8k", {}),
    ("math-500", {"problem": "Compute $\\sqrt{16}$."}),
]

BUILD_PROMPT_CASES = [
    ("Q?", "A. x\nB. y\n"),
    ("", ""),
    ("Q with {{choices}} twice {{choices}}", "A. c\n"),
    ("{{question}}", "{{question}}"),
    ("Question", "not a block"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluate", required=True, help="path of the reference rosetta/utils/evaluate.py")
    ap.add_argument("--unified", required=True, help="path of the reference script/evaluation/unified_evaluator.py")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "c2c"))
    args = ap.parse_args()

    build_prompt = compile_functions(args.evaluate, ["build_prompt"])["build_prompt"]
    methods = compile_functions(args.unified, sorted(set(FORMATTERS.values())), inside_class="UnifiedEvaluator",
                                extra_ns={"build_prompt": build_prompt})
    lines = []
    for dataset, item in ITEMS:
        fmt = methods[FORMATTERS[dataset]]
        for use_cot in (False, True):
            for use_template in (True, False):
                evaluator = types.SimpleNamespace(dataset_name=dataset)
                prompt = fmt(evaluator, item, use_cot, use_template=use_template)
                lines.append({"dataset": dataset, "use_cot": use_cot, "use_template": use_template, "item": item,
                              "prompt": prompt})
    for question, choices in BUILD_PROMPT_CASES:
        for use_cot in (False, True):
            for use_template in (True, False):
                prompt = build_prompt("mmlu-redux", "", question, choices, use_cot, use_template)
                lines.append({"dataset": "build_prompt", "question": question, "choices": choices,
                              "use_cot": use_cot, "use_template": use_template, "prompt": prompt})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=True) + "\n")
    print(f"{len(lines)} prompt cases")


if __name__ == "__main__":
    main()
