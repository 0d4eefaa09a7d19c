#!/usr/bin/env bash
# cli_kvstats.sh KVWIRE SRC BUILD: `kvwire kvstats` end to end on a tiny random Qwen3 with the real Qwen tokenizer
# (kvwire gen-model): the per-head table has a row per (K/V, layer, head), the control row reads exact agreement, zero
# KL and zero error at f32 bytes (32 bits per element), the codecs asked for are there in order, a KVWire v1.1 K+V pair
# (int2 zero-point keys per channel, int3 values per token), the @P% outlier, @prerope, @rotv, @zstd and @qmax options
# and a per-codec scale dtype (:log8) run; per-layer schedules (BASE;L..=CODEC) count each layer's bytes and bad ones are
# refused with a reason; per-token schedules (;T..=CODEC, ;Tlast<N>=CODEC) count their token groups' bytes and bad ones
# are refused with a reason; the per-position norm table has a row per layer; --layer-sensitivity gives a row per
# layer and ranks every layer once; usage errors exit 2,
# a bad codec and an empty prompt file exit 1 with a reason.
set -u
kvwire=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; cat "$tmp/out" "$tmp/err" 2>/dev/null; exit 1; }
# refused WHAT 'CODEC|REASON'...: each codec exits 1 naming the reason
refused() {
    local what=$1 bad
    shift
    for bad in "$@"; do
        "$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 1 --max-prompts 1 --no-heads \
            --codec "${bad%%|*}" >/dev/null 2>"$tmp/err"
        [ $? -eq 1 ] && grep -q -- "${bad#*|}" "$tmp/err" || fail "$what ${bad%%|*}"
    done
}

"$kvwire" gen-model --arch qwen3 --preset tiny --seed 4 --tokenizer "$src/models/tokenizers/qwen3" --out "$tmp/m" \
    >/dev/null || fail "gen-model"
printf 'The capital of France is\n\nOnce upon a time\n' >"$tmp/p.txt"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 8 --codec none --codec int8:token \
    --codec int4:group16 --codec int2-asym:channel8,int3-asym:token --codec 'int4:token@2%@prerope' \
    --codec 'int4:token:log8,int4:token@rotv' \
    >"$tmp/out" 2>"$tmp/err" || fail "kvstats exit $?"
cat "$tmp/out"
grep -q '^2 prompts, ' "$tmp/out" || fail "two prompts (the empty line skipped)"
layers=$(sed -n 's/.* (qwen3, \([0-9]*\) layers, \([0-9]*\) KV heads.*/\1 \2/p' "$tmp/out")
read -r n_layers n_heads <<<"$layers"
[ -n "$n_layers" ] || fail "header"
[ "$(grep -cE '^(K|V) +[0-9]+ +[0-9]+ ' "$tmp/out")" -eq $((2 * n_layers * n_heads)) ] || fail "per-head rows"
row=$(grep '^none (f32 rows)' "$tmp/out") || fail "control row"
read -r _ _ _ bytes bits kerr verr tf kl free <<<"$row"
[ "$kerr $verr $tf $kl $free" = "0.00e+00 0.00e+00 1.0000 0.00e+00 1.0000" ] || fail "control row values: $row"
[ "$bits" = 32.000 ] || fail "control row: f32 rows are 32 bits per element, not $bits"
head_dim=$(sed -n 's/.* KV heads x \([0-9]*\)).*/\1/p' "$tmp/out")
[ "$bytes" = "$((n_layers * n_heads * head_dim * 8)).0" ] || fail "control row bytes $bytes"
[ "$(sed -n '/^codec /,$p' "$tmp/out" | awk 'NR > 1 {print $1}' | tr '\n' ' ')" = \
    "none int8/token int4/group16 int2-asym/channel8+int3-asym/token int4/token@2%@prerope int4/token/log8+int4/token@rotv " ] ||
    fail "codec rows"
# the v1.1 K+V row ran (not refused): on this tiny head (16 values) its f32 scales and zero points dominate, so its bits
# per element lie above the 2.5 bits of the codes alone and below the f32 rows' 32
row=$(grep '^int2-asym/channel8+int3-asym/token ' "$tmp/out") || fail "the v1.1 row"
read -r _ _ bits _ <<<"$row"
awk -v a="$bits" 'BEGIN { exit !(a > 2.5 && a < 32) }' || fail "bits per element of the v1.1 row: $row"

