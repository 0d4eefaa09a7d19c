/* cmd_inspect.c: `kvwire inspect BLOB [--json]` verifies a KVWire blob completely (header, every section checksum,
 * positions, scales, every code by dequantizing it, the trailer and the blob checksum) and prints the header, every
 * section and token group, the byte breakdown, and the order-0 entropy of the codes (per tensor: what a static entropy
 * coder could store them in). A bad blob prints what was verified before the fault, then the
 * error name and reason, and exits 1. It reads the file through a read-only mapping and never modifies it. */
#include "kw_commands.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_status.h"
#include "tools/kw_cli.h"
#include "wire/kw_wire.h"

const char kw_cmd_inspect_summary[] = "verify a KVWire blob and print its header, sections and byte breakdown";

static void kw__inspect_usage(FILE *out) {
    fprintf(out, "usage: kvwire inspect BLOB [--json]\n\n"
                 "Verifies every checksum, position, scale and code of a KVWire blob (docs/FORMAT.md) and prints\n"
                 "its header, sections, token groups and byte breakdown, and the order-0 entropy of its codes (each\n"
                 "tensor with its own table, the tables not counted: a bound for entropy-coding the codes, not a\n"
                 "coder). Exit status 0 if the blob is valid, 1 if not (the error name is printed), 2 for usage\n"
                 "errors.\n");
}

static void kw__spec_str(char *buf, size_t n, const kw_wire_tensor_view *t) {
    const kw_wire_codec_spec *s = &t->spec;
    char codec[20], gran[20];
    kw_wire_spec_codec_format(s, codec, sizeof codec);
    kw_wire_spec_gran_format(s, gran, sizeof gran);
    if (s->granularity == KW_WIRE_GRAN_NONE)
        snprintf(buf, n, "%s", codec);
    else
        snprintf(buf, n, "%s/%s/%s", codec, gran, kw_wire_scale_name(kw_wire_spec_scale(s)));
}

static cJSON *kw__tensor_json(const kw_wire_tensor_view *t) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "codec", kw_wire_codec_name(t->spec.codec));
    cJSON_AddStringToObject(o, "granularity", kw_wire_gran_name(t->spec.granularity));
    cJSON_AddStringToObject(o, "scale_dtype", kw_wire_scale_name(kw_wire_spec_scale(&t->spec)));
    if (t->spec.granularity == KW_WIRE_GRAN_GROUP) cJSON_AddNumberToObject(o, "group_size", 1u << t->spec.group_log2);
    if (t->spec.granularity == KW_WIRE_GRAN_CHANNEL) cJSON_AddNumberToObject(o, "run_tokens", 1u << t->spec.group_log2);
    if (kw_wire_spec_asym(&t->spec)) cJSON_AddBoolToObject(o, "zero_points", 1);
    cJSON_AddNumberToObject(o, "scale_bytes", t->scale_bytes);
    if (kw_wire_spec_asym(&t->spec)) cJSON_AddNumberToObject(o, "zero_point_bytes", t->zero_bytes);
    cJSON_AddNumberToObject(o, "code_bytes", (double)t->code_bytes);
    return o;
}

static void kw__pct_line(const char *what, uint64_t bytes, uint64_t total, int negative) {
    char num[32];
    snprintf(num, sizeof num, "%s%" PRIu64, negative && bytes ? "-" : "", bytes);
    printf("  %-14s %15s  %8.3f%%\n", what, num,
           total ? 100.0 * (double)bytes / (double)total * (negative ? -1 : 1) : 0.0);
}

/* The order-0 entropy of every tensor of a section, summed into *bits (bits) and *codes. */
static int kw__section_entropy(const kw_wire_section *s, double *bits, uint64_t *codes) {
    *bits = 0.0;
    *codes = 0;
    for (uint32_t g = 0; g < s->n_groups; ++g)
        for (int kv = 0; kv < 2; ++kv) {
            double b = 0.0;
            uint64_t n = 0;
            KW_FORWARD(kw_wire_tensor_code_entropy(kv ? &s->groups[g].v : &s->groups[g].k, &b, &n));
            *bits += b;
            *codes += n;
        }
    return 0;
}

