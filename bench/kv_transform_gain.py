#!/usr/bin/env python3
"""kv_transform_gain.py: how many bits per element a fixed per-(layer, KV head) linear transform of K and V could
save over today's rotated scalar codes, on a real GGUF model (llama architecture: SmolLM2; or Gemma 3) and real
prompts.

Issue 15's open question: SmolLM2's 99% at <= 4.5 bits needs about 1.5 bits/elem less than rotated scalar codes
with entropy coding give, which no better scalar or vector quantizer can supply (entropy-coded uniform scalar
quantization is within 0.25 bits of the rate-distortion bound on independent values). What is left is structure
across channels. This script measures it: a numpy forward pass (fp32, the GGUF's weights dequantized by gguf-py)
over the prompts, kvwire's own chat-template token ids (`kvwire tokenize --chat`), collecting each layer's pre-RoPE
keys and queries and its values, then per (layer, KV head):

  keys:   C_k, the covariance of the pre-RoPE keys over every prompt row, and W_k, the queries' weight on a key
          error: the loss of attention is q . dk, and over relative positions RoPE turns each channel pair, so W_k is
          diagonal with both channels of pair i at the mean of (q_2i^2 + q_2i+1^2) / 2 (the KV head's query heads
          summed);
  values: C_v, and W_v = sum over the query heads h of W_o,h^T W_o,h (an error dv reaches the layer's output as
          W_o,h dv, times attention weights common to all channels).

For each, at a rate R bits per element of today's scheme (a Hadamard rotation: the error is white, of variance
tr(C) / D * 2^-2R, so the weighted distortion is that times tr(W)), the Gaussian reverse water-filling of the
transform that whitens the weight (eigenvalues lambda of W^1/2 C W^1/2) gives the rate R' with the same weighted
distortion; R - R' is the saving, also split into its two sources: the covariance alone (KLT of C, unweighted) and
the weighting. The analysis is idealized (Gaussian values, high-rate error model, the mean assumed known to both
sides, per-row scale adaptation ignored), an upper estimate of what such a transform buys, not a measurement of a
codec; the printed table says so. With --simulate it also codes the held-out rows with real per-row codes (symmetric
absmax, a 16-bit scale a row) and compares the codes' entropy at the same weighted error; with --tf N it runs the
prompts' cache through both schemes' codes in the forward pass and reports teacher-forced agreement and KL over N
continuation tokens (kvwire generate's greedy ones) against the exact run (a numpy simulation, not wire/'s codec).

Usage: python3 bench/kv_transform_gain.py KVWIRE MODEL.gguf PROMPTS CALIB [--rate R ...] [--simulate]
         [--tf N [--tf-bits B ...]] [--check N] [--raw]
  (needs numpy and gguf from pip; KVWIRE is the kvwire binary, which tokenizes)
"""
import argparse
import json
import subprocess
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("kv_transform_gain.py: pip install gguf numpy")