"$kvwire" kvstats --model "$tmp/m" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no --prompts: exit 2"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --codec int5:token >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "unknown codec 'int5'" "$tmp/err" || fail "bad codec"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --codec 'int4:token,bf16@rot' >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "rotated tensor needs a quantizing codec" "$tmp/err" || fail "rotated passthrough"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --codec 'int4:token@rotq' >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "@rot, @rotk and @rotv" "$tmp/err" || fail "bad rotation option"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --codec 'int4:token@clipx' >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "@clip, @clipk and @clipv" "$tmp/err" || fail "bad clip option"
# clipped scales (FORMAT.md §5.13): a row of its own, named with the option
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec 'int3:token@rot@clipk' >"$tmp/out" 2>"$tmp/err" || fail "clip exit $?"
grep -q '^int3/token@rot@clipk ' "$tmp/out" || fail "clip row"
# zstd-compressed sections (@zstd[N]): lossless, so the same errors, agreement and KL as the row without it; one
# scale per layer leaves the int8 codes of these bell-shaped rows well under 8 bits of entropy, so fewer bytes; a
# per-layer override carries its own level (a prompt of some 200 tokens: zstd's frame costs more than a few rows save)
for i in $(seq 24); do printf 'the river %d ran past the mill and the old stone bridge, ' "$i"; done >"$tmp/long.txt"
echo >>"$tmp/long.txt"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/long.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec int8:layer --codec 'int8:layer@zstd19' --codec 'int8:layer;L0=int8:layer@zstd' >"$tmp/out" 2>"$tmp/err" ||
    fail "zstd exit $?"
read -r _ b_raw _ e_raw <<<"$(awk '$1 == "int8/layer" {print $1, $2, $3, $4, $5, $6, $7, $8}' "$tmp/out")"
read -r _ b_z _ e_z <<<"$(awk '$1 == "int8/layer@zstd19" {print $1, $2, $3, $4, $5, $6, $7, $8}' "$tmp/out")"
read -r _ b_l0 _ <<<"$(awk '$1 == "int8/layer;L0=int8/layer@zstd3" {print $1, $2}' "$tmp/out")"
[ -n "$e_raw" ] && [ "$e_raw" = "$e_z" ] || fail "zstd changed the decoded rows: '$e_raw' against '$e_z'"
awk -v z="$b_z" -v l="$b_l0" -v r="$b_raw" 'BEGIN { exit !(z > 0 && z < l && l < r) }' ||
    fail "zstd bytes: every layer $b_z, layer 0 $b_l0, none $b_raw"
refused "bad zstd option" 'int4:token@zstd0|@zstd or @zstdN' 'int4:token@zstd23|@zstd or @zstdN' \
    'int4:token@zstdx|@zstd or @zstdN' 'int4:token@zstd3@zstd|@zstd or @zstdN' 'int4:token@zstd-1|@zstd or @zstdN' \
    'int4:token;T0=int8:token@zstd|takes CODEC:GRAN only'
# a code limit (@qmax[k|v]N, FORMAT.md §5.14): the same container, so without zstd the same bytes; coarser codes, so
# a larger error on the limited tensor only; with zstd fewer bytes, fewer still with both tensors limited
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/long.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec 'int8:token@zstd19' --codec 'int8:token@qmaxk6@zstd19' --codec 'int8:token@qmax6@zstd19' \
    --codec 'int8:token' --codec 'int8:token@qmax6' >"$tmp/out" 2>"$tmp/err" || fail "qmax exit $?"
read -r b_p k_p v_p <<<"$(awk '$1 == "int8/token@zstd19" {print $2, $4, $5}' "$tmp/out")"
read -r b_k k_k v_k <<<"$(awk '$1 == "int8/token@qmaxk6@zstd19" {print $2, $4, $5}' "$tmp/out")"
read -r b_b k_b v_b <<<"$(awk '$1 == "int8/token@qmax6@zstd19" {print $2, $4, $5}' "$tmp/out")"
read -r b_r _ <<<"$(awk '$1 == "int8/token" {print $2}' "$tmp/out")"
read -r b_q _ <<<"$(awk '$1 == "int8/token@qmax6" {print $2}' "$tmp/out")"
[ -n "$b_q" ] && [ "$b_q" = "$b_r" ] || fail "qmax without zstd: $b_q bytes against $b_r"
[ -n "$v_k" ] && [ "$v_k" = "$v_p" ] && [ "$k_k" = "$k_b" ] || fail "qmaxk limited V, or K differs: $k_k $v_k $k_b $v_p"
awk -v p="$b_p" -v k="$b_k" -v b="$b_b" -v e="$k_p" -v f="$k_k" -v g="$v_b" -v h="$v_p" \
    'BEGIN { exit !(b < k && k < p && f > e && g > h) }' || fail "qmax bytes $b_b < $b_k < $b_p, errors $k_k > $k_p"
