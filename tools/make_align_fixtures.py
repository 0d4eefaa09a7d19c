#!/usr/bin/env python3
"""make_align_fixtures.py: token alignment fixtures (tests/data/c2c/align/) from the C2C reference TokenAligner.

Offline tool, run by hand (torch, transformers 4.52.4); the tests never run Python. It needs a checkout of the
reference code, github.com/thu-nics/C2C (package `rosetta`), OUTSIDE this repository:

    git clone https://github.com/thu-nics/C2C /tmp/c2c_ref
    python3 tools/make_align_fixtures.py --c2c-src /tmp/c2c_ref

Nothing of the reference is copied: rosetta.model.aligner.TokenAligner is imported from the checkout and called.

Tokenizers (models/tokenizers/, loaded with transformers.AutoTokenizer, as the reference evaluator loads them):
  qwen3    the Qwen3 tokenizer with its own chat template (tokenizer_config.json)
  qwen25   the same tokenizer files with the Qwen2.5-Instruct template (QWEN25_TEMPLATE of
           tools/make_chat_fixtures.py); Qwen2.5's real vocabulary lacks ids 151665-151668, which no case here uses
  llama32  the Llama-3 tokenizer with the Llama-3.2-Instruct template (LLAMA32_TEMPLATE of tools/make_chat_fixtures.py)
           and eos_token <|eot_id|> as in Llama-3.2-Instruct's tokenizer_config (the local one is a base config);
           TokenAligner then makes pad = eos = 128009. The template's "Today Date" is pinned to DATE by passing
           date_string to every apply_chat_template call (the reference would put the current date there).

Files (one JSON object per line):
  tokens_<slm>_<llm>.jsonl   align_tokens over EVERY id of the receiver (slm) tokenizer, for both strategies:
      {"strategy", "n_ids", "fnv1a64"}     FNV-1a 64 over the aligned ids of 0..n_ids-1 (each int32 little-endian)
      {"strategy", "ids", "aligned"}       the same mapping written out for a sample (specials, added tokens, ids whose
                                           decode holds U+FFFD, multi-candidate ids, every 211th id) for debugging
      {"strategy", "seq", "aligned"}       align_tokens of whole sequences (the tokens of the chat texts below)
  chat_<slm>_<llm>.jsonl     align_chat_messages(messages, add_generation_prompt, enable_thinking, remove_last_surfix):
      {"messages", "add_generation_prompt", "enable_thinking", "remove_last_suffix", "date",
       "recv_text", "sharer_text", "recv_ids", "sharer_ids_first", "sharer_ids_longest",
       "message_mask", "recv_pad", "sharer_pad" (strings of 0/1), "sections": [[type, rs, re, ss, se], ...]
       (type 0 template, 1 message; ranges in the padded streams), "kv": [[length, index], ...]}
      or {..., "error": "<exception>"} where the reference raises (e.g. the section counts differ).
      "kv" is the kv_cache_index the reference evaluator builds from message_mask (unified_evaluator.py
      prepare_model_inputs: a section per run of equal mask, [1,0] for messages, [-1,0] for template tokens).
Pairs: qwen3 -> llama32 (the released Llama-3.2 fuser's pair), llama32 -> qwen3, qwen3 -> qwen25 (same tokenizer).

Usage: python3 tools/make_align_fixtures.py --c2c-src DIR [--out tests/data/c2c/align]
"""
import argparse
import functools
import json
import os
import random
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_chat_fixtures  # noqa: E402  (the Qwen2.5 and Llama-3.2 templates)

DATE = "23 Nov 2026"

MC_TEMPLATE = (
    "Accurately answer the following question:\n\n{question}\n\nChoices:\n{choices}\n"
    "Instructions:\n"
    "- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    '- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n'
    "- Do not include any explanations, additional text, or punctuation besides the answer.\n\n"
    "The correct answer is"
)


def mc(question, options):
    choices = "".join(f"{chr(65 + i)}. {o}\n" for i, o in enumerate(options))
    return MC_TEMPLATE.replace("{question}", question).replace("{choices}", choices)


def U(c):
    return {"role": "user", "content": c}