/* Dequantizes a section into scratch memory: validates every code. */
static int kw__check_values(const kw_wire_section *s, float **scratch, size_t *cap) {
    const size_t n = (size_t)s->n_kv_heads * s->n_tokens * s->head_dim;
    if (*cap < n) {
        float *p = realloc(*scratch, n * sizeof *p);
        KW_RETURN_IF(!p, KW_E_NOMEM, "%zu values of scratch", n);
        *scratch = p;
        *cap = n;
    }
    const kw_wire_tensor_out out = {*scratch, KW_WIRE_DTYPE_F32, (size_t)s->n_tokens * s->head_dim, s->head_dim};
    KW_FORWARD(kw_wire_section_dequantize(s, &out, NULL));
    return kw_wire_section_dequantize(s, NULL, &out);
}

int kw_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    const kw_cli_option opts[] = {
        KW_CLI_ARG_REQUIRED("BLOB", &path),
        KW_CLI_FLAG("--json", &json),
    };
    const int st = KW_CLI_PARSE("kvwire inspect", argc, argv, opts, kw__inspect_usage);
    if (st != KW_CLI_RUN) return st;
    kw_file_map map = {0};
    int rc = kw_file_map_open(path, &map);
    if (rc < 0) {
        fprintf(stderr, "kvwire inspect: %s: %s\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    cJSON *root = json ? cJSON_CreateObject() : NULL, *jsections = NULL;
    if (json) {
        cJSON_AddStringToObject(root, "file", path);
        cJSON_AddNumberToObject(root, "bytes", (double)map.size);
    } else {
        printf("%s: %zu bytes\n", path, map.size);
    }
    kw_wire_reader *r = NULL;
    const kw_wire_header *h = NULL;
    float *scratch = NULL;
    size_t scratch_cap = 0;
    uint64_t elements = 0, codes = 0;
    double entropy_bits = 0.0;
    rc = kw_wire_reader_open(map.data, map.size, NULL, &r, &h);
    if (rc == 0) {
        const uint64_t hsum = kw_load_le64(map.data + 56);
        if (json) {
            cJSON *jh = cJSON_AddObjectToObject(root, "header");
            cJSON_AddNumberToObject(jh, "version", h->version == KW_WIRE_VERSION_1_1 ? 1.1 : 1.0);
            cJSON_AddNumberToObject(jh, "version_field", h->version);
            cJSON_AddNumberToObject(jh, "n_layers", h->n_layers);
            cJSON_AddNumberToObject(jh, "n_sections", h->n_sections);
            cJSON_AddNumberToObject(jh, "n_kv_heads", h->n_kv_heads);
            cJSON_AddNumberToObject(jh, "head_dim", h->head_dim);
            cJSON_AddNumberToObject(jh, "n_positions", h->n_positions);
            cJSON_AddStringToObject(jh, "src_dtype", kw_wire_dtype_name(h->src_dtype));
            char buf[32];
            snprintf(buf, sizeof buf, "0x%016" PRIx64, h->model_id);
            cJSON_AddStringToObject(jh, "model_id", buf);
            cJSON_AddNumberToObject(jh, "policy_id", h->policy_id);
            snprintf(buf, sizeof buf, "0x%016" PRIx64, hsum);
            cJSON_AddStringToObject(jh, "checksum", buf);
            jsections = cJSON_AddArrayToObject(root, "sections");
        } else {
            printf("header   KVWire v%s, %u of %u layers, %u kv heads x %u dims, %u positions, source %s\n",
                   h->version == KW_WIRE_VERSION_1_1 ? "1.1" : "1", h->n_sections, h->n_layers, h->n_kv_heads,
                   h->head_dim, h->n_positions, kw_wire_dtype_name(h->src_dtype));
            printf("         model_id 0x%016" PRIx64 ", policy_id %u, checksum %016" PRIx64 " ok\n", h->model_id,
                   h->policy_id, hsum);
            printf("\n%-4s %10s %10s %5s %8s %-14s %-19s %6s  %s\n", "sec", "offset", "bytes", "layer", "tokens",
                   "index", "coded raw->stored", "groups", "checksum");
        }
        const kw_wire_section *s;
        while ((rc = kw_wire_reader_next(r, &s)) == 1) {
            rc = kw__check_values(s, &scratch, &scratch_cap);
            elements += 2ull * s->n_kv_heads * s->n_tokens * s->head_dim;
            double sec_bits = 0.0;
            uint64_t sec_codes = 0;
            if (rc == 0) rc = kw__section_entropy(s, &sec_bits, &sec_codes);
            entropy_bits += sec_bits;
            codes += sec_codes;
            if (json) {
                cJSON *js = cJSON_CreateObject();
                cJSON_AddNumberToObject(js, "ordinal", s->ordinal);
                cJSON_AddNumberToObject(js, "offset", (double)s->offset);
                cJSON_AddNumberToObject(js, "bytes", (double)s->size);
                cJSON_AddNumberToObject(js, "layer", s->layer);
                cJSON_AddNumberToObject(js, "n_tokens", s->n_tokens);
                cJSON_AddStringToObject(js, "index_encoding", kw_wire_index_name(s->index_encoding));
                cJSON_AddNumberToObject(js, "index_bytes", s->index_bytes);
                cJSON_AddBoolToObject(js, "compressed", s->compressed);
                if (s->compressed) cJSON_AddStringToObject(js, "coder", s->rans_coded ? "rans" : "zstd");
                cJSON_AddNumberToObject(js, "raw_body_bytes", s->raw_body_bytes);
                cJSON_AddNumberToObject(js, "stored_body_bytes", s->stored_body_bytes);
                if (s->pre_rope) cJSON_AddBoolToObject(js, "pre_rope_keys", 1);
                if (s->rotated & 1) cJSON_AddBoolToObject(js, "rotated_keys", 1);
                if (s->rotated & 2) cJSON_AddBoolToObject(js, "rotated_values", 1);
                if (s->n_outliers) {
                    cJSON *jo = cJSON_AddObjectToObject(js, "outliers");
                    cJSON_AddNumberToObject(jo, "n", s->n_outliers);
                    cJSON_AddStringToObject(jo, "value_dtype", kw_wire_dtype_name(s->outlier_dtype));
                    cJSON_AddNumberToObject(jo, "bytes", s->outlier_bytes);
                }
                char buf[32];
                snprintf(buf, sizeof buf, "0x%016" PRIx64, s->checksum);
                cJSON_AddStringToObject(js, "checksum", buf);
                cJSON *jg = cJSON_AddArrayToObject(js, "groups");
                for (uint32_t g = 0; g < s->n_groups; ++g) {
                    cJSON *o = cJSON_CreateObject();
                    cJSON_AddNumberToObject(o, "first_token", s->groups[g].first_token);
                    cJSON_AddNumberToObject(o, "n_tokens", s->groups[g].n_tokens);
                    cJSON_AddItemToObject(o, "k", kw__tensor_json(&s->groups[g].k));
                    cJSON_AddItemToObject(o, "v", kw__tensor_json(&s->groups[g].v));
                    cJSON_AddItemToArray(jg, o);
                }
                cJSON_AddNumberToObject(js, "codes", (double)sec_codes);
                cJSON_AddNumberToObject(js, "code_entropy_bits", sec_bits);
                cJSON_AddBoolToObject(js, "values_ok", rc == 0);
                cJSON_AddItemToArray(jsections, js);
            } else {
                char idx[32], z[32];
                snprintf(idx, sizeof idx, "%s(%u)", kw_wire_index_name(s->index_encoding), s->index_bytes);
                if (s->compressed)
                    snprintf(z, sizeof z, "%u->%u%s", s->raw_body_bytes, s->stored_body_bytes,
                             s->rans_coded ? " rans" : "");
                else
                    snprintf(z, sizeof z, "-");
                printf("%-4u %10" PRIu64 " %10" PRIu64 " %5u %8u %-14s %-19s %6u  %016" PRIx64 " ok\n", s->ordinal,
                       s->offset, s->size, s->layer, s->n_tokens, idx, z, s->n_groups, s->checksum);
                for (uint32_t g = 0; g < s->n_groups; ++g) {
                    const kw_wire_group_view *gv = &s->groups[g];
                    char k[64], v[64];
                    kw__spec_str(k, sizeof k, &gv->k);
                    kw__spec_str(v, sizeof v, &gv->v);
                    printf("       group %u: tokens %u..%u  K %s (%u + %" PRIu64 " B)  V %s (%u + %" PRIu64 " B)\n", g,
                           gv->first_token, gv->first_token + gv->n_tokens - 1, k, gv->k.scale_bytes + gv->k.zero_bytes,
                           gv->k.code_bytes, v, gv->v.scale_bytes + gv->v.zero_bytes, gv->v.code_bytes);
                }
                if (s->n_outliers)
                    printf("       outliers: %u exact %s values (%u B)\n", s->n_outliers,
                           kw_wire_dtype_name(s->outlier_dtype), s->outlier_bytes);
                if (s->pre_rope) printf("       K taken before RoPE (the receiver applies it)\n");
                if (s->rotated)
                    printf("       %s Hadamard-rotated (the decoder rotates back)\n", s->rotated == 3   ? "K and V"
                                                                                      : s->rotated == 1 ? "K"
                                                                                                        : "V");
            }
            if (rc < 0) break;
        }
    }
    const int ok = rc == 0;
    if (ok) {
        const kw_wire_breakdown *bd = kw_wire_reader_breakdown(r);
        const uint64_t bsum = kw_load_le64(map.data + map.size - 8);
        const double per = elements ? (double)bd->total / (double)elements : 0.0;
        const double payload_only = elements ? (double)bd->payload / (double)elements : 0.0;
        if (json) {
            cJSON *jb = cJSON_AddObjectToObject(root, "breakdown");
            cJSON_AddNumberToObject(jb, "header", (double)bd->header);
            cJSON_AddNumberToObject(jb, "indices", (double)bd->indices);
            cJSON_AddNumberToObject(jb, "scales", (double)bd->scales);
            cJSON_AddNumberToObject(jb, "zero_points", (double)bd->zero_points);
            cJSON_AddNumberToObject(jb, "payload", (double)bd->payload);
            cJSON_AddNumberToObject(jb, "outliers", (double)bd->outliers);
            cJSON_AddNumberToObject(jb, "checksums", (double)bd->checksums);
            cJSON_AddNumberToObject(jb, "compression_saved", (double)bd->compression_saved);
            cJSON_AddNumberToObject(jb, "total", (double)bd->total);
            cJSON_AddNumberToObject(jb, "kv_elements", (double)elements);
            cJSON_AddNumberToObject(jb, "bytes_per_element", per);
            cJSON_AddNumberToObject(jb, "codes", (double)codes);
            cJSON_AddNumberToObject(jb, "code_entropy_bits", entropy_bits);
            char buf[32];
            snprintf(buf, sizeof buf, "0x%016" PRIx64, bsum);
            cJSON_AddStringToObject(root, "blob_checksum", buf);
        } else {
            printf("\ntrailer  blob checksum %016" PRIx64 " ok; every position, scale and code verified\n", bsum);
            printf("\nbreakdown (bytes, share of the blob)\n");
            kw__pct_line("header+tables", bd->header, bd->total, 0);
            kw__pct_line("indices", bd->indices, bd->total, 0);
            kw__pct_line("scales", bd->scales, bd->total, 0);
            if (bd->zero_points) kw__pct_line(" of which zeros", bd->zero_points, bd->total, 0);
            kw__pct_line("payload", bd->payload, bd->total, 0);
            if (bd->outliers) kw__pct_line("outliers", bd->outliers, bd->total, 0);
            kw__pct_line("checksums", bd->checksums, bd->total, 0);
            kw__pct_line("zstd saved", bd->compression_saved, bd->total, 1);
            kw__pct_line("total", bd->total, bd->total, 0);
            printf("  %" PRIu64 " KV elements: %.4f bytes/element (payload alone %.4f; bf16 2.0000)\n", elements, per,
                   payload_only);
            if (codes)
                printf("  %" PRIu64 " codes: order-0 entropy %.4f bits/code, %.0f bytes for the codes alone "
                       "(each tensor's own table, not counted)\n",
                       codes, entropy_bits / (double)codes, ceil(entropy_bits / 8.0));
        }
    }
    if (json) {
        cJSON_AddBoolToObject(root, "ok", ok);
        if (!ok) {
            cJSON *je = cJSON_AddObjectToObject(root, "error");
            cJSON_AddNumberToObject(je, "code", rc);
            cJSON_AddStringToObject(je, "name", kw_status_name(rc));
            cJSON_AddStringToObject(je, "detail", kw_error_detail());
        }
        char *text = cJSON_Print(root);
        if (text) puts(text);
        free(text);
        cJSON_Delete(root);
    }
    if (!ok) fprintf(stderr, "kvwire inspect: %s: %s: %s\n", path, kw_status_name(rc), kw_error_detail());
    free(scratch);
    kw_wire_reader_close(r);
    kw_file_unmap(&map);
    return ok ? 0 : 1;
}
