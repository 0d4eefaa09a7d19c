/* kw_cpu_kvq.c: the paged quantized KV cache's store, load and truncate on the CPU (kw_op_kvq_*, format in
 * kernels/kw_kvq_format.h). Plain C on every ISA: quantizing is a division and a round per value, done once per stored
 * row, and the values it produces (fl(code * scale)) do not depend on the ISA. Heads are independent work items. The
 * attention that reads the storage is kw_cpu_attention.c's.
 */
#include "kernels/cpu/kw_cpu.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_kvq_format.h"

/* Quantizes a full key page: vals (P, D) f32 into the codes of page p and its D channel scales. */
static void kvq_quantize_key_page(uint8_t *head, const kw_kvq_geom *g, int64_t p, const float *vals) {
    const int64_t P = g->page_tokens, D = g->D;
    const int qmax = kw_kvq_code_max(g->codec);
    const size_t row_bytes = kw_kvq_row_bytes(g->codec, D);
    uint8_t *scales = head + kw_kvq_scales_offset(g) + (size_t)(p * D);
    for (int64_t d = 0; d < D; ++d) {
        float amax = 0.0f;
        for (int64_t r = 0; r < P; ++r) {
            const float a = fabsf(vals[r * D + d]);
            if (a > amax) amax = a; /* NaN is ignored here and stored as 0 */
        }
        scales[d] = kw_kvq_choose_scale(amax, qmax);
    }
    for (int64_t r = 0; r < P; ++r) {
        uint8_t *codes = head + (size_t)(p * P + r) * row_bytes;
        for (int64_t d = 0; d < D; ++d)
            kw_kvq_set_code(codes, g->codec, d, kw_kvq_quantize(vals[r * D + d], scales[d], qmax));
    }
}

/* The value of key row r of a head whose storage holds n_rows rows, into out (D). */
static void kvq_key_row(const uint8_t *head, const kw_kvq_geom *g, int64_t n_rows, int64_t r, float *out) {
    const int64_t P = g->page_tokens, D = g->D, full = n_rows / P * P;
    if (r >= full) {
        const uint16_t *tail = (const uint16_t *)(head + kw_kvq_tail_offset(g)) + (r - full) * D;
        for (int64_t d = 0; d < D; ++d)
            out[d] = kw_bf16_to_f32(tail[d]);
        return;
    }
    const uint8_t *scales = head + kw_kvq_scales_offset(g) + (size_t)(r / P * D);
    const uint8_t *codes = head + (size_t)r * kw_kvq_row_bytes(g->codec, D);
    for (int64_t d = 0; d < D; ++d)
        out[d] = (float)kw_kvq_get_code(codes, g->codec, d) * kw_kvq_scale(scales[d]);
}

/* The value of value row r into out (D). */
static void kvq_value_row(const uint8_t *head, const kw_kvq_geom *g, int64_t r, float *out) {
    const int64_t G = kw_kvq_value_group(g->D);
    const uint8_t *scales = head + kw_kvq_scales_offset(g) + (size_t)(r * (g->D / G));
    const uint8_t *codes = head + (size_t)r * kw_kvq_row_bytes(g->codec, g->D);
    for (int64_t d = 0; d < g->D; ++d)
        out[d] = (float)kw_kvq_get_code(codes, g->codec, d) * kw_kvq_scale(scales[d / G]);
}

/* Quantizes one value row x (D) into row r. */
static void kvq_store_value_row(uint8_t *head, const kw_kvq_geom *g, int64_t r, const float *x) {
    const int qmax = kw_kvq_code_max(g->codec);
    const int64_t G = kw_kvq_value_group(g->D);
    uint8_t *scales = head + kw_kvq_scales_offset(g) + (size_t)(r * (g->D / G));
    uint8_t *codes = head + (size_t)r * kw_kvq_row_bytes(g->codec, g->D);
    for (int64_t d0 = 0; d0 < g->D; d0 += G) {
        float amax = 0.0f;
        for (int64_t d = d0; d < d0 + G; ++d) {
            const float a = fabsf(x[d]);
            if (a > amax) amax = a;
        }
        const uint8_t s = kw_kvq_choose_scale(amax, qmax);
        scales[d0 / G] = s;
        for (int64_t d = d0; d < d0 + G; ++d)
            kw_kvq_set_code(codes, g->codec, d, kw_kvq_quantize(x[d], s, qmax));
    }
}

/* Stores rows [pos0, pos0 + T) of one key head (src rows are token-major with stride H * D), holding n_rows rows. buf
 * has room for max(P, rows from the tail page's start to the new end) * D floats. */
