#!/usr/bin/env python3
"""make_align_c2c_fixtures.py: end-to-end C2C references with token alignment (a Qwen3 receiver, a Llama sharer with
the real Llama-3 vocabulary) from the C2C reference RosettaModel -> tests/data/c2c/align/c2c_llama.json.

Offline tool, run by hand (torch, transformers 4.52.4); the tests never run Python. Needs a built kvwire (--kvwire)
and a checkout of github.com/thu-nics/C2C OUTSIDE this repository with rosetta/model/wrapper.py of commit d03cc7b
(c2c_spec.md §1.3: HEAD's standard path raises):

    git clone https://github.com/thu-nics/C2C /tmp/c2c_ref
    git -C /tmp/c2c_ref show d03cc7b:rosetta/model/wrapper.py > /tmp/c2c_ref/wrapper_d03cc7b.py
    python3 tools/make_align_c2c_fixtures.py --kvwire build/tools/kvwire --c2c-src /tmp/c2c_ref \\
        --wrapper /tmp/c2c_ref/wrapper_d03cc7b.py

Nothing of the reference is copied: TokenAligner, load_projector and RosettaModel are imported and called.

The models are not committed (they hold the real vocabularies, tens of MB): `kvwire gen-model` makes them from a
seed, and the test makes the same bytes with the library (the fixture records FNV-1a 64 of each written file so the
test can prove it has the same models):
  receiver  gen-model --arch qwen3 --preset tiny --layers 4 --seed 71 --dtype bf16 --tied 0  (vocab 151936, hidden 64;
            untied: with the tied embedding of these small random weights the model only repeats its input token)
  sharer    gen-model --arch llama --preset tiny --layers 2 --seed 72 --dtype bf16   (vocab 128256, hidden 64)
  fuser     gen-fuser --seed 73 --hidden 64 --intermediate 96 (default gates: 0, 1 open, 2 closed, 3 k-only)
Everything runs in fp32 on the CPU (bf16 weights upcast exactly; projectors cast to fp32 as RosettaModel casts them
to the receiver's dtype), so the C side is checked with f32 caches, fp32 projector numerics and unrounded logits.

Each scenario aligns messages with TokenAligner (Qwen3 tokenizer + template, Llama-3 tokenizer + the Llama-3.2-Instruct
template with the date pinned, eos <|eot_id|>), builds the inputs exactly as the reference evaluator's
prepare_model_inputs does for the aligner path (per-model ids and attention masks float(~padding_mask), position_ids
arange, kv_cache_index cut where message_mask changes) and runs RosettaModel.generate(do_sample=False,
max_new_tokens=32). "masked" scenarios instead keep the receiver's pads masked in the decode steps (RosettaModel.forward
for the prompt, then the receiver alone with the full 2D mask): the reference's generate() does not, because its
forward slices the decode mask to [:, :1] (see kw_align.h, KW_ALIGN_PADS_*); both are recorded so the test shows the
difference is real. EOS ids are chosen among ids no scenario produces, so every run gives 32 tokens.

c2c_llama.json: {"models": {name: {file: fnv1a64 hex}}, "eos": [...], "date", "scenarios": [{"name", "messages",
"strategy", "decode_pads" ("reference"|"masked"), "n_prompt", "kv": [[len, index], ...], "recv_pads", "sharer_pads"
(counts), "recv_ids", "sharer_ids" (the aligned streams), "gen_ids": [32], "margin" (the smallest top-2 logit gap over
the steps relative to the step's largest |logit|: fp32 summation-order differences, ~1e-6, cannot flip a token when
it is well above that)}]}
"""
import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_chat_fixtures  # noqa: E402  (the Llama-3.2-Instruct template)
from kw_fixtures import add_reference_args, load_reference_wrapper, relative_top2_margin  # noqa: E402

DATE = "23 Nov 2026"
MAX_NEW = 32
GEN = {
    "receiver": ["--arch", "qwen3", "--preset", "tiny", "--layers", "4", "--seed", "71", "--dtype", "bf16", "--tied", "0"],
    "sharer": ["--arch", "llama", "--preset", "tiny", "--layers", "2", "--seed", "72", "--dtype", "bf16"],
}
FUSER = ["--seed", "73", "--hidden", "64", "--intermediate", "96"]


