/* kw_load_summary.h: a run folder's records turned into its summary (summary.json) and the human-readable block on
 * stdout. The summary is computed from the files alone (run.json, records.jsonl, forced.jsonl and the reference run's
 * records), so `kvload summarize DIR` recomputes it, and what it says can be checked against the records: accuracy is
 * the fraction of correct records among the successful graded ones, byte totals are sums over the records.
 *
 * Field names follow vLLM's `bench serve` result (completed, failed, request_throughput, output_throughput,
 * total_token_throughput, mean_/median_/std_/p90_/p99_{ttft,tpot,itl,e2el}_ms), with the transfer's fields added
 * (bytes, stages_ms, accuracy, quality). Latencies are in milliseconds, throughputs per second of the measured phase
 * (from its start to the last answer).
 */
#ifndef KW_LOAD_SUMMARY_H
#define KW_LOAD_SUMMARY_H

#include <stdio.h>

#include <cjson/cJSON.h>

/* Computes the summary of the run folder dir. complete says whether every measured request was sent (false after an
 * interruption). @return 0 and *out (caller owns), or KW_E_IO/KW_E_PARSE/KW_E_NOMEM naming the file. */
int kw_load_summary_compute(const char *dir, int complete, cJSON **out);

/* Prints the human-readable block (vLLM's layout, plus accuracy, bytes, stages, quality). */
void kw_load_summary_print(const cJSON *summary, FILE *out);

/* Computes, writes dir/summary.json atomically and prints to console (may be NULL). */
int kw_load_summary_write(const char *dir, int complete, FILE *console);

#endif /* KW_LOAD_SUMMARY_H */