static void kvq_store_key_head(uint8_t *head, const kw_kvq_geom *g, const float *src, int64_t T, int64_t stride,
                               int64_t pos0, int64_t n_rows, float *buf) {
    const int64_t P = g->page_tokens, D = g->D, end = pos0 + T;
    const int64_t old_tail = n_rows / P, new_len = end > n_rows ? end : n_rows, new_tail = new_len / P;
    /* full pages that the rows overwrite: rebuild each with its new rows and quantize it again */
    for (int64_t p = pos0 / P; p < old_tail && p * P < end; ++p) {
        for (int64_t r = 0; r < P; ++r) {
            const int64_t row = p * P + r;
            if (row >= pos0 && row < end) {
                for (int64_t d = 0; d < D; ++d)
                    buf[r * D + d] = kw_round_bf16(src[(row - pos0) * stride + d]);
            } else {
                kvq_key_row(head, g, n_rows, row, buf + r * D);
            }
        }
        kvq_quantize_key_page(head, g, p, buf);
    }
    /* the rows from the tail page on: gather (bf16 values), quantize the pages they fill, keep the rest as the tail */
    const int64_t first = old_tail * P;
    for (int64_t row = first; row < new_len; ++row) {
        float *b = buf + (row - first) * D;
        if (row >= pos0 && row < end) {
            for (int64_t d = 0; d < D; ++d)
                b[d] = kw_round_bf16(src[(row - pos0) * stride + d]);
        } else {
            kvq_key_row(head, g, n_rows, row, b);
        }
    }
    for (int64_t p = old_tail; p < new_tail; ++p)
        kvq_quantize_key_page(head, g, p, buf + (p - old_tail) * P * D);
    uint16_t *tail = (uint16_t *)(head + kw_kvq_tail_offset(g));
    for (int64_t row = new_tail * P; row < new_len; ++row)
        for (int64_t d = 0; d < D; ++d)
            tail[(row - new_tail * P) * D + d] = kw_f32_to_bf16(buf[(row - first) * D + d]);
}

typedef struct kw_kvq_store_job {
    uint8_t *base;
    const kw_kvq_geom *g;
    const float *s;
    float *buf;
    size_t head_bytes, per_head;
    int64_t T, pos0, n_rows;
} kw_kvq_store_job;

static void kw_kvq_store_head_task(void *arg, int64_t h, int worker) {
    (void)worker;
    const kw_kvq_store_job *j = arg;
    const int64_t D = j->g->D, H = j->g->H;
    kvq_store_key_head(j->base + (size_t)h * j->head_bytes, j->g, j->s + h * D, j->T, H * D, j->pos0, j->n_rows,
                       j->buf + j->per_head * (size_t)h);
}

int kw__cpu_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                      int64_t n_rows) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = src->ne[0], H = g->H, D = g->D, P = g->page_tokens;
    const size_t head_bytes = kw_kvq_head_bytes(g);
    const float *s = src->data;
    uint8_t *base = store->data;
    if (!g->keys) {
        for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h)
                kvq_store_value_row(base + (size_t)h * head_bytes, g, pos0 + t, s + (t * H + h) * D);
        return 0;
    }
    const int64_t end = pos0 + T, new_len = end > n_rows ? end : n_rows, span = new_len - n_rows / P * P;
    if (pos0 >= n_rows / P * P && new_len / P == n_rows / P) {
        /* the rows stay in the tail page (a decode step, mostly): write them there as bf16, nothing else moves */
        for (int64_t h = 0; h < H; ++h) {
            uint16_t *tail = (uint16_t *)(base + (size_t)h * head_bytes + kw_kvq_tail_offset(g));
            for (int64_t t = 0; t < T; ++t)
                for (int64_t d = 0; d < D; ++d)
                    tail[(pos0 + t - n_rows / P * P) * D + d] = kw_f32_to_bf16(s[(t * H + h) * D + d]);
        }
        return 0;
    }
    const size_t per_head = (size_t)((span > P ? span : P) * D);
    float *buf = malloc(per_head * (size_t)H * sizeof(float));
    KW_RETURN_IF(!buf, KW_E_NOMEM, "kvq_store: out of memory");
    const int nt = (int)(H < cpu->n_threads ? H : cpu->n_threads);
    kw_kvq_store_job job = {base, g, s, buf, head_bytes, per_head, T, pos0, n_rows};
    kw_cpu_pool_run(cpu->pool, nt, H, kw_kvq_store_head_task, &job);
    free(buf);
    return 0;
}

int kw__cpu_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                     int64_t n_rows) {
    (void)backend;
    const int64_t T = out->ne[0], H = g->H, D = g->D;
    const size_t head_bytes = kw_kvq_head_bytes(g);
    const uint8_t *base = store->data;
    float *y = out->data;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
            const uint8_t *head = base + (size_t)h * head_bytes;
            if (g->keys)
                kvq_key_row(head, g, n_rows, pos0 + t, y + (t * H + h) * D);
            else
                kvq_value_row(head, g, pos0 + t, y + (t * H + h) * D);
        }
    return 0;
}

int kw__cpu_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows,
                         int64_t new_rows) {
    (void)backend;
    const int64_t P = g->page_tokens, D = g->D, page = new_rows / P;
    if (!g->keys || page == n_rows / P || new_rows == page * P) return 0; /* the tail page stays, or becomes empty */
    /* page was full and is now the tail: its first rows go back to bf16 */
    const size_t head_bytes = kw_kvq_head_bytes(g);
    float row[KW_ATTENTION_MAX_HEAD_DIM];
    for (int64_t h = 0; h < g->H; ++h) {
        uint8_t *head = (uint8_t *)store->data + (size_t)h * head_bytes;
        uint16_t *tail = (uint16_t *)(head + kw_kvq_tail_offset(g));
        for (int64_t r = page * P; r < new_rows; ++r) {
            kvq_key_row(head, g, n_rows, r, row);
            for (int64_t d = 0; d < D; ++d)
                tail[(r - page * P) * D + d] = kw_f32_to_bf16(row[d]);
        }
    }
    return 0;
}