# the rANS body coder (@rans, FORMAT.md §5.15): lossless, so the same errors and KL as the row without it; fewer
# bytes; with zstd too, each section the smaller of the two, so no more than either alone (zstd does better here: the
# prompt repeats, which an LZ stage finds and an order-0 coder cannot); once only, not in token rules
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/long.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec 'int8:token@qmax6' --codec 'int8:token@qmax6@rans' --codec 'int8:token@qmax6@zstd19' \
    --codec 'int8:token@qmax6@zstd19@rans' >"$tmp/out" 2>"$tmp/err" || fail "rans exit $?"
read -r b_n e_n <<<"$(awk '$1 == "int8/token@qmax6" {print $2, $4 $5 $7}' "$tmp/out")"
read -r b_a e_a <<<"$(awk '$1 == "int8/token@qmax6@rans" {print $2, $4 $5 $7}' "$tmp/out")"
read -r b_z19 _ <<<"$(awk '$1 == "int8/token@qmax6@zstd19" {print $2}' "$tmp/out")"
read -r b_both _ <<<"$(awk '$1 == "int8/token@qmax6@zstd19@rans" {print $2}' "$tmp/out")"
[ -n "$e_a" ] && [ "$e_a" = "$e_n" ] || fail "rans changed the decoded rows: '$e_a' against '$e_n'"
awk -v a="$b_a" -v z="$b_z19" -v n="$b_n" -v b="$b_both" 'BEGIN { exit !(a < n && z < n && b <= a && b <= z) }' ||
    fail "rans bytes $b_a, zstd 19 $b_z19, both $b_both, none $b_n"
refused "bad rans option" 'int8:token@rans@rans|@rans named twice' 'int8:token@ransx|options are @P%' \
    'int8:token;T0=int8:token@rans|takes CODEC:GRAN only'
refused "bad qmax option" 'int8:token@qmax0|@qmaxN, @qmaxkN' 'int8:token@qmax256|@qmaxN, @qmaxkN' \
    'int8:token@qmaxx|@qmaxN, @qmaxkN' 'int8:token@qmax8@qmaxk9|@qmaxN, @qmaxkN' 'int8:token@qmaxk|@qmaxN, @qmaxkN' \
    'int8:token;T0=int8:token@qmax4|takes CODEC:GRAN only'
for bad in 'int4:token@' 'int4:token@2' 'int4:token@0%' 'int4:token@1%@1%' 'int4:token@rope'; do
    "$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --codec "$bad" >/dev/null 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "options are @P%" "$tmp/err" || fail "bad option $bad"
done
# per-layer schedules: every layer overridden to int8 costs what the int8 row costs; one layer changes the row's
# bytes; the name carries the schedule; --layer-sensitivity gives a row per layer and a ranking of every layer
last=$((n_layers - 1))
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec int8:token --codec "int4:token;L0-$last=int8:token" --codec 'int4:token;L0=int8:token' \
    --codec 'int4:token@clip;L0=none' >"$tmp/out" 2>"$tmp/err" || fail "schedule exit $?"
b8=$(awk '$1 == "int8/token" {print $2}' "$tmp/out")
ball=$(awk -v n="int4/token;L0-$last=int8/token" '$1 == n {print $2}' "$tmp/out")
b40=$(awk '$1 == "int4/token;L0=int8/token" {print $2}' "$tmp/out")
bnone=$(awk '$1 == "int4/token@clip;L0=none" {print $2}' "$tmp/out")
[ -n "$b8" ] && [ "$b8" = "$ball" ] || fail "every layer int8: $ball bytes/token, int8 row $b8"
awk -v a="$b40" -v b="$b8" 'BEGIN { exit !(a > 0 && a < b) }' || fail "one int8 layer: $b40 against $b8"
[ -n "$bnone" ] || fail "a none override row"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --layer-sensitivity int4:token@clip >"$tmp/out" 2>"$tmp/err" || fail "sensitivity exit $?"
[ "$(grep -c '^none;L[0-9]*=int4/token@clip ' "$tmp/out")" -eq "$n_layers" ] || fail "a sensitivity row per layer"
grep -q '^none (f32 rows)' "$tmp/out" || fail "sensitivity control row"
order=$(sed -n 's/^by sensitivity: L//p' "$tmp/out")
[ "$(echo "$order" | tr ',' '\n' | sort -n | tr '\n' ' ')" = "$(seq 0 "$last" | tr '\n' ' ')" ] ||
    fail "the ranking names every layer once: $order"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --layer-sensitivity none >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "needs a quantizing codec" "$tmp/err" || fail "sensitivity of none"