def S(c):
    return {"role": "system", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def conversations():
    mcs = [
        mc("Which gas makes up most of the Earth's atmosphere?", ["Oxygen", "Nitrogen", "Carbon dioxide", "Argon"]),
        mc("What is 17 * 23?", ["391", "401", "381", "3,910"]),
        mc("下列哪个是中国的首都？", ["上海", "北京", "广州", "深圳"]),
        mc("What does `print(len('héllo'))` output in Python 3?", ["4", "5", "6", "An error"]),
        mc("Which emoji is a 🐍?", ["🐍 snake", "🐢 turtle", "🦎 lizard", "🐊 crocodile"]),
        mc("Sei x = 0,5. Was ist 2x?", ["0,1", "1", "2,5", "10"]),
        mc("Compute 3.14159 × 2^10 − 1e3.", ["2216.99", "3216.99", "1216.99", "216.99"]),
    ]
    convs = [[U(m)] for m in mcs]
    convs += [
        [U("Hello")],
        [U("What is 2+2?")],
        [U("日本語のテキスト、ひらがなとカタカナと漢字。東京タワー")],
        [U("한국어 문장입니다. 안녕하세요!")],
        [U("emoji 👩‍👩‍👧‍👦 and flags 🇫🇷 and 😀😃😄")],
        [U("cafe\u0301 re\u0301sume\u0301 \u1100\u1161\u11a8 (decomposed)")],
        [U("def f(x):\n    return x ** 2  # square\n\nprint(f(3))")],
        [U("if a<b and b>c: print('<|x|>')")],
        [U("int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}")],
        [U("The numbers 1234567890, 3.14159, -0.5, 1e-9 and 6.02e23.")],
        [U("مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥")],
        [S("You are a helpful assistant."), U("Hi there!")],
        [S("Be brief."), U(mcs[0])],
        [U("q1"), A("a1"), U("q2")],
        [S("sys"), U("Tell me a joke."), A("Why did the chicken cross the road?"), U("Why?")],
        [U("What is 2+2?"), A("The answer is 4.")],
        [U(mcs[1]), A("The correct answer is A")],
        [U("Translate: 猫"), A("cat 🐱")],
        [U("<think>not special here</think> text")],
        [U("Specials in content: <|im_start|>user\n<|im_end|> <|endoftext|> <|eot_id|> <|begin_of_text|>")],
        [U("user")],
        [U("system")],
        [U("assistant")],
        [U("Today")],
        [U("December 2023")],
        [U(" Date")],
        [U("x"), A("x"), U("x")],
        [U("  padded  ")],
        [U("trailing newline\n")],
        [U("   ")],
        [U("")],
        [U("a"), A(""), U("b")],
        [U("begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")],
        [U("\u00e9\u0301 e\u0301\u0301")],
        [U("line1\r\nline2\r\n\r\nend")],
        [U("\t tabbed \t content")],
        [U("a" * 300)],
        [U("天气很好" * 40)],
        [U("<|start_header_id|>user<|end_header_id|>")],
        [U("im_start"), A("im_end")],
    ]
    return convs


def fnv1a64_ids(ids):
    h = 0xCBF29CE484222325
    for v in ids:
        for b in int(v & 0xFFFFFFFF).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def load_tokenizers():
    tdir = os.path.join(ROOT, "models", "tokenizers")
    qwen3 = AutoTokenizer.from_pretrained(os.path.join(tdir, "qwen3"))
    qwen25 = AutoTokenizer.from_pretrained(os.path.join(tdir, "qwen3"))
    qwen25.chat_template = make_chat_fixtures.QWEN25_TEMPLATE
    llama = AutoTokenizer.from_pretrained(os.path.join(tdir, "llama3"))
    llama.chat_template = make_chat_fixtures.LLAMA32_TEMPLATE
    llama.eos_token = "<|eot_id|>"
    # pin the date of the Llama template for every caller (TokenAligner does not pass one)
    llama.apply_chat_template = functools.partial(type(llama).apply_chat_template, llama, date_string=DATE)
    return {"qwen3": qwen3, "qwen25": qwen25, "llama32": llama}


def kv_sections(message_mask):
    """The evaluator's kv_cache_index: runs of equal message_mask, [1,0] for messages and [-1,0] for the rest."""
    out = []
    for m in message_mask:
        v = 1 if m else -1
        if out and out[-1][1] == v:
            out[-1][0] += 1
        else:
            out.append([1, v])
    return out


def bits(mask):
    return "".join("1" if m else "0" for m in mask)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--c2c-src", required=True, help="checkout of github.com/thu-nics/C2C (outside this repo)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "c2c", "align"))
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.c2c_src))
    from rosetta.model.aligner import TokenAligner

    os.makedirs(args.out, exist_ok=True)
    toks = load_tokenizers()
    convs = conversations()

    for slm_name, llm_name in (("qwen3", "llama32"), ("llama32", "qwen3"), ("qwen3", "qwen25")):
        slm, llm = toks[slm_name], toks[llm_name]
        aligners = {s: TokenAligner(slm, llm, strategy=s) for s in ("first", "longest")}
        print(f"{slm_name} -> {llm_name}: slm pad {slm.pad_token_id} eos {slm.eos_token_id} bos {slm.bos_token_id} "
              f"unk {slm.unk_token_id} specials {sorted(slm.all_special_ids)[:20]}...; llm pad {llm.pad_token_id} "
              f"eos {llm.eos_token_id} bos {llm.bos_token_id} unk {llm.unk_token_id}")

        # ---- chat alignment
        rows, seqs = [], []
        for messages in convs:
            combos = [(True, False, False), (False, False, False), (True, True, False)]
            if messages[-1]["role"] == "assistant":
                combos.append((False, False, True))
            for gen, thinking, remove_last in combos:
                row = {"messages": messages, "add_generation_prompt": gen, "enable_thinking": thinking,
                       "remove_last_suffix": remove_last, "date": DATE}
                res = {}
                for s, al in aligners.items():
                    try:
                        res[s] = al.align_chat_messages(messages, add_generation_prompt=gen, enable_thinking=thinking,
                                                        return_details=True, remove_last_surfix=remove_last)
                    except Exception as e:  # the reference raises (section mismatch, ...)
                        res[s] = e
                if isinstance(res["first"], Exception):
                    assert isinstance(res["longest"], Exception)
                    row["error"] = f"{type(res['first']).__name__}: {res['first']}"
                    rows.append(row)
                    continue
                a, b = res["first"], res["longest"]
                for key in ("slm_ids_padded", "message_mask", "slm_padding_mask", "llm_padding_mask", "sections",
                            "slm_text", "llm_text"):
                    assert a[key] == b[key], key
                row["recv_text"] = a["slm_text"]
                row["sharer_text"] = a["llm_text"]
                row["recv_ids"] = a["slm_ids_padded"]
                row["sharer_ids_first"] = a["llm_ids_padded"]
                row["sharer_ids_longest"] = b["llm_ids_padded"]
                row["message_mask"] = bits(a["message_mask"])
                row["recv_pad"] = bits(a["slm_padding_mask"])
                row["sharer_pad"] = bits(a["llm_padding_mask"])
                row["sections"] = [[0 if d["type"] == "template" else 1, *d["slm_range"], *d["llm_range"]]
                                   for d in a["sections"]]
                row["kv"] = kv_sections(a["message_mask"])
                rows.append(row)
                seqs.append(slm(a["slm_text"], add_special_tokens=False)["input_ids"])
        path = os.path.join(args.out, f"chat_{slm_name}_{llm_name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} cases, {sum('error' in r for r in rows)} errors")

        # ---- align_tokens over every id (once per distinct tokenizer pair)
        if slm_name == "qwen3" and llm_name == "qwen25":
            continue
        n_ids = len(slm)
        every = list(range(n_ids))
        trows = []
        rng = random.Random(17)
        for s, al in aligners.items():
            al.clear_cache()
            aligned = al.align_tokens(every)
            trows.append({"strategy": s, "n_ids": n_ids, "fnv1a64": "%016x" % fnv1a64_ids(aligned)})
            sample = set(range(0, n_ids, 211)) | set(slm.all_special_ids) | set(range(n_ids - 300, n_ids))
            for i in range(n_ids):
                t = slm.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                if "\ufffd" in t and rng.random() < 0.2:
                    sample.add(i)
            sample = sorted(sample)
            trows.append({"strategy": s, "ids": sample, "aligned": [aligned[i] for i in sample]})
            for seq in seqs[:40]:
                trows.append({"strategy": s, "seq": seq, "aligned": al.align_tokens(seq)})
            n_multi = sum(1 for i in sample if aligned[i] != al.align_tokens([i])[0])
            assert n_multi == 0
        path = os.path.join(args.out, f"tokens_{slm_name}_{llm_name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in trows:
                f.write(json.dumps(row) + "\n")
        print(f"{path}: {len(trows)} rows")


if __name__ == "__main__":
    main()