def load(path):
    r = gguf.GGUFReader(path)

    def field(name, default=None):
        if name not in r.fields:
            return default
        f = r.fields[name]
        return f.parts[f.data[0]][0]

    f = r.fields["general.architecture"]
    arch = bytes(f.parts[f.data[0]]).decode()
    if arch not in ("llama", "gemma3"):
        sys.exit(f"kv_transform_gain.py: architecture {arch}: only llama (SmolLM2) and gemma3 are written here")
    heads = int(field(f"{arch}.attention.head_count"))
    dim = int(field(f"{arch}.embedding_length"))
    cfg = {
        "arch": arch,
        "layers": int(field(f"{arch}.block_count")),
        "dim": dim,
        "heads": heads,
        "kv_heads": int(field(f"{arch}.attention.head_count_kv")),
        "head_dim": int(field(f"{arch}.attention.key_length", dim // heads)),
        "base": float(field(f"{arch}.rope.freq_base")),
        "eps": float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
    }
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w[t.name] = a.reshape([int(n) for n in reversed(t.shape)]) if a.ndim == 1 and len(t.shape) > 1 else a
    return cfg, w


def rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def pairs(cfg, d):
    """The channels RoPE turns together: (2i, 2i + 1) for GGUF llama (llama.cpp's NORM mode, the converter permuted
    the weights), (i, i + d/2) for Gemma 3 (NEOX)."""
    i = np.arange(d // 2)
    return (2 * i, 2 * i + 1) if cfg["arch"] == "llama" else (i, i + d // 2)


def rope(cfg, x, pos, base):
    """Pair i turned by pos * base^(-2i / d)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(pos, inv)
    c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
    ia, ib = pairs(cfg, d)
    a, b = x[..., ia], x[..., ib]
    y = np.empty_like(x)
    y[..., ia] = a * c - b * s
    y[..., ib] = a * s + b * c
    return y


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


def forward(cfg, w, ids, sink):
    """One prompt through the model; sink(layer, q_pre, k_pre, v) gets (T, heads, D) arrays (Gemma 3: q and k after
    their norms, as they are before RoPE) and may return (k_pre, v) to use instead. Returns every row's logits.
    Gemma 3 as kvwire runs it (model/kw_gguf_model.c):
    embeddings times sqrt(dim), the file's norm weights as they are (they hold 1 + w), every sixth layer global (RoPE
    base from the file) and the others local (base 10000; the prompts are shorter than the sliding window), scores
    times key_length^-0.5, post-attention and post-FFN norms, tanh-GELU."""
    H, Hk, dim, D = cfg["heads"], cfg["kv_heads"], cfg["dim"], cfg["head_dim"]
    gemma = cfg["arch"] == "gemma3"
    T = len(ids)
    h = w["token_embd.weight"][ids] * (np.float32(np.sqrt(dim)) if gemma else np.float32(1.0))
    pos = np.arange(T)
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for layer in range(cfg["layers"]):
        p = f"blk.{layer}."
        xn = rms(h, w[p + "attn_norm.weight"], cfg["eps"])
        q = (xn @ w[p + "attn_q.weight"].T).reshape(T, H, D)
        k = (xn @ w[p + "attn_k.weight"].T).reshape(T, Hk, D)
        v = (xn @ w[p + "attn_v.weight"].T).reshape(T, Hk, D)
        base = cfg["base"]
        if gemma:
            q = rms(q, w[p + "attn_q_norm.weight"], cfg["eps"])
            k = rms(k, w[p + "attn_k_norm.weight"], cfg["eps"])
            base = cfg["base"] if (layer + 1) % 6 == 0 else 10000.0
        repl = sink(layer, q, k, v)
        if repl is not None:  # a quantized cache: the prompt rows' K (before RoPE) and V as the receiver gets them
            k, v = repl
        qr, kr = rope(cfg, q, pos, base), rope(cfg, k, pos, base)
        out = np.empty((T, H, D), dtype=np.float32)
        for hh in range(H):
            g = hh // (H // Hk)
            s = qr[:, hh] @ kr[:, g].T / np.sqrt(D) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ v[:, g]
        a = out.reshape(T, H * D) @ w[p + "attn_output.weight"].T
        h = h + (rms(a, w[p + "post_attention_norm.weight"], cfg["eps"]) if gemma else a)
        xn = rms(h, w[p + "ffn_norm.weight"], cfg["eps"])
        gate = xn @ w[p + "ffn_gate.weight"].T
        act = gelu_tanh(gate) if gemma else gate / (1.0 + np.exp(-gate))
        m = (act * (xn @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        h = h + (rms(m, w[p + "post_ffw_norm.weight"], cfg["eps"]) if gemma else m)
    xn = rms(h, w["output_norm.weight"], cfg["eps"])
    out_w = w.get("output.weight", w["token_embd.weight"])
    return xn @ out_w.T


def rate_for(lam, dist):
    """Reverse water-filling: the rate (bits per element) at which Gaussian components of variances lam reach a
    total distortion dist (bisection on the water level)."""
    lo, hi = 0.0, float(lam.max())
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        if np.minimum(lam, theta).sum() > dist:
            hi = theta
        else:
            lo = theta
    theta = 0.5 * (lo + hi)
    return float(np.sum(np.maximum(0.0, 0.5 * np.log2(lam / theta))) / len(lam))


def saving(fit, test, W, xform, R):
    """Bits per element saved at rate R on the test rows by the transform fitted on the fit rows (xform, from
    transform_of with W), against today's rotated codes (white error of variance E|x|^2 / D * 2^-2R, no mean
    removed). Returns (weighted, KLT only): the transform whitening W and the plain eigenbasis of the fit covariance,
    each with the fit rows' mean removed; the test rows' variances along the fitted axes are what water-filling spends
    on (held out: no overfit). Third: the fitted mean's part alone (white error around it instead of around 0)."""
    D = fit.shape[1]
    mu, _, t, _ = xform
    cf = np.cov(fit.T)
    xt = test - mu
    ct = xt.T @ xt / len(xt)  # the test rows around the fitted mean
    st = test.T @ test / len(test)  # today's codes see the rows as they are
    base = np.trace(st) / D * 2.0 ** (-2 * R)
    lam = np.clip(np.diag(t @ ct @ t.T), 1e-30, None)
    full = R - rate_for(lam, base * np.trace(W))
    _, uc = np.linalg.eigh(cf)
    lam_c = np.clip(np.diag(uc.T @ ct @ uc), 1e-30, None)
    cov = R - rate_for(lam_c, base * D)
    mean = 0.5 * np.log2(np.trace(st) / np.trace(ct))  # the fitted mean alone, white error (centring)
    return full, cov, mean


def hadamard(D):
    h = np.array([[1.0]])
    while h.shape[0] < D:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(D)


def entropy_bits(codes):
    """Order-0 entropy in bits per code of an integer array."""
    _, n = np.unique(codes, return_counts=True)
    p = n / n.sum()
    return float(-(p * np.log2(p)).sum())


def quantize_rows(y, qmax):
    """Symmetric per-row absmax codes (the codec's rule, scales kept exact): codes and the reconstruction."""
    s = np.abs(y).max(axis=1, keepdims=True) / qmax
    s[s == 0] = 1.0
    c = np.clip(np.rint(y / s), -qmax, qmax)
    return c, c * s


def simulated(test, xform, qmaxes):
    """Rate-distortion points of real per-row codes on the held-out rows, weighted distortion per element against
    bits per element (the codes' entropy plus a 16-bit scale a row): today's (Hadamard, no mean, one table for all
    channels) and the fitted transform's (xform from transform_of: mean removed, whitening the weight; a table per
    channel, and one table for all)."""
    D = test.shape[1]
    mu, ws, t, _ = xform  # y = t (x - mu); |dy|^2 is the weighted error of x
    hd = hadamard(D)
    out = []
    for qm in qmaxes:
        c, r = quantize_rows(test @ hd.T, qm)
        err = (test - r @ hd) @ ws
        today = (float(np.mean(np.sum(err * err, axis=1))) / D, entropy_bits(c) + 16.0 / D)
        y = (test - mu) @ t.T
        c2, r2 = quantize_rows(y, qm)
        d2 = float(np.mean(np.sum((y - r2) ** 2, axis=1))) / D
        per_ch = float(np.mean([entropy_bits(c2[:, j]) for j in range(D)]))
        out.append((qm, today, (d2, per_ch + 16.0 / D), (d2, entropy_bits(c2) + 16.0 / D)))
    return out


def rate_at(points, dist):
    """The rate at distortion dist on a curve of (distortion, rate) points (log-linear interpolation)."""
    pts = sorted(points)
    for (d0, r0), (d1, r1) in zip(pts, pts[1:]):
        if d0 <= dist <= d1:
            f = (np.log2(dist) - np.log2(d0)) / (np.log2(d1) - np.log2(d0)) if d1 > d0 else 0.0
            return r0 + f * (r1 - r0)
    return float("nan")


def transform_of(fit, W):
    """The fitted transform (mean, ws, T, T^-1): y = T (x - mean) whitens W (= ws ws^T) and diagonalizes the fit
    covariance there."""
    D = fit.shape[1]
    mu = fit.mean(axis=0)
    ws = np.linalg.cholesky(W + 1e-9 * np.trace(W) / D * np.eye(D))
    _, u = np.linalg.eigh(ws.T @ np.cov(fit.T) @ ws)
    t = u.T @ ws.T
    return mu, ws, t, np.linalg.inv(t)


def loss_weights(cfg, w, fit, layer, g, ia, ib):
    """The loss weights (W_k, W_v) of (layer, KV head g): the queries' energy per RoPE pair on both of its channels
    (fit's queries), and W_o^T W_o over the head's query heads."""
    H, Hk, D = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    qq = np.mean(fit["q"][layer][g] ** 2, axis=0)
    e = 0.5 * (qq[ia] + qq[ib])
    wk = np.zeros((D, D))
    wk[ia, ia] = e
    wk[ib, ib] = e
    wo = w[f"blk.{layer}.attn_output.weight"]
    wv = np.zeros((D, D))
    for hh in range(g * (H // Hk), (g + 1) * (H // Hk)):
        blk = wo[:, hh * D:(hh + 1) * D].astype(np.float64)
        wv += blk.T @ blk
    return wk, wv


def teacher_forced(cfg, w, prompts, conts, xforms, bits_list, log):
    """Teacher-forced quality of the prompt cache (rows 1.. of every layer; row 0 exact, as kvstats' T0=recompute)
    coded per row: 'today' = the Hadamard rotation of the post-RoPE rows (keys) and of the values, symmetric absmax
    codes of b bits; 'transform' = the fitted transform of the pre-RoPE keys and of the values, the same codes;
    'transform-k' = the transform for the keys, today's codes for the values.
    Returns per (scheme, b): K+V bits per element (packed, and the codes' entropy: one table per (layer, KV head,
    tensor) for today, one per channel for the transform) with a 16-bit scale a row, TF agreement and mean KL
    against the exact cache, over every continuation step."""
    Hk, D = cfg["kv_heads"], cfg["head_dim"]
    hd = hadamard(D)
    gemma = cfg["arch"] == "gemma3"
    results = {}
    refs = []
    for ids, cont in zip(prompts, conts):
        full = np.array(ids + cont)
        refs.append(forward(cfg, w, full, lambda *x: None)[len(ids) - 1:-1])
    for scheme in ("today", "transform", "transform-k"):
        for b in bits_list:
            qm = float(2 ** (b - 1) - 1)
            codes = {}  # (layer, g, kv) -> list of code arrays (rows, D)
            agree = kl = steps = 0.0
            for pi, (ids, cont) in enumerate(zip(prompts, conts)):
                P = len(ids)
                full = np.array(ids + cont)
                pos = np.arange(len(full))

                def hook(layer, q, k, v):
                    base = cfg["base"] if not gemma or (layer + 1) % 6 == 0 else 10000.0
                    k2, v2 = k.copy(), v.copy()
                    for g in range(Hk):
                        for kv, x in ((0, k2), (1, v2)):
                            rows = x[1:P, g].astype(np.float64)
                            if scheme == "today" or (scheme == "transform-k" and kv == 1):
                                if kv == 0:  # the post-RoPE rows, rotated, then RoPE undone
                                    rr = rope(cfg, rows[:, None, :].astype(np.float32), pos[1:P], base)[:, 0]
                                    c, r = quantize_rows(rr.astype(np.float64) @ hd.T, qm)
                                    back = (r @ hd).astype(np.float32)[:, None, :]
                                    rec = rope(cfg, back, -pos[1:P], base)[:, 0]
                                else:
                                    c, r = quantize_rows(rows @ hd.T, qm)
                                    rec = r @ hd
                            else:
                                mu, _, t, ti = xforms[layer][g][kv][1]
                                c, r = quantize_rows((rows - mu) @ t.T, qm)
                                rec = r @ ti.T + mu
                            x[1:P, g] = rec
                            codes.setdefault((layer, g, kv), []).append(c)
                    return k2, v2

                logits = forward(cfg, w, full, hook)[P - 1:-1]
                ref = refs[pi]
                agree += float(np.sum(np.argmax(logits, axis=1) == np.argmax(ref, axis=1)))
                lp = ref - ref.max(axis=1, keepdims=True)
                lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
                lq = logits - logits.max(axis=1, keepdims=True)
                lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
                kl += float(np.sum(np.exp(lp) * (lp - lq)))
                steps += len(cont)
            ent = []
            for (layer, g, kv), c in codes.items():
                c = np.concatenate(c)
                own = scheme == "transform" or (scheme == "transform-k" and kv == 0)
                ent.append(np.mean([entropy_bits(c[:, j]) for j in range(D)]) if own else entropy_bits(c))
            results[(scheme, b)] = (b + 16.0 / D, float(np.mean(ent)) + 16.0 / D, agree / steps, kl / steps)
            log(scheme, b, results[(scheme, b)])
    return results


def tokenize(kvwire, model, texts, mode):
    out = subprocess.run([kvwire, "tokenize", "--tokenizer", model, mode], check=True, capture_output=True, text=True,
                         input="".join(json.dumps(s) + "\n" for s in texts)).stdout.split("\n")
    return [json.loads(s) for s in out if s.strip()]


def collect(cfg, w, prompts, skip):
    """Per (layer, KV head): the rows from position skip on of K (pre-RoPE), V and the group's queries (pre-RoPE)."""
    L, H, Hk, D = cfg["layers"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    acc = {n: [[[] for _ in range(Hk)] for _ in range(L)] for n in "kvq"}

    def sink(layer, q, k, v):
        for g in range(Hk):
            acc["k"][layer][g].append(k[skip:, g])
            acc["v"][layer][g].append(v[skip:, g])
            acc["q"][layer][g].append(q[skip:, g * (H // Hk):(g + 1) * (H // Hk)].reshape(-1, D))

    for ids in prompts:
        forward(cfg, w, np.array(ids), sink)
    return {n: [[np.concatenate(acc[n][layer][g]).astype(np.float64) for g in range(Hk)] for layer in range(L)]
            for n in "kvq"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvwire")
    ap.add_argument("model")
    ap.add_argument("prompts", help="evaluation prompts, one per line, rendered with the chat template")
    ap.add_argument("calib", help="calibration text: paragraphs (blank-line separated), raw text with BOS")
    ap.add_argument("--rate", type=float, action="append")
    ap.add_argument("--skip-rows", type=int, default=24, help="evaluation rows before this are left out (the "
                    "system turn SmolLM2's template puts in every prompt)")
    ap.add_argument("--calib-chunks", type=int, default=12)
    ap.add_argument("--raw", action="store_true", help="the evaluation prompts as raw text with BOS (as kvstats "
                    "without --chat), not in the chat template")
    ap.add_argument("--simulate", action="store_true", help="also real per-row codes on the held-out rows: bits at "
                    "today's int4 and int6 distortion")
    ap.add_argument("--tf", type=int, default=0, help="also the teacher-forced quality of both schemes over this many "
                    "tokens of each prompt's continuation (kvwire generate's greedy tokens), codes of --tf-bits bits")
    ap.add_argument("--tf-bits", type=int, action="append")
    ap.add_argument("--check", type=int, default=0, help="greedy tokens of the first prompt to print (compare with "
                    "kvwire generate --chat)")
    a = ap.parse_args()
    rates = a.rate or [2.0, 4.0, 6.0]
    cfg, w = load(a.model)
    lines = [ln.rstrip("\n") for ln in open(a.prompts, encoding="utf-8") if ln.strip()]
    prompts = tokenize(a.kvwire, a.model, lines, "--bos" if a.raw else "--chat")
    if a.check:
        ids = list(prompts[0])
        for _ in range(a.check):
            ids.append(int(np.argmax(forward(cfg, w, np.array(ids), lambda *x: None)[-1])))
        print(f"# greedy ids after the first prompt: {ids[len(prompts[0]):]}")
    paras = [p.strip() for p in open(a.calib, encoding="utf-8").read().split("\n\n") if len(p.strip()) > 200]
    calib = [ids[:256] for ids in tokenize(a.kvwire, a.model, paras[: a.calib_chunks], "--bos")]
    fit = collect(cfg, w, calib, 1)  # row 0 (BOS, the attention sink) left out of the fit
    test = collect(cfg, w, prompts, a.skip_rows)
    L, Hk, D = cfg["layers"], cfg["kv_heads"], cfg["head_dim"]
    ia, ib = pairs(cfg, D)
    print(f"# {a.model}: fit on {sum(len(c) - 1 for c in calib)} rows of {len(calib)} paragraphs of {a.calib}, "
          f"tested on {sum(len(p) - a.skip_rows for p in prompts)} rows of {len(prompts)} prompts of {a.prompts} "
          f"({'raw' if a.raw else 'chat template'}, rows from {a.skip_rows}); {L} layers x {Hk} KV heads, D {D}")
    print("# bits per element of K (or V) saved at rate R over every (layer, KV head): mean [min, max]; 'weighted':")
    print("# the fitted transform whitening the loss weight (keys: the queries' per-pair energy; values: W_o), 'KLT':")
    print("# the fitted covariance's eigenbasis; both remove the fitted mean ('mean alone': that part by itself);")
    print("# idealized Gaussian reverse water-filling")
    print("# on the held-out rows: an upper estimate of a fixed per-head transform, not a codec measurement")
    # per (layer, KV head), K then V: the loss weight and the transform fitted with it
    xf = [[None] * Hk for _ in range(L)]
    for layer in range(L):
        for g in range(Hk):
            ws = loss_weights(cfg, w, fit, layer, g, ia, ib)
            xf[layer][g] = [(ws[kv], transform_of(fit["kv"[kv]][layer][g], ws[kv])) for kv in (0, 1)]
    for R in rates:
        res = {"k": [], "v": []}
        for layer in range(L):
            for g in range(Hk):
                for kv in (0, 1):
                    n = "kv"[kv]
                    res[n].append(saving(fit[n][layer][g], test[n][layer][g], *xf[layer][g][kv], R))
        for kv in ("k", "v"):
            arr = np.array(res[kv])
            print(f"R {R:4.1f} {kv.upper()}: weighted {arr[:, 0].mean():5.2f} [{arr[:, 0].min():5.2f}, "
                  f"{arr[:, 0].max():5.2f}]  KLT {arr[:, 1].mean():5.2f} [{arr[:, 1].min():5.2f}, "
                  f"{arr[:, 1].max():5.2f}]  mean alone {arr[:, 2].mean():5.2f}")


    if a.tf:
        conts = []
        for text in lines:
            cmd = [a.kvwire, "generate", "--model", a.model, "--prompt", text, "--max-new-tokens", str(a.tf),
                   "--ignore-eos", "--threads", "2"] + ([] if a.raw else ["--chat"])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = next(ln for ln in out.splitlines() if ln.startswith("generated_ids:"))
            conts.append(json.loads(line.split(":", 1)[1]))
        print(f"# teacher-forced: {len(prompts)} prompts x {a.tf} tokens (kvwire generate's greedy continuation), the")
        print("# prompt rows 1.. of every layer coded, row 0 exact; bits per element of K and V together with a 16-bit")
        print("# scale a row: packed codes, and their entropy (today: a table per tensor; transform: a table per")
        print("# channel; no table counted)")
        print("# scheme     bits  packed  entropy  TF agree  mean KL")
        teacher_forced(cfg, w, prompts, conts, xf, a.tf_bits or [4, 5, 6],
                       lambda sc, b, r: print(f"{sc:10s} {b:5d} {r[0]:7.3f} {r[1]:8.3f} {r[2]:9.4f} {r[3]:9.2e}",
                                              flush=True))
    if not a.simulate:
        return
    print("# simulated per-row codes (symmetric absmax, 16-bit scales counted), bits per element at the weighted")
    print("# distortion today's rotated codes reach with int4 / int6 codes: today's, the transform's with a table per")
    print("# channel, and with one table (what one rANS table per tensor would store); mean over (layer, KV head)")
    qmaxes = [1, 2, 3, 4, 5, 7, 10, 15, 20, 31, 45, 63, 90, 127, 180, 255]
    for kv in ("k", "v"):
        rows = {7: [], 31: []}
        for layer in range(L):
            for g in range(Hk):
                pts = simulated(test[kv][layer][g], xf[layer][g]["kv".index(kv)][1], qmaxes)
                for qm in rows:
                    d, r = next(p[1] for p in pts if p[0] == qm)
                    rows[qm].append((r, rate_at([p[2] for p in pts], d), rate_at([p[3] for p in pts], d)))
        for qm, name in ((7, "int4"), (31, "int6")):
            arr = np.array(rows[qm])
            print(f"{kv.upper()} at today's {name} distortion: today {arr[:, 0].mean():5.2f} bits, transform "
                  f"{np.nanmean(arr[:, 1]):5.2f} (a table per channel), {np.nanmean(arr[:, 2]):5.2f} (one table)")


if __name__ == "__main__":
    main()