refused "bad schedule" 'int4:token;L0=int8:token;L0=int4:token|named twice' 'int4:token;L0,0=int8:token|named twice' \
    'int4:token;3=int8:token|L<layers>=CODEC' 'int4:token;L0=|L<layers>=CODEC' 'int4:token;L=int8:token|L<layers>=CODEC' \
    'int4:token;L2-1=int8:token|ranges a-b' 'int4:token;L1,=int8:token|ranges a-b' 'int4:token;Lx=int8:token|ranges a-b' \
    "int4:token;L$n_layers=int8:token|the model has $n_layers layers" 'int4:token;L0=int5:token|unknown codec' \
    'int4:token;L0=int8;L1=int8;L2=int8;L3=int8;L4=int8|at most 4' 'int4:token;L0=bf16@rot|quantizing codec'
# per-token schedules: a rule over every row costs the int8 row; position 0 at int8 lies between int4 and int8 and
# costs more than int4 by at least a group descriptor per layer; the name carries the rules; combined with a layer
# override
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads \
    --codec int8:token --codec int4:token --codec 'int4:token;T0-4095=int8:token' --codec 'int4:token;T0=int8:token' \
    --codec 'int4:token@rot;L0=int8:token;Tlast2=int8:token,int4:token' --codec 'int4:token;T0=recompute' \
    --codec 'int4:token;T0-4095=recompute' >"$tmp/out" 2>"$tmp/err" || fail "tokens exit $?"
[ "$(grep -c '^ *[0-9]\+ \+[0-9.]\+ \+[0-9.]\+ \+[0-9.]\+ \+[0-9.]\+ \+[0-9.]\+ \+[0-9.]\+ ' "$tmp/out")" -eq "$n_layers" ] ||
    fail "a per-position norm row per layer"
b8=$(awk '$1 == "int8/token" {print $2}' "$tmp/out")
b4=$(awk '$1 == "int4/token" {print $2}' "$tmp/out")
ball=$(awk '$1 == "int4/token;T0-4095=int8/token" {print $2}' "$tmp/out")
bsink=$(awk '$1 == "int4/token;T0=int8/token" {print $2}' "$tmp/out")
[ -n "$b8" ] && [ "$b8" = "$ball" ] || fail "every row int8: $ball bytes/token, int8 row $b8"
rows=$(sed -n 's/^1 prompts, \([0-9]*\) prompt rows/\1/p' "$tmp/out")
awk -v a="$bsink" -v b4="$b4" -v b8="$b8" -v l="$n_layers" -v r="$rows" \
    'BEGIN { exit !(a >= b4 + 12 * l / r && a < b8) }' || fail "position 0 at int8: $bsink, int4 $b4, int8 $b8"
grep -q '^int4/token@rot;L0=int8/token;Tlast2=int8/token+int4/token ' "$tmp/out" || fail "layer and token schedule row"
# a prefix not sent (the receiver prefills it): fewer bytes than int4; every row omitted: nothing sent, the reference
brec=$(awk '$1 == "int4/token;T0=recompute" {print $2}' "$tmp/out")
awk -v a="$brec" -v b4="$b4" 'BEGIN { exit !(a > 0 && a < b4) }' || fail "position 0 recomputed: $brec, int4 $b4"
row=$(grep '^int4/token;T0-4095=recompute ' "$tmp/out") || fail "every row recomputed"
read -r _ bytes bits kerr verr tf kl _ <<<"$row"
[ "$bytes $bits $kerr $verr $tf $kl" = "0.0 0.000 0.00e+00 0.00e+00 1.0000 0.00e+00" ] || fail "every row recomputed: $row"
refused "bad token schedule" 'int4:token;T3-1=int8:token|token positions are' 'int4:token;T0-3=int8:token;T2=int4:token|named twice' \
    'int4:token;Tlast0=int8:token|Tlast<N> takes N >= 1' 'int4:token;Tlast2=int8:token;Tlast1=int8:token|given twice' \
    'int4:token;T0=none|needs a wire codec' 'int4:token;T0=int8:token@rot|CODEC:GRAN only' \
    'int4:token;T=int8:token|a token rule is' 'none;T0=int8:token|quantizes no layer' 'int4:token;Tx=int8:token|token positions' \
    'int4:token;T0=int5:token|unknown codec' 'int4:token;T0,1,2,3,4,5,6,7,8=int8:token|at most 8' \
    'int4:token;T0=|a token rule is' 'int4:token@rotv;T0=int8:token,bf16|passthrough codec in a rotated layer' 'int4:token;L0=int4:token@rotv;T0=bf16|passthrough codec in a rotated layer' 'int4:token;T1=recompute|recompute takes a prefix' 'int4:token;Tlast1=recompute|recompute takes a prefix'
