#!/usr/bin/env bash
# cli_kvstats_attn.sh KVWIRE SRC: `kvwire kvstats`'s token rules that pick rows per prompt and layer (;Tattn<P>%,
# ;Tattn<P>%:last<M>, ;Tleast<P>%, ;Trand<P>%) on a tiny random Qwen3: a rule over every row is the high codec's row
# (one group: the plain one), a partial rule lands between the two codecs, the names carry the rules, :last<M> ranks
# by other queries, the rows beside them are unchanged by their presence, and bad rules are refused with a reason
# (0%, over 100%, twice, with recompute, a bad :last).
. "$(dirname "$0")/../cli_lib.sh" "$@"

"$kvwire" gen-model --arch qwen3 --preset tiny --seed 4 --tokenizer "$src/models/tokenizers/qwen3" --out m \
    >/dev/null || fail "gen-model"
printf 'The capital of France is Paris, and the capital of Italy is\n' >p.txt
run() { "$kvwire" kvstats --model m --prompts p.txt --max-new-tokens 3 --no-heads "$@"; }
run --codec int8:token --codec int4:token >plain 2>err
run --codec int8:token --codec int4:token --codec 'int4:token;Tattn100%=int8:token' \
    --codec 'int4:token;Trand100%=int8:token' --codec 'int4:token;Tattn25%=int8:token' \
    --codec 'int4:token;Tattn25%:last4=int8:token' --codec 'int4:token;Tleast25%=int8:token' \
    --codec 'int4:token;T0=recompute;Tattn25%=int8:token' --codec 'int4:token;Tattn25%=int8:token;T0=int8:token' \
    >out 2>err
cat out
col() { awk -v n="$1" -v f="$2" '$1 == n {print $f}' out; } # column f of the row named n
fields() { awk -v n="$1" '$1 == n {$1 = ""; print}' "$2"; } # a row's numbers (the name column's width varies)
for all in 'int4/token;Tattn100%=int8/token' 'int4/token;Trand100%=int8/token'; do
    [ -n "$(fields "$all" out)" ] && [ "$(fields "$all" out)" = "$(fields int8/token out)" ] ||
        fail "$all is not the int8 row"
done
# the plain rows are the same with the picking rows beside them (the prefill then hands its queries out)
for c in int8/token int4/token; do
    [ "$(fields $c plain)" = "$(fields $c out)" ] || fail "$c changed beside the picking rows"
done
b8=$(col int8/token 2) b4=$(col int4/token 2)
for part in 'int4/token;Tattn25%=int8/token' 'int4/token;Tattn25%:last4=int8/token' 'int4/token;Tleast25%=int8/token' \
    'int4/token;T0=recompute;Tattn25%=int8/token' 'int4/token;Tattn25%=int8/token;T0=int8/token'; do
    awk -v a="$(col "$part" 2)" -v b4="$b4" -v b8="$b8" 'BEGIN { exit !(a > b4 && a < b8) }' ||
        fail "$part: bytes $(col "$part" 2), int4 $b4, int8 $b8"
done
# :last4 ranks by other queries than every query's (on this model and prompt they choose other rows)
[ "$(col 'int4/token;Tattn25%:last4=int8/token' 4)" != "$(col 'int4/token;Tattn25%=int8/token' 4)" ] ||
    fail ":last4 chose the rows of every query"
for bad in 'int4:token;Tattn0%=int8:token|percentage of the rows sent in (0, 100]' \
    'int4:token;Tattn101%=int8:token|percentage of the rows sent' 'int4:token;Tattn%=int8:token|percentage' \
    'int4:token;Tattn10=int8:token|percentage' 'int4:token;Trand-5%=int8:token|percentage' \
    'int4:token;Tattn10%=int8:token;Trand10%=int8:token|one Tattn, Tleast or Trand rule per row' \
    'int4:token;Tattn10%=recompute|recompute takes a prefix' 'int4:token;Tattn10%:last0=int8:token|:last<M> takes M' \
    'int4:token;Trand10%:last4=int8:token|only :last<M>' 'int4:token;Tattn10%x=int8:token|only :last<M>' \
    'int4:token;Tattn10%=int8:token@rot|CODEC:GRAN only' 'none;Tattn10%=int8:token|quantizes no layer'; do
    rc=0
    "$kvwire" kvstats --model m --prompts p.txt --max-new-tokens 1 --no-heads --codec "${bad%%|*}" >/dev/null 2>err ||
        rc=$?
    [ $rc -eq 1 ] && grep -q -- "${bad#*|}" err || fail "bad rule ${bad%%|*}"
done
echo ok
