#!/usr/bin/env python3
"""q8parity.py: the measurements behind issue 10's Q8_0 greedy check (run by q8parity.sh; numpy and the gguf-py reader
of the vendored llama.cpp tree, which q8parity.sh puts on PYTHONPATH).

  q8parity.py compare DIR_A DIR_B [STEP]   per-tensor distance, layer by layer, of two llama_trace dumps of one step
  q8parity.py rule DUMP_DIR GGUF           the first layer's V and up projections recomputed from DUMP_DIR's own matmul
                                           inputs under three rules for a Q8_0 matmul with int8 activations, each
                                           compared with DUMP_DIR's (llama.cpp's) outputs

The rules (facts about ggml-cpu's x86 code, reimplemented here from their description):
  ggml:    activations per block of 32: amax, d = f16(amax / 127), q = round-half-even(x * (127 / amax)); per output
           8 f32 lanes, lane j += fma(f32(d_w) * d_x, (float)(sum of 4 products k = 4j..4j+3)), summed at the end as
           ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) (ggml_vec_dot_q8_0_q8_0 and sgemm's tinyBLAS_Q0_AVX alike);
  x8-f32d: kernels/cpu/kw_cpu_matmul_x8.c's S8_X8 rule until 2026-12-06: d = amax / 127 in f32, one chain
           acc = fma(d_w, fl(isum * d_x), acc) over the blocks (isum: all 32 products);
  x8:      its rule since: the same q, d rounded to f16, acc = fma(fl(d_w * f16(d_x)), isum, acc): ggml's but for the
           8 lanes (one chain).
The f32 fma is taken as the f64 product-sum rounded to f32 (a double rounding, off by one ulp on rare ties only).
"""
import os
import sys

import numpy as np

F32 = np.float32
PER_LAYER = ['attn_norm', 'Qcur', 'Kcur', 'Vcur', 'kqv_out', 'attn_out', 'ffn_inp', 'ffn_norm', 'ffn_gate', 'ffn_up',
             'ffn_swiglu', 'ffn_out', 'l_out']


def load(d, step, name):
    p = f'{d}/s{step}_{name}.f32'
    return np.fromfile(p, F32) if os.path.exists(p) else None


def compare(a, b, step):
    names = ['embd'] + [f'{n}-{l}' for l in range(64) for n in PER_LAYER] + ['result_norm', 'result_output']
    print(f'{"tensor":14s} {"values":>7s} {"unequal":>7s} {"max |a-b|":>10s} {"rms(a-b)/rms(a)":>16s}')
    for n in names:
        x, y = load(a, step, n), load(b, step, n)
        if x is None or y is None or x.size != y.size:
            continue
        d = np.abs(x.astype(np.float64) - y)
        rel = np.sqrt((d ** 2).mean()) / max(np.sqrt((x.astype(np.float64) ** 2).mean()), 1e-30)
        print(f'{n:14s} {x.size:7d} {np.count_nonzero(x != y):7d} {d.max():10.3e} {rel:16.3e}')


