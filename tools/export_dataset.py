#!/usr/bin/env python3
"""export_dataset.py: writes a benchmark dataset as the JSONL kvload reads (one Hugging Face row per line, as the
`datasets` library gives it, plus a "subject" field for the datasets that have one configuration per subject).

    python3 tools/export_dataset.py openbookqa --out data/openbookqa.jsonl
    python3 tools/export_dataset.py mmlu-redux --out data/mmlu_redux.jsonl [--subjects anatomy,virology]
    python3 tools/export_dataset.py ceval --out data/ceval_val.jsonl            # the validation split (labelled)
    python3 tools/export_dataset.py ai2-arc --out data/arc_challenge.jsonl
    python3 tools/export_dataset.py gsm8k --out data/gsm8k.jsonl

The sources and splits are those of the C2C evaluator (c2c_spec.md §5.2), except C-Eval, whose test labels are not
public: the reference's code reads `test` and so skips every item; this exports `val` (1346 items) unless --split
says otherwise. Rows are written unchanged (no filtering): kvload applies the reference's skip rules itself and
records what it skipped and why. Needs `pip install datasets` and network access to the Hugging Face Hub (or its
cache); kvload and the tests never run this script.
"""
import argparse
import json
import sys

# key -> (Hugging Face id, configurations or None for "every configuration is a subject", default split)
SOURCES = {
    "mmlu-redux": ("edinburgh-dawg/mmlu-redux-2.0", None, "test"),
    "openbookqa": ("allenai/openbookqa", ["main"], "test"),
    "ai2-arc": ("allenai/ai2_arc", ["ARC-Challenge"], "test"),
    "ceval": ("ceval/ceval-exam", None, "val"),
    "gsm8k": ("openai/gsm8k", ["main"], "test"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(SOURCES))
    ap.add_argument("--out", required=True, help="the JSONL file to write")
    ap.add_argument("--split", help="override the split (default: the evaluator's; C-Eval: val)")
    ap.add_argument("--subjects", help="comma-separated subset of the subjects (MMLU-Redux, C-Eval)")
    ap.add_argument("--limit", type=int, default=0, help="at most N rows per subject (0: all)")
    args = ap.parse_args()

    try:
        import datasets
    except ImportError:
        sys.exit("export_dataset.py: the `datasets` package is not installed (pip install datasets)")

    hf_id, configs, split = SOURCES[args.dataset]
    split = args.split or split
    per_subject = configs is None
    if per_subject:
        configs = sorted(datasets.get_dataset_config_names(hf_id))
        if args.subjects:
            wanted = args.subjects.split(",")
            unknown = [s for s in wanted if s not in configs]
            if unknown:
                sys.exit(f"export_dataset.py: unknown subjects {unknown}; known: {configs}")
            configs = wanted

    total = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for config in configs:
            ds = datasets.load_dataset(hf_id, config, split=split)
            n = 0
            for row in ds:
                if args.limit and n >= args.limit:
                    break
                row = dict(row)
                if per_subject:
                    row = {"subject": config, **row}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            print(f"{hf_id} {config} {split}: {n} rows", file=sys.stderr)
            total += n
    print(f"wrote {total} rows to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