def fnv1a64_file(path):
    h = 0xCBF29CE484222325
    with open(path, "rb") as f:
        data = f.read()
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


MC = ("Accurately answer the following question:\n\nWhich gas makes up most of the Earth's atmosphere?\n\n"
      "Choices:\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\n\n\nInstructions:\n"
      "- Carefully read the question and all options.\n- Select the single most correct answer.\n"
      '- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n'
      "- Do not include any explanations, additional text, or punctuation besides the answer.\n\n"
      "The correct answer is")

SCENARIOS = [
    ("mc_longest", [{"role": "user", "content": MC}], "longest", "reference"),
    ("mc_longest_masked", [{"role": "user", "content": MC}], "longest", "masked"),
    ("cjk_first", [{"role": "user", "content": "用一句话解释：天空为什么是蓝色的？🌤️ 答案要简短。"}], "first", "reference"),
    ("chat_longest", [{"role": "system", "content": "You are a terse assistant."},
                      {"role": "user", "content": "What is 12 * 12?"},
                      {"role": "assistant", "content": "144."},
                      {"role": "user", "content": "And 13 * 13? Answer with digits only."}], "longest", "reference"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvwire", required=True)
    add_reference_args(ap)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "c2c", "align", "c2c_llama.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    wrapper = load_reference_wrapper(args.c2c_src, args.wrapper)
    from rosetta.model.aligner import TokenAligner
    from rosetta.model.projector import load_projector

    tmp = tempfile.mkdtemp(prefix="kw_align_c2c_")
    dirs = {k: os.path.join(tmp, k) for k in ("receiver", "sharer", "fuser")}
    for k in ("receiver", "sharer"):
        run([args.kvwire, "gen-model", *GEN[k], "--out", dirs[k]])
    print(run([args.kvwire, "gen-fuser", "--receiver", dirs["receiver"], "--sharer", dirs["sharer"], "--out",
               dirs["fuser"], *FUSER]).strip())
    hashes = {k: {f: fnv1a64_file(os.path.join(dirs[k], f)) for f in ("config.json", "model.safetensors")}
              for k in ("receiver", "sharer")}

    recv = AutoModelForCausalLM.from_pretrained(dirs["receiver"], torch_dtype=torch.float32).eval()
    shar = AutoModelForCausalLM.from_pretrained(dirs["sharer"], torch_dtype=torch.float32).eval()
    final = os.path.join(dirs["fuser"], "final")
    pcfg = json.load(open(os.path.join(final, "projector_config.json")))
    n_recv = recv.config.num_hidden_layers
    projectors = []
    for i in range(n_recv):
        p = load_projector(os.path.join(final, f"projector_{i}.json"))
        p.load_state_dict(torch.load(os.path.join(final, f"projector_{i}.pt"), weights_only=True), strict=True)
        projectors.append(p.float().eval())
    pdict = {int(t): {int(s): {int(l): [tuple(x) for x in v] for l, v in m.items()} for s, m in d.items()}
             for t, d in pcfg.items()}

    tdir = os.path.join(ROOT, "models", "tokenizers")
    qtok = AutoTokenizer.from_pretrained(os.path.join(tdir, "qwen3"))
    ltok = AutoTokenizer.from_pretrained(os.path.join(tdir, "llama3"))
    ltok.chat_template = make_chat_fixtures.LLAMA32_TEMPLATE
    ltok.eos_token = "<|eot_id|>"
    ltok.apply_chat_template = functools.partial(type(ltok).apply_chat_template, ltok, date_string=DATE)

    def rosetta():
        rm = wrapper.RosettaModel([recv, shar], base_model_idx=0, projector_list=projectors,
                                  multi_source_fusion_mode="sequential").eval()
        rm.projector_dict = pdict
        return rm

    def inputs(messages, strategy):
        """The evaluator's aligner path (unified_evaluator.py prepare_model_inputs, answer_method generate)."""
        al = TokenAligner(slm_tokenizer=qtok, llm_tokenizer=ltok, strategy=strategy)
        d = al.align_chat_messages(messages, add_generation_prompt=True, return_details=True, enable_thinking=False,
                                   remove_last_surfix=False)
        slm_ids = torch.tensor(d["slm_ids_padded"]).unsqueeze(0)
        llm_ids = torch.tensor(d["llm_ids_padded"]).unsqueeze(0)
        slm_pad = torch.tensor(d["slm_padding_mask"]).unsqueeze(0)
        llm_pad = torch.tensor(d["llm_padding_mask"]).unsqueeze(0)
        mm = d["message_mask"]
        kv, start = [], 0
        for j in range(1, len(mm) + 1):
            if j == len(mm) or mm[j] != mm[j - 1]:
                kv.append((j - start, 1 if mm[j - 1] else -1))
                start = j
        kv_index = [torch.tensor([v, 0]).repeat(n, 1).unsqueeze(0) for n, v in kv]
        return dict(input_ids=[slm_ids, llm_ids], attention_mask=[(~slm_pad).float(), (~llm_pad).float()],
                    position_ids=torch.arange(slm_ids.shape[1]).unsqueeze(0), kv_cache_index=kv_index), d, kv

    def generate(inp, pads, eos):
        rm = rosetta()
        with torch.no_grad():
            if pads == "reference":
                out = rm.generate(kv_cache_index=inp["kv_cache_index"], input_ids=inp["input_ids"],
                                  attention_mask=inp["attention_mask"], position_ids=inp["position_ids"],
                                  max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=0,
                                  return_dict_in_generate=True, output_scores=True)
                L = inp["input_ids"][0].shape[1]
                return out.sequences[0, L:].tolist(), [s[0].numpy() for s in out.scores]
            fwd = rm.forward(kv_cache_index=inp["kv_cache_index"], input_ids=inp["input_ids"],
                             attention_mask=inp["attention_mask"], position_ids=inp["position_ids"], use_cache=True)
            cache, logits = fwd.past_key_values, fwd.logits[0, -1]
            mask = inp["attention_mask"][0].clone()
            ids, scores = [], []
            for _ in range(MAX_NEW):
                scores.append(logits.numpy())
                tok = int(torch.argmax(logits))
                ids.append(tok)
                if tok in eos:
                    break
                mask = torch.cat([mask, torch.ones(1, 1)], dim=1)
                o = recv(input_ids=torch.tensor([[tok]]), attention_mask=mask, past_key_values=cache, use_cache=True)
                cache, logits = o.past_key_values, o.logits[0, -1]
            return ids, scores

    # trial runs: the EOS ids no run produces, and the smallest top-2 margin
    seen = set()
    for name, messages, strategy, pads in SCENARIOS:
        inp, _, _ = inputs(messages, strategy)
        ids, _ = generate(inp, pads, [])
        seen |= set(ids)
    eos = [t for t in (151645, 151643, 151644, 151642) if t not in seen][:2]
    assert len(eos) == 2
    rows = []
    for name, messages, strategy, pads in SCENARIOS:
        inp, d, kv = inputs(messages, strategy)
        ids, scores = generate(inp, pads, eos)
        assert len(ids) == MAX_NEW, (name, ids)
        margin = relative_top2_margin(scores)
        rows.append({"name": name, "messages": messages, "strategy": strategy, "decode_pads": pads,
                     "n_prompt": len(d["slm_ids_padded"]), "kv": [list(x) for x in kv],
                     "recv_pads": int(sum(d["slm_padding_mask"])), "sharer_pads": int(sum(d["llm_padding_mask"])),
                     "recv_ids": d["slm_ids_padded"], "sharer_ids": d["llm_ids_padded"],
                     "gen_ids": ids, "margin": margin})
        print(f"{name}: {len(d['slm_ids_padded'])} tokens, kv {kv}, pads {rows[-1]['recv_pads']}/"
              f"{rows[-1]['sharer_pads']}, tokens {ids[:8]}..., smallest relative top-2 margin {margin:.3g}")
    # the pads really matter in decoding: the two MC runs differ
    assert rows[0]["gen_ids"] != rows[1]["gen_ids"], "pads visible or masked give the same tokens: pick other seeds"
    out = {"models": hashes, "receiver_args": GEN["receiver"], "sharer_args": GEN["sharer"], "fuser_args": FUSER,
           "eos": eos, "date": DATE, "max_new_tokens": MAX_NEW, "scenarios": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