# centred keys (issue 15): @center and @centerpost run and count mu (H x D f16 per layer, 2 bytes per value over the
# prompt's rows) above the plain row; --qk-gain prints its four distributions; misuse is refused with a reason
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads --qk-gain \
    --codec int4:token --codec 'int4:token@center' --codec 'int4:token@centerpost@rotv' --codec 'int4:token@center@qscale' >"$tmp/out" 2>"$tmp/err" ||
    fail "centred keys exit $?"
b4=$(awk '$1 == "int4/token" {print $2}' "$tmp/out")
bc=$(awk '$1 == "int4/token@center" {print $2}' "$tmp/out")
bp=$(awk '$1 == "int4/token@centerpost@rotv" {print $2}' "$tmp/out")
rows=$(sed -n 's/^1 prompts, \([0-9]*\) prompt rows/\1/p' "$tmp/out")
awk -v a="$bc" -v b="$b4" -v l="$n_layers" -v h="$n_heads" -v d="$head_dim" -v r="$rows" \
    'BEGIN { x = b + l * h * d * 2 / r; exit !(a - x < 0.06 && x - a < 0.06) }' || fail "@center bytes $bc, int4 $b4"
[ "$bp" = "$bc" ] || fail "@centerpost bytes $bp, @center $bc"
bq=$(awk '$1 == "int4/token@center@qscale" {print $2}' "$tmp/out")
awk -v a="$bq" -v b="$bc" -v l="$n_layers" -v h="$n_heads" -v d="$head_dim" -v r="$rows" \
    'BEGIN { x = b + l * h * d / r; exit !(a - x < 0.06 && x - a < 0.06) }' || fail "@qscale bytes $bq, @center $bc"
[ "$(grep -cE '^(raw|centred) +(channel|RoPE pairs) +[0-9.]+ ' "$tmp/out")" -eq 4 ] || fail "--qk-gain rows"
refused "bad centring" 'int4:token@centerv|centres keys only' 'int4:token@center@centerpost|named twice' \
    'int4:token@center@prerope|with @prerope' 'int4:token@centerq|centring options are' \
    'int4:token;T0=int8:token@center|CODEC:GRAN only' \
    'int4:token;L0=int4:token@prerope@center|with @prerope' 'int4:token@qscale@qscale|@qscale named twice' \
    'int4:token@qscale@prerope|not with @prerope' 'int4:token;T0=int8:token@qscale|CODEC:GRAN only'
: >"$tmp/empty.txt"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/empty.txt" >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q "holds no prompt" "$tmp/err" || fail "empty prompt file"
# --scale log8: the default list leaves out the codecs log8 cannot carry (e4m3, nf4) and runs the rest; asking for one
# of them is an error that names it
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --max-new-tokens 2 --max-prompts 1 --no-heads --scale log8 \
    >"$tmp/out" 2>"$tmp/err" || fail "log8 with the default codecs exit $?"
[ "$(sed -n '/^codec /,$p' "$tmp/out" | awk 'NR > 1 {print $1}' | tr '\n' ' ')" = \
    "none bf16 int8/token int8/group32 int8/head int6/token int4/token int4/group32 int4/head " ] ||
    fail "log8 default rows"
! grep -q refused "$tmp/out" || fail "a log8 default row was refused"
grep -q "log8 leaves nf4:group32 out" "$tmp/err" || fail "log8 does not say what it left out"
"$kvwire" kvstats --model "$tmp/m" --prompts "$tmp/p.txt" --scale log8 --codec int4:token --codec nf4:group32 \
    >/dev/null 2>"$tmp/err"
[ $? -eq 1 ] && grep -q -- "--codec nf4:group32: --scale log8 carries the integer codecs only" "$tmp/err" ||
    fail "an explicit codec log8 cannot carry"
echo ok