def q8_weight(reader, name):
    for t in reader.tensors:
        if t.name == name:
            raw = np.asarray(t.data).view(np.uint8)
            rows, k = int(np.prod(t.shape[1:])), int(t.shape[0])
            raw = raw.reshape(rows, k // 32, 34)
            d = raw[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(F32)
            return d, raw[:, :, 2:].copy().view(np.int8).astype(np.int32)
    raise KeyError(name)


def fma32(a, b, c):
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(F32)


def quantize(x, f16_scale):
    xb = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(xb).max(axis=2).astype(F32)
    d = (amax / F32(127)).astype(F32)
    with np.errstate(divide='ignore'):
        inv = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.rint((xb * inv[:, :, None]).astype(F32)).astype(np.int32)
    return (d.astype(np.float16).astype(F32) if f16_scale else d), q


def matmul_ggml(x, wd, wq):
    xd, xq = quantize(x, True)
    T, (N, B) = x.shape[0], wd.shape
    lanes = np.zeros((T, N, 8), F32)
    for b in range(B):
        s = (wd[None, :, b] * xd[:, None, b]).astype(F32)
        part = (wq[None, :, b, :] * xq[:, None, b, :]).reshape(T, N, 8, 4).sum(axis=3).astype(F32)
        lanes = fma32(np.broadcast_to(s[:, :, None], lanes.shape), part, lanes)
    r = (lanes[:, :, 4:] + lanes[:, :, :4]).astype(F32)
    return ((r[:, :, 0] + r[:, :, 2]).astype(F32) + (r[:, :, 1] + r[:, :, 3]).astype(F32)).astype(F32)


def matmul_x8(x, wd, wq, f16_scale):
    xd, xq = quantize(x, f16_scale)
    T, (N, B) = x.shape[0], wd.shape
    acc = np.zeros((T, N), F32)
    for b in range(B):
        isum = (wq[None, :, b, :] * xq[:, None, b, :]).sum(axis=2)
        if f16_scale:  # x8: fma(fl(d_w * d_x), isum, acc)
            acc = fma32((wd[None, :, b] * xd[:, None, b]).astype(F32), isum.astype(F32), acc)
        else:  # x8-f32d: fma(d_w, fl(isum * d_x), acc)
            t = (isum.astype(np.float64) * xd[:, None, b].astype(np.float64)).astype(F32)
            acc = fma32(np.broadcast_to(wd[None, :, b], acc.shape), t, acc)
    return acc


def rule(dump, gguf):
    from gguf import GGUFReader
    reader = GGUFReader(gguf)
    for wname, xname, yname in [('blk.0.attn_v.weight', 'attn_norm-0', 'Vcur-0'),
                                ('blk.0.ffn_up.weight', 'ffn_norm-0', 'ffn_up-0')]:
        wd, wq = q8_weight(reader, wname)
        x = load(dump, 0, xname).reshape(-1, wd.shape[1] * 32)
        y = load(dump, 0, yname).reshape(x.shape[0], -1)
        for rname, out in [('ggml', matmul_ggml(x, wd, wq)), ('x8-f32d', matmul_x8(x, wd, wq, False)),
                           ('x8', matmul_x8(x, wd, wq, True))]:
            d = np.abs(out.astype(np.float64) - y)
            print(f'{yname} = {xname} x {wname} (llama.cpp) vs rule {rname:8s}: unequal {np.count_nonzero(out != y):5d}'
                  f' of {y.size}, max |diff| {d.max():.3e}, max |diff| / max |y| {d.max() / np.abs(y).max():.3e}')
    # the norm before it: ggml sums x * x in double, kvwire (kernels/cpu/kw_cpu_ops.c kw_rms_rows) in 8 f32 partial sums
    # ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)); both then scale = 1 / sqrtf(mean + eps), y = (x * scale) * w
    x = load(dump, 0, 'embd').reshape(-1, 576)
    w = np.asarray([t for t in reader.tensors if t.name == 'blk.0.attn_norm.weight'][0].data).astype(F32)
    eps = F32(reader.fields['llama.attention.layer_norm_rms_epsilon'].parts[-1][0])
    sq = (x * x).astype(F32)
    mean_g = (sq.astype(np.float64).sum(axis=1) / 576).astype(F32)
    p = sq.reshape(x.shape[0], -1, 8)
    part = np.zeros((x.shape[0], 8), F32)
    for i in range(p.shape[1]):
        part = (part + p[:, i, :]).astype(F32)
    pr = [(part[:, 2 * i] + part[:, 2 * i + 1]).astype(F32) for i in range(4)]
    ss = ((pr[0] + pr[1]).astype(F32) + (pr[2] + pr[3]).astype(F32)).astype(F32)
    mean_k = (ss / F32(576)).astype(F32)
    norm = {}
    for name, mean in [('ggml', mean_g), ('kvwire', mean_k)]:
        scale = (F32(1) / np.sqrt((mean + eps).astype(F32)).astype(F32)).astype(F32)
        norm[name] = ((x * scale[:, None]).astype(F32) * w[None, :]).astype(F32)
    ref = load(dump, 0, 'attn_norm-0').reshape(x.shape)
    flips = np.count_nonzero(quantize(norm['kvwire'], True)[1] != quantize(norm['ggml'], True)[1])
    wd, wq = q8_weight(reader, 'blk.0.attn_v.weight')
    y, yk = matmul_ggml(norm['ggml'], wd, wq), matmul_ggml(norm['kvwire'], wd, wq)
    print(f'attn_norm-0: ggml rule vs llama.cpp unequal {np.count_nonzero(norm["ggml"] != ref)}; kvwire rule vs ggml'
          f' rule'
          f' unequal {np.count_nonzero(norm["kvwire"] != norm["ggml"])} of {ref.size} (max |diff| '
          f'{np.abs(norm["kvwire"] - norm["ggml"]).max():.1e}); activation codes that differ: {flips}; Vcur-0 by the'
          f' ggml matmul rule from the two norms: max |diff| / max |V| {np.abs(yk - y).max() / np.abs(y).max():.3e}')
    # one activation code moved by 1 (what a one-ulp change of an input on a rounding tie does): the output's change
    x = load(dump, 0, 'attn_norm-0').reshape(-1, 576)
    wd, wq = q8_weight(reader, 'blk.0.attn_v.weight')
    xd, _ = quantize(x, True)
    y = matmul_ggml(x, wd, wq)
    # |change of output n| = |d_w(n, b) * d_x(b) * w(n, k)| for input k in block b; the largest over n, per input k
    step = np.abs(wd[:, :, None] * wq * xd[-1][None, :, None]).max(axis=0).reshape(-1)
    print(f'one activation code of the last token moved by 1: V output max |change| / max |V| = median '
          f'{np.median(step) / np.abs(y[-1]).max():.3e}, max {step.max() / np.abs(y[-1]).max():.3e} over its 576'
          f' inputs')


if __name__ == '__main__':
    if len(sys.argv) >= 4 and sys.argv[1] == 'compare':
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    elif len(sys.argv) == 4 and sys.argv[1] == 'rule':
        rule(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
