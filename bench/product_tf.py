#!/usr/bin/env python3
"""product_tf.py PORT IDS POLICIES [ROW...]: kvwire kvstats' teacher-forced agreement and bytes, through the product
path.

For each prompt of IDS (one JSON array of token ids a line, BOS included) the receiverd on 127.0.0.1:PORT decodes 64
greedy tokens in receiver_only mode (the unquantized reference: the receiver's own prefill; past an EOS with
ignore_eos, as kvstats);
then, for each policy of POLICIES (a JSON object: row name -> kvwire.policy object; only the ROWs named, if any), the
same prompt in kv_direct with those tokens forced (kvwire.force_tokens): a step agrees when the distribution that
predicted the forced token has it as its argmax. The prompt cache is the first n - 1 rows and the last prompt token is
the receiver's (as in kvstats); the bits per element divide the blob bytes by every prompt row's K and V elements (the
server reports neither the layer count nor a row's elements, so product_tf.sh passes them: KW_LAYERS, and
KW_ROW_ELEMS = KV heads x head_dim, in the environment). Prints one line per row, in kvstats' units, with the mean of
the sharer's encode time per request (`timings_ms.encode`: quantization, zstd and framing)."""
import json
import os
import sys
import urllib.error
import urllib.request

port, ids_path, policies = int(sys.argv[1]), sys.argv[2], json.loads(open(sys.argv[3]).read())
layers, row_elems = int(os.environ["KW_LAYERS"]), int(os.environ["KW_ROW_ELEMS"])
unknown = [r for r in sys.argv[4:] if r not in policies]
if unknown:
    sys.exit("product_tf.py: no row %s in %s" % (", ".join(unknown), sys.argv[3]))
if sys.argv[4:]:
    policies = {r: policies[r] for r in sys.argv[4:]}


def post(body):
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, json.dumps(body).encode())
    try:
        return json.load(urllib.request.urlopen(req, timeout=600))
    except urllib.error.HTTPError as err:
        sys.exit("product_tf.py: HTTP %d: %s" % (err.code, err.read().decode()))


def reference(p, n=64):
    """n greedy tokens past any EOS (ignore_eos), as kvstats decodes its reference."""
    ids = post({"prompt": p, "max_tokens": n, "ignore_eos": True, "kvwire": {"mode": "receiver_only"}})["kvwire"][
        "completion_ids"]
    if len(ids) != n:
        sys.exit("product_tf.py: receiver_only gave %d tokens, %d asked" % (len(ids), n))
    return ids


prompts = [json.loads(line) for line in open(ids_path) if line.strip()]
refs = [reference(p) for p in prompts]
n_rows = sum(len(p) - 1 for p in prompts)
for name, policy in policies.items():
    agree = steps = blob = 0
    encode_ms = 0.0
    for p, ref in zip(prompts, refs):
        r = post({"prompt": p, "logprobs": 1, "kvwire": {"mode": "kv_direct", "force_tokens": ref, "policy": policy}})
        blob += r["kvwire"]["bytes"]["blob"]
        encode_ms += r["kvwire"]["timings_ms"]["encode"]
        lp = r["choices"][0]["logprobs"]
        for top, tok in zip(lp["top_logprobs"], lp["tokens"]):
            agree += max(top.items(), key=lambda kv: kv[1])[0] == tok
            steps += 1
    print("%-22s bytes/row %8.1f bits/elem %.3f TF agree %.4f (%d/%d) sharer encode %.2f ms/request" %
          (name, blob / n_rows, blob * 8 / (n_rows * layers * 2 * row_elems), agree / steps, agree, steps,
           encode_ms / len(prompts)))
