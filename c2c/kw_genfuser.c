/* kw_genfuser.c: writes deterministic random fuser folders (see kw_genfuser.h). The JSON files are formatted the way
 * Python's json.dump formats the reference's own files (projector_config.json compact, projector_{i}.json with
 * indent 2, config.json with indent 4), so a generated folder reads like a released one. */
#include "c2c/kw_genfuser.h"

#include "c2c/kw_torchzip.h"
#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_genmodel.h"
#include "model/kw_safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kw_genfuser_default_gates(int32_t n, uint8_t *gates) {
    for (int32_t t = 0; t < n; ++t)
        gates[t] = (t % 3 == 2) ? KW_GENFUSER_GATE_CLOSED : KW_GENFUSER_GATE_OPEN;
    if (n >= 2) gates[n - 1] = KW_GENFUSER_GATE_K_ONLY;
}

int32_t kw_genfuser_last_aligned(int32_t recv_layers, int32_t sharer_layers, int32_t t) {
    int32_t s = sharer_layers - recv_layers + t;
    if (s < 0) s = 0;
    if (s > sharer_layers - 1) s = sharer_layers - 1;
    return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Text output

/* The texts are built in a kw_buf, whose first failure sticks: appends are not checked one by one, kw_gf_write_text
 * reports it. */

/* A JSON string literal (the names come from the command line). */
static void kw_gf_json_str(kw_buf *t, const char *s) {
    kw_buf_printf(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; ++p) {
        if (*p == '"' || *p == '\\')
            kw_buf_printf(t, "\\%c", *p);
        else if (*p < 0x20)
            kw_buf_printf(t, "\\u%04x", *p);
        else
            kw_buf_printf(t, "%c", *p);
    }
    kw_buf_printf(t, "\"");
}

static int kw_gf_write_text(const char *path, const kw_buf *t) {
    if (t->status < 0) return kw_error_set(t->status, "text for %s: %s", path, kw_error_detail());
    return kw_file_write_all(path, t->data, t->len);
}

// ---------------------------------------------------------------------------------------------------------------
// Values

/* A gate magnitude in [2^-4, 1] from the seed. */
static float kw_gf_gate_mag(uint64_t seed, int32_t layer, const char *which) {
    char name[64];
    snprintf(name, sizeof name, "projector_%d.%s", layer, which);
    const float u = fabsf(kw_genmodel_value(seed, name, 0, 0)) * 16.0f; /* |N(0, 2^-6)| * 16: mostly below 1 */
    return 0.0625f + (u < 0.9375f ? u : 0.9375f);
}

static void kw_gf_gates(const kw_genfuser_options *o, int32_t layer, uint8_t kind, float *k, float *v) {
    const float km = kw_gf_gate_mag(o->seed, layer, "key_gate_logit");
    const float vm = kw_gf_gate_mag(o->seed, layer, "value_gate_logit");
    const int k_open = kind == KW_GENFUSER_GATE_OPEN || kind == KW_GENFUSER_GATE_K_ONLY;
    const int v_open = kind == KW_GENFUSER_GATE_OPEN || kind == KW_GENFUSER_GATE_V_ONLY;
    /* A closed key gate is exactly 0.0 (the initial value, and the boundary of the > 0 test). */
    *k = k_open ? km : 0.0f;
    *v = v_open ? vm : -vm;
}

/* Fills buf (numel elements of dtype) for tensor `name` of projector `layer`. */
static void kw_gf_fill(const kw_genfuser_options *o, int32_t layer, const char *name, size_t numel, void *buf) {
    char full[128];
    snprintf(full, sizeof full, "projector_%d.%s", layer, name);
    const int is_norm = strstr(name, ".norm.") != NULL;
    for (size_t k = 0; k < numel; ++k) {
        const float x = kw_genmodel_value(o->seed, full, is_norm, k);
        if (o->dtype == KW_DTYPE_F32)
            ((float *)buf)[k] = x;
        else
            ((uint16_t *)buf)[k] = kw_f32_to_bf16(x);
    }
}

static void kw_gf_scalar(const kw_genfuser_options *o, float x, void *buf) {
    if (o->dtype == KW_DTYPE_F32)
        *(float *)buf = x;
    else
        *(uint16_t *)buf = kw_f32_to_bf16(x);
}

// ---------------------------------------------------------------------------------------------------------------
// Files

static int kw_gf_projector_weights(const kw_genfuser_options *o, int32_t layer, uint8_t kind, const char *path) {
    const size_t n = kw_fuser_tensor_count(&o->dims);
    const size_t total = n + 1; /* + gate_temperature */
    const size_t es = o->dtype == KW_DTYPE_F32 ? 4 : 2;
    kw_torchzip_write_tensor *tz = calloc(total, sizeof *tz);
    kw_st_write_tensor *st = calloc(total, sizeof *st);
    char(*names)[64] = calloc(total, sizeof *names);
    void **bufs = calloc(total, sizeof *bufs);
    int rc = 0;
    KW_CHECK_IF(!tz || !st || !names || !bufs, KW_E_NOMEM, "projector tables");
    float gk = 0, gv = 0;
    kw_gf_gates(o, layer, kind, &gk, &gv);
    /* The reference state_dict order: key_gate_logit, value_gate_logit, gate_temperature, then the submodules. */
    for (size_t j = 0, i = 0; j < total; ++j) {
        int32_t ndim = 0;
        int64_t shape[2] = {0, 0};
        if (j == 2) {
            snprintf(names[j], sizeof names[j], "gate_temperature");
        } else {
            KW_CHECK(kw_fuser_tensor_spec(&o->dims, i++, names[j], sizeof names[j], &ndim, shape));
        }
        size_t numel = 1, bytes = 0;
        for (int32_t d = 0; d < ndim; ++d)
            numel *= (size_t)shape[d];
        KW_CHECK_IF(kw_size_mul(numel, es, &bytes) < 0, KW_E_OVERFLOW, "tensor %s", names[j]);
        bufs[j] = malloc(bytes ? bytes : 1);
        KW_CHECK_IF(!bufs[j], KW_E_NOMEM, "tensor %s of %zu bytes", names[j], bytes);
        if (j == 0)
            kw_gf_scalar(o, gk, bufs[j]);
        else if (j == 1)
            kw_gf_scalar(o, gv, bufs[j]);
        else if (j == 2)
            kw_gf_scalar(o, 0.001f, bufs[j]);
        else
            kw_gf_fill(o, layer, names[j], numel, bufs[j]);
        tz[j] = (kw_torchzip_write_tensor){.name = names[j], .dtype = o->dtype, .ndim = ndim, .data = bufs[j]};
        st[j] = (kw_st_write_tensor){.name = names[j], .dtype = o->dtype, .ndim = ndim, .data = bufs[j]};
        for (int32_t d = 0; d < ndim; ++d)
            tz[j].shape[d] = st[j].shape[d] = shape[d];
    }
    if (o->safetensors) {
        KW_CHECK(kw_safetensors_write(path, st, total, NULL));
    } else {
        char archive[32];
        snprintf(archive, sizeof archive, "projector_%d", layer);
        KW_CHECK(kw_torchzip_write(path, archive, tz, total));
    }
out:
    if (bufs)
        for (size_t j = 0; j < total; ++j)
            free(bufs[j]);
    free(bufs);
    free(names);
    free(st);
    free(tz);
    return rc;
}

static int kw_gf_projector_json(const kw_genfuser_options *o, const char *path) {
    kw_buf t = KW_BUF_INIT;
    const kw_fuser_dims *d = &o->dims;
    /* The keyword arguments in SFT_train.py's order, then the recipe params (registry.save_object, indent=2). */
    kw_buf_printf(&t,
                  "{\n  \"class\": \"C2CProjector\",\n  \"init_args\": {\n    \"source_dim\": %d,\n"
                  "    \"target_dim\": %d,\n    \"source_num_heads\": %d,\n    \"target_num_heads\": %d,\n"
                  "    \"hidden_dim\": %d,\n    \"intermediate_dim\": %d,\n    \"num_layers\": %d,\n"
                  "    \"dropout\": 0.1,\n    \"initial_temperature\": 1.0,\n    \"final_temperature\": 0.001,\n"
                  "    \"anneal_steps\": 1929,\n    \"dtype\": {\n      \"__type__\": \"torch.dtype\",\n"
                  "      \"value\": \"%s\"\n    }\n  }\n}",
                  d->source_dim, d->target_dim, d->source_heads, d->target_heads, d->hidden_dim, d->intermediate_dim,
                  d->num_layers, o->dtype == KW_DTYPE_F32 ? "float32" : "bfloat16");
    const int rc = kw_gf_write_text(path, &t);
    kw_buf_free(&t);
    return rc;
}

static int kw_gf_mapping_json(const kw_genfuser_options *o, const char *path) {
    kw_buf t = KW_BUF_INIT;
    kw_buf_printf(&t, "{\"0\": {\"1\": {");
    for (int32_t l = 0; l < o->recv_layers; ++l)
        kw_buf_printf(&t, "%s\"%d\": [[%d, %d]]", l ? ", " : "", l,
                      kw_genfuser_last_aligned(o->recv_layers, o->sharer_layers, l), l);
    kw_buf_printf(&t, "}}}");
    const int rc = kw_gf_write_text(path, &t);
    kw_buf_free(&t);
    return rc;
}

static int kw_gf_recipe_json(const kw_genfuser_options *o, const char *path) {
    kw_buf t = KW_BUF_INIT;
    kw_buf_printf(&t, "{\n    \"model\": {\n        \"base_model\": ");
    kw_gf_json_str(&t, o->base_model ? o->base_model : "");
    kw_buf_printf(&t, ",\n        \"teacher_model\": ");
    kw_gf_json_str(&t, o->teacher_model ? o->teacher_model : "");
    kw_buf_printf(&t,
                  ",\n        \"include_response\": false,\n        \"is_do_alignment\": %s,\n"
                  "        \"alignment_strategy\": \"%s\",\n        \"projector\": {\n"
                  "            \"type\": \"C2CProjector\",\n            \"params\": {\n"
                  "                \"hidden_dim\": %d,\n                \"intermediate_dim\": %d,\n"
                  "                \"num_layers\": %d,\n                \"dropout\": 0.1,\n"
                  "                \"initial_temperature\": 1.0,\n                \"final_temperature\": 0.001,\n"
                  "                \"anneal_steps\": 1929\n            }\n        },\n"
                  "        \"mapping\": \"last_aligned\"\n    },\n    \"kvwire\": {\n"
                  "        \"generator\": \"kvwire gen-fuser\",\n        \"seed\": %llu,\n"
                  "        \"note\": \"random weights, not a trained fuser\"\n    }\n}\n",
                  o->is_do_alignment ? "true" : "false", o->is_do_alignment ? "longest" : "first", o->dims.hidden_dim,
                  o->dims.intermediate_dim, o->dims.num_layers, (unsigned long long)o->seed);
    const int rc = kw_gf_write_text(path, &t);
    kw_buf_free(&t);
    return rc;
}

int kw_genfuser_write(const kw_genfuser_options *o, const char *out_dir) {
    KW_RETURN_IF(!o || !out_dir, KW_E_INVALID_ARG, "kw_genfuser_write: NULL argument");
    KW_RETURN_IF(o->recv_layers < 1 || o->recv_layers > KW_GENFUSER_MAX_LAYERS || o->sharer_layers < 1 ||
                     o->sharer_layers > KW_GENFUSER_MAX_LAYERS,
                 KW_E_INVALID_ARG, "layer counts %d / %d out of range [1, %d]", o->recv_layers, o->sharer_layers,
                 KW_GENFUSER_MAX_LAYERS);
    KW_RETURN_IF(o->dtype != KW_DTYPE_BF16 && o->dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "fuser dtype must be bf16 or f32");
    if (kw_fuser_dims_check(&o->dims) < 0) {
        char why[256]; /* kw_error_set must not read the buffer it writes */
        snprintf(why, sizeof why, "%s", kw_error_detail());
        KW_FAIL(KW_E_INVALID_ARG, "%s", why);
    }
    uint8_t gates[KW_GENFUSER_MAX_LAYERS];
    if (o->gates) {
        for (int32_t l = 0; l < o->recv_layers; ++l)
            KW_RETURN_IF(o->gates[l] > KW_GENFUSER_GATE_V_ONLY, KW_E_INVALID_ARG, "gate kind %u", o->gates[l]);
        memcpy(gates, o->gates, (size_t)o->recv_layers);
    } else {
        kw_genfuser_default_gates(o->recv_layers, gates);
    }

    char *final = kw_path_join(out_dir, "final");
    int rc = 0;
    KW_CHECK_IF(!final, KW_E_NOMEM, "path");
    KW_CHECK(kw_path_mkdir(out_dir));
    KW_CHECK(kw_path_mkdir(final));
    for (int32_t l = 0; l < o->recv_layers; ++l) {
        char name[64];
        snprintf(name, sizeof name, "projector_%d.%s", l, o->safetensors ? "safetensors" : "pt");
        char *path = kw_path_join(final, name);
        KW_CHECK_IF(!path, KW_E_NOMEM, "path");
        rc = kw_gf_projector_weights(o, l, gates[l], path);
        if (rc == 0) {
            snprintf(name, sizeof name, "projector_%d.json", l);
            free(path);
            path = kw_path_join(final, name);
            rc = path ? kw_gf_projector_json(o, path) : kw_error_set(KW_E_NOMEM, "path");
        }
        free(path);
        if (rc < 0) goto out;
    }
    {
        char *path = kw_path_join(final, "projector_config.json");
        KW_CHECK_IF(!path, KW_E_NOMEM, "path");
        rc = kw_gf_mapping_json(o, path);
        free(path);
        if (rc < 0) goto out;
        path = kw_path_join(out_dir, "config.json");
        KW_CHECK_IF(!path, KW_E_NOMEM, "path");
        rc = kw_gf_recipe_json(o, path);
        free(path);
        if (rc < 0) goto out;
    }

    /* Reload what was written: the loader's checks are the generator's acceptance test. */
    kw_fuser *f = NULL;
    KW_CHECK(kw_fuser_load(out_dir, 0, &f));
    for (int32_t l = 0; l < o->recv_layers && rc == 0; ++l) {
        const kw_fuser_projector *p = &f->projectors[l];
        const int k = gates[l] == KW_GENFUSER_GATE_OPEN || gates[l] == KW_GENFUSER_GATE_K_ONLY;
        const int v = gates[l] == KW_GENFUSER_GATE_OPEN || gates[l] == KW_GENFUSER_GATE_V_ONLY;
        if (p->key.gate_open != k || p->value.gate_open != v)
            rc = kw_error_set(KW_E_INTERNAL, "gen-fuser: layer %d gates read back wrong", l);
    }
    kw_fuser_free(f);
out:
    free(final);
    return rc;
}
