/* kw_fuser_load.c: loads a released C2C fuser folder into host bf16 weights and a layer mapping (see kw_fuser_load.h).
 *
 * Order of work: resolve the layout (pair folder or checkpoint folder), count the projector files like the reference,
 * parse the recipe, the per-projector constructor configs and the mapping, then open each weight file and bind every
 * expected tensor, converting to bf16 where needed. Nothing here runs a projector.
 */
#include "c2c/kw_fuser_load.h"

#include "c2c/kw_torchzip.h"
#include "common/kw_arena.h"
#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_json.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_safetensors.h"

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KW_FUSER_MAX_PROJECTORS 4096
#define KW_FUSER_MAX_LAYER      4096
#define KW_FUSER_JSON_MAX       (16u << 20)

typedef struct kw_fuser_internal kw_fuser_internal;

struct kw_fuser_internal {
    kw_arena arena; /* names, strings, tables */
    kw_torchzip **pt;
    kw_safetensors **st;
    int32_t n_files;
    void **buffers; /* converted tensors (malloc) */
    size_t n_buffers, cap_buffers;
};

// ---------------------------------------------------------------------------------------------------------------
// The canonical tensor list

int kw_fuser_dims_check(const kw_fuser_dims *d) {
    KW_RETURN_IF(!d, KW_E_INVALID_ARG, "NULL dims");
    const int32_t v[7] = {d->source_dim, d->source_heads,     d->target_dim, d->target_heads,
                          d->hidden_dim, d->intermediate_dim, d->num_layers};
    static const char *const names[7] = {"source_dim", "source_num_heads", "target_dim", "target_num_heads",
                                         "hidden_dim", "intermediate_dim", "num_layers"};
    for (int i = 0; i < 7; ++i)
        KW_RETURN_IF(v[i] < 1 || v[i] > 65536, KW_E_FUSER_CONFIG, "projector %s = %d out of range [1, 65536]", names[i],
                     v[i]);
    KW_RETURN_IF(d->num_layers < 3 || d->num_layers > 64, KW_E_FUSER_CONFIG,
                 "projector num_layers = %d (C2CProjector needs >= 3; at most 64 accepted)", d->num_layers);
    const int64_t in = (int64_t)d->source_dim * d->source_heads + (int64_t)d->target_dim * d->target_heads;
    KW_RETURN_IF(in > (1 << 24), KW_E_FUSER_CONFIG, "projector input width %lld too large", (long long)in);
    return 0;
}

size_t kw_fuser_tensor_count(const kw_fuser_dims *dims) {
    return dims ? 26 + 6 * (size_t)(dims->num_layers > 2 ? dims->num_layers - 2 : 0) : 0;
}

int kw_fuser_tensor_spec(const kw_fuser_dims *d, size_t i, char *name, size_t name_cap, int32_t *ndim,
                         int64_t shape[2]) {
    KW_FORWARD(kw_fuser_dims_check(d));
    const size_t n = kw_fuser_tensor_count(d);
    KW_RETURN_IF(i >= n || !name || name_cap < 64 || !ndim || !shape, KW_E_INVALID_ARG, "tensor spec %zu", i);
    const int64_t H = d->hidden_dim, I = d->intermediate_dim, HT = d->target_heads;
    const int64_t OUT = (int64_t)d->target_dim * d->target_heads;
    const int64_t IN = (int64_t)d->source_dim * d->source_heads + OUT;
    const size_t nb = (size_t)d->num_layers - 2;
    static const char *const br[2] = {"key", "value"};
    static const char *const ffn_part[3] = {"norm.weight", "w1.weight", "w2.weight"};
    static const char *const wb[2] = {"weight", "bias"};
    shape[0] = shape[1] = 0;
    /* An FFN part: norm (H), w1 (inter, H), w2 (H, inter). */
#define KW_FFN_SHAPE(part, inter)                                                                                      \
    do {                                                                                                               \
        *ndim = (part) == 0 ? 1 : 2;                                                                                   \
        shape[0] = (part) == 1 ? (inter) : H;                                                                          \
        shape[1] = (part) == 1 ? H : (part) == 2 ? (inter) : 0;                                                        \
    } while (0)
    if (i < 2) {
        snprintf(name, name_cap, "%s_gate_logit", br[i]);
        *ndim = 0;
        return 0;
    }
    size_t j = i - 2;
    if (j < 4) { /* *_in */
        snprintf(name, name_cap, "%s_in.%s", br[j / 2], wb[j % 2]);
        *ndim = j % 2 ? 1 : 2;
        shape[0] = H;
        shape[1] = j % 2 ? 0 : IN;
        return 0;
    }
    j -= 4;
    if (j < 6) { /* *_mlp1.blocks.0 */
        snprintf(name, name_cap, "%s_mlp1.blocks.0.%s", br[j / 3], ffn_part[j % 3]);
        KW_FFN_SHAPE(j % 3, I);
        return 0;
    }
    j -= 6;
    if (j < 6) { /* *_scalar_mlp2.blocks.0, intermediate width = hidden */
        snprintf(name, name_cap, "%s_scalar_mlp2.blocks.0.%s", br[j / 3], ffn_part[j % 3]);
        KW_FFN_SHAPE(j % 3, H);
        return 0;
    }
    j -= 6;
    if (j < 4) { /* *_scalar_head */
        snprintf(name, name_cap, "%s_scalar_head.%s", br[j / 2], wb[j % 2]);
        *ndim = j % 2 ? 1 : 2;
        shape[0] = HT;
        shape[1] = j % 2 ? 0 : H;
        return 0;
    }
    j -= 4;
    if (j < 6 * nb) { /* *_proj_mlp2.blocks.b */
        const size_t b = j % (3 * nb) / 3;
        snprintf(name, name_cap, "%s_proj_mlp2.blocks.%zu.%s", br[j / (3 * nb)], b, ffn_part[j % 3]);
        KW_FFN_SHAPE(j % 3, I);
        return 0;
    }
    j -= 6 * nb;
    snprintf(name, name_cap, "%s_proj_out.%s", br[j / 2], wb[j % 2]); /* *_proj_out */
    *ndim = j % 2 ? 1 : 2;
    shape[0] = OUT;
    shape[1] = j % 2 ? 0 : H;
#undef KW_FFN_SHAPE
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

static char *kw_fl_strdup(kw_arena *a, const char *s) {
    const size_t n = strlen(s) + 1;
    char *p = kw_arena_alloc(a, n);
    if (p) memcpy(p, s, n);
    return p;
}

static char *kw_fl_path(kw_arena *a, const char *dir, const char *name) {
    const size_t n = strlen(dir) + strlen(name) + 2;
    char *p = kw_arena_alloc(a, n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* re.match(r"projector_\d+\.<ext>", name) with ASCII digits: a prefix match, as the reference counts files. */
static int kw_fl_matches(const char *name, const char *ext) {
    if (strncmp(name, "projector_", 10) != 0) return 0;
    const char *p = name + 10;
    if (!isdigit((unsigned char)*p)) return 0;
    while (isdigit((unsigned char)*p))
        ++p;
    return *p == '.' && strncmp(p + 1, ext, strlen(ext)) == 0;
}

static int kw_fl_count_files(const char *dir, int *n_pt, int *n_st) {
    DIR *d = opendir(dir);
    KW_RETURN_IF(!d, KW_E_IO, "cannot list %s", dir);
    *n_pt = *n_st = 0;
    for (const struct dirent *e; (e = readdir(d)) != NULL;) {
        if (kw_fl_matches(e->d_name, "pt")) ++*n_pt;
        if (kw_fl_matches(e->d_name, "safetensors")) ++*n_st;
    }
    closedir(d);
    return 0;
}

/* A string field into the arena; absent (or null) gives def. */
static int kw_fl_opt_str(kw_arena *a, const cJSON *obj, const char *key, const char *def, const char **out,
                         const char *what) {
    const char *s = NULL;
    KW_FORWARD(kw_json_opt_str(obj, key, def, &s, what));
    if (!s) {
        *out = NULL;
        return 0;
    }
    *out = kw_fl_strdup(a, s);
    KW_RETURN_IF(!*out, KW_E_NOMEM, "%s", what);
    return 0;
}

/* Converts a kw_json error into the fuser's config error, keeping the detail. */
static int kw_fl_cfg(int rc) {
    return rc == KW_E_PARSE || rc == KW_E_NOT_FOUND ? KW_E_FUSER_CONFIG : rc;
}

// ---------------------------------------------------------------------------------------------------------------
// config.json, projector_{i}.json, projector_config.json

static int kw_fl_recipe(kw_fuser *f, const char *path) {
    kw_arena *a = &f->internal->arena;
    cJSON *root = NULL;
    int rc = 0;
    KW_CHECK(kw_json_load_file(path, KW_FUSER_JSON_MAX, &root));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    KW_CHECK_IF(!cJSON_IsObject(model), KW_E_FUSER_CONFIG, "%s: no \"model\" object", path);
    kw_fuser_recipe *r = &f->recipe;
    int b = 0;
    rc = kw_fl_opt_str(a, model, "base_model", NULL, &r->base_model, path);
    if (rc == 0) rc = kw_fl_opt_str(a, model, "teacher_model", NULL, &r->teacher_model, path);
    if (rc == 0) rc = kw_fl_opt_str(a, model, "alignment_strategy", "first", &r->alignment_strategy, path);
    if (rc == 0) rc = kw_fl_opt_str(a, model, "mapping", NULL, &r->mapping, path);
    if (rc == 0)
        rc = kw_fl_opt_str(a, model, "multi_source_fusion_mode", "sequential", &r->multi_source_fusion_mode, path);
    if (rc == 0) rc = kw_json_opt_bool(model, "include_response", 0, &b, path);
    r->include_response = b;
    if (rc == 0) rc = kw_json_opt_bool(model, "is_do_alignment", 0, &b, path);
    r->is_do_alignment = b;
    KW_CHECK(kw_fl_cfg(rc));
    KW_CHECK_IF(!r->base_model || !r->teacher_model, KW_E_FUSER_CONFIG,
                "%s: model.base_model and model.teacher_model are required", path);
    const cJSON *proj = cJSON_GetObjectItemCaseSensitive(model, "projector");
    KW_CHECK_IF(!cJSON_IsObject(proj), KW_E_FUSER_CONFIG, "%s: no model.projector object", path);
    KW_CHECK(kw_fl_cfg(kw_fl_opt_str(a, proj, "type", NULL, &r->projector_type, path)));
    KW_CHECK_IF(!r->projector_type, KW_E_FUSER_CONFIG, "%s: model.projector.type is required", path);
    KW_CHECK_IF(strcasecmp(r->projector_type, "C2CProjector") != 0, KW_E_FUSER_CONFIG,
                "%s: projector type %s is not supported (C2CProjector only)", path, r->projector_type);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(proj, "params");
    if (params) {
        KW_CHECK_IF(!cJSON_IsObject(params), KW_E_FUSER_CONFIG, "%s: model.projector.params is not an object", path);
        static const char *const keys[3] = {"hidden_dim", "intermediate_dim", "num_layers"};
        const int32_t have[3] = {f->dims.hidden_dim, f->dims.intermediate_dim, f->dims.num_layers};
        for (int i = 0; i < 3; ++i) {
            int64_t v = -1;
            KW_CHECK(kw_fl_cfg(kw_json_opt_i64(params, keys[i], 1, 1 << 20, -1, &v, path)));
            KW_CHECK_IF(v != -1 && v != have[i], KW_E_FUSER_CONFIG,
                        "%s: projector.params.%s = %lld but the projector files say %d", path, keys[i], (long long)v,
                        have[i]);
        }
    }
    r->present = 1;
out:
    cJSON_Delete(root);
    return rc;
}

/* Parses projector_{i}.json into dims, with the constructor's defaults for absent arguments. */
static int kw_fl_projector_json(const char *path, kw_fuser_dims *d) {
    cJSON *root = NULL;
    int rc = 0;
    KW_CHECK(kw_json_load_file(path, KW_FUSER_JSON_MAX, &root));
    const char *cls = NULL;
    KW_CHECK(kw_fl_cfg(kw_json_get_str(root, "class", &cls, path)));
    KW_CHECK_IF(strcasecmp(cls, "C2CProjector") != 0, KW_E_FUSER_CONFIG,
                "%s: projector class %s is not supported (C2CProjector only)", path, cls);
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(root, "init_args");
    KW_CHECK_IF(!cJSON_IsObject(args), KW_E_FUSER_CONFIG, "%s: no init_args object", path);
    static const char *const ints[] = {"source_dim",       "target_dim", "source_num_heads", "target_num_heads",
                                       "intermediate_dim", "hidden_dim", "num_layers",       "anneal_steps"};
    static const char *const floats[] = {"dropout", "initial_temperature", "final_temperature"};
    const cJSON *it = NULL;
    cJSON_ArrayForEach(it, args) {
        int known = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; ++k) {
            if (strcmp(it->string, ints[k]) != 0) continue;
            int64_t v = 0;
            KW_CHECK_IF(kw_json_to_i64(it, -(1LL << 31), (1LL << 31) - 1, &v) < 0, KW_E_FUSER_CONFIG,
                        "%s: init_args.%s is not an integer", path, it->string);
            known = 1;
        }
        for (size_t k = 0; k < sizeof floats / sizeof floats[0]; ++k) {
            if (strcmp(it->string, floats[k]) != 0) continue;
            KW_CHECK_IF(!cJSON_IsNumber(it), KW_E_FUSER_CONFIG, "%s: init_args.%s is not a number", path, it->string);
            known = 1;
        }
        if (strcmp(it->string, "zero_init") == 0) {
            KW_CHECK_IF(!cJSON_IsBool(it), KW_E_FUSER_CONFIG, "%s: init_args.zero_init is not a bool", path);
            known = 1;
        }
        if (strcmp(it->string, "dtype") == 0) {
            /* registry.py encodes a torch.dtype as {"__type__": "torch.dtype", "value": "bfloat16"}. The weights are
             * used in bf16 whatever it says (the reference casts them to the receiver's dtype). */
            const char *type = NULL, *value = NULL;
            KW_CHECK_IF(kw_json_get_str(it, "__type__", &type, path) < 0 || strcmp(type, "torch.dtype") != 0 ||
                            kw_json_get_str(it, "value", &value, path) < 0,
                        KW_E_FUSER_CONFIG, "%s: init_args.dtype is not an encoded torch.dtype", path);
            KW_CHECK_IF(strcmp(value, "bfloat16") && strcmp(value, "float32") && strcmp(value, "float16") &&
                            strcmp(value, "float") && strcmp(value, "half"),
                        KW_E_FUSER_CONFIG, "%s: init_args.dtype %s is not a floating dtype", path, value);
            known = 1;
        }
        KW_CHECK_IF(!known, KW_E_FUSER_CONFIG, "%s: unknown init_args key \"%s\" (C2CProjector would reject it)", path,
                    it->string);
    }
    int64_t v[7];
    static const char *const keys[7] = {"source_dim", "target_dim",       "source_num_heads", "target_num_heads",
                                        "hidden_dim", "intermediate_dim", "num_layers"};
    static const int64_t defaults[7] = {-1, -1, 1, 1, 1024, 1024, 3};
    for (int k = 0; k < 7; ++k) {
        if (defaults[k] < 0)
            KW_CHECK(kw_fl_cfg(kw_json_get_i64(args, keys[k], 1, 65536, &v[k], path)));
        else
            KW_CHECK(kw_fl_cfg(kw_json_opt_i64(args, keys[k], 1, 65536, defaults[k], &v[k], path)));
    }
    *d = (kw_fuser_dims){(int32_t)v[0], (int32_t)v[2], (int32_t)v[1], (int32_t)v[3],
                         (int32_t)v[4], (int32_t)v[5], (int32_t)v[6]};
    rc = kw_fuser_dims_check(d);
    if (rc < 0) {
        char why[256]; /* kw_error_set must not read the buffer it writes */
        snprintf(why, sizeof why, "%s", kw_error_detail());
        rc = kw_error_set(rc, "%s: %s", path, why);
    }
out:
    cJSON_Delete(root);
    return rc;
}

/* A JSON object key that must be a non-negative decimal integer (the reference's int(key) after isdigit). */
static int kw_fl_int_key(const char *key, int64_t max, int64_t *out) {
    if (!key[0] || strlen(key) > 9) return -1;
    int64_t v = 0;
    for (const char *p = key; *p; ++p) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

static int kw_fl_mapping(kw_fuser *f, const char *path) {
    kw_arena *a = &f->internal->arena;
    cJSON *root = NULL;
    int rc = 0;
    KW_CHECK(kw_json_load_file(path, KW_FUSER_JSON_MAX, &root));
    KW_CHECK_IF(!cJSON_IsObject(root) || cJSON_GetArraySize(root) != 1, KW_E_FUSER_CONFIG,
                "%s: expected exactly one target model", path);
    int64_t key = 0;
    KW_CHECK_IF(kw_fl_int_key(root->child->string, 0, &key) < 0, KW_E_FUSER_CONFIG,
                "%s: target model \"%s\" is not the base model 0", path, root->child->string);
    const cJSON *sources = root->child;
    KW_CHECK_IF(!cJSON_IsObject(sources) || cJSON_GetArraySize(sources) != 1, KW_E_FUSER_CONFIG,
                "%s: expected exactly one sharer model under target 0", path);
    KW_CHECK_IF(kw_fl_int_key(sources->child->string, 64, &key) < 0 || key < 1, KW_E_FUSER_CONFIG,
                "%s: sharer model key \"%s\" is not an index >= 1", path, sources->child->string);
    f->source_model = (int32_t)key;
    const cJSON *layers = sources->child;
    KW_CHECK_IF(!cJSON_IsObject(layers) || cJSON_GetArraySize(layers) < 1, KW_E_FUSER_CONFIG, "%s: no target layers",
                path);

    int64_t max_layer = -1;
    const cJSON *it = NULL;
    cJSON_ArrayForEach(it, layers) {
        KW_CHECK_IF(kw_fl_int_key(it->string, KW_FUSER_MAX_LAYER - 1, &key) < 0, KW_E_FUSER_CONFIG,
                    "%s: target layer key \"%s\" is not an integer in [0, %d)", path, it->string, KW_FUSER_MAX_LAYER);
        if (key > max_layer) max_layer = key;
    }
    f->n_target_layers = (int32_t)max_layer + 1;
    int32_t *src = kw_arena_alloc(a, (size_t)f->n_target_layers * sizeof *src);
    int32_t *prj = kw_arena_alloc(a, (size_t)f->n_target_layers * sizeof *prj);
    KW_CHECK_IF(!src || !prj, KW_E_NOMEM, "mapping");
    for (int32_t t = 0; t < f->n_target_layers; ++t)
        src[t] = prj[t] = -1;
    cJSON_ArrayForEach(it, layers) {
        kw_fl_int_key(it->string, KW_FUSER_MAX_LAYER - 1, &key);
        KW_CHECK_IF(prj[key] >= 0, KW_E_FUSER_CONFIG, "%s: target layer %lld appears twice", path, (long long)key);
        KW_CHECK_IF(!cJSON_IsArray(it) || cJSON_GetArraySize(it) < 1, KW_E_FUSER_CONFIG,
                    "%s: target layer %s: expected a non-empty list of [source_layer, projector] pairs", path,
                    it->string);
        const cJSON *pair = NULL;
        int first = 1;
        cJSON_ArrayForEach(pair, it) {
            int64_t s = 0, p = 0;
            KW_CHECK_IF(!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 ||
                            kw_json_to_i64(cJSON_GetArrayItem(pair, 0), 0, KW_FUSER_MAX_LAYER - 1, &s) < 0 ||
                            kw_json_to_i64(cJSON_GetArrayItem(pair, 1), 0, KW_FUSER_MAX_PROJECTORS, &p) < 0,
                        KW_E_FUSER_CONFIG, "%s: target layer %s: malformed [source_layer, projector] pair", path,
                        it->string);
            KW_CHECK_IF(p >= f->n_projectors, KW_E_FUSER_CONFIG,
                        "%s: target layer %s uses projector %lld but there are %d projector files", path, it->string,
                        (long long)p, f->n_projectors);
            if (first) {
                src[key] = (int32_t)s;
                prj[key] = (int32_t)p;
                first = 0;
            } else {
                f->n_extra_pairs++;
            }
        }
    }
    f->map_source = src;
    f->map_projector = prj;
out:
    cJSON_Delete(root);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Weights

/* A tensor of either container, seen the same way. */
typedef struct kw_fl_src {
    const char *name;
    enum kw_dtype dtype;
    int32_t ndim;
    const int64_t *shape;
    const void *data;
    size_t nbytes;
} kw_fl_src;

static int kw_fl_src_at(const kw_fuser_internal *in, int32_t file, size_t i, kw_fl_src *out) {
    if (in->pt) {
        const kw_torchzip_tensor *t = kw_torchzip_at(in->pt[file], i);
        if (!t) return 0;
        *out = (kw_fl_src){t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes};
        return 1;
    }
    const kw_st_tensor *t = kw_safetensors_at(in->st[file], i);
    if (!t) return 0;
    *out = (kw_fl_src){t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes};
    return 1;
}

static int kw_fl_keep_buffer(kw_fuser_internal *in, void *buf) {
    if (in->n_buffers == in->cap_buffers) {
        const size_t cap = in->cap_buffers ? in->cap_buffers * 2 : 64;
        void **b = realloc(in->buffers, cap * sizeof *b);
        if (!b) {
            free(buf);
            KW_FAIL(KW_E_NOMEM, "buffer table");
        }
        in->buffers = b;
        in->cap_buffers = cap;
    }
    in->buffers[in->n_buffers++] = buf;
    return 0;
}

/* Binds dst to src as bf16: the bytes in place when already bf16 and aligned, else a converted copy. */
static int kw_fl_bind(kw_fuser_internal *in, const kw_fl_src *src, size_t numel, kw_fuser_tensor *dst,
                      const char *path) {
    dst->dtype = KW_DTYPE_BF16;
    dst->nbytes = numel * 2;
    if (numel == 0) {
        dst->data = NULL;
        return 0;
    }
    if (src->dtype == KW_DTYPE_BF16 && (uintptr_t)src->data % 2 == 0) {
        dst->data = src->data;
        return 0;
    }
    KW_RETURN_IF(src->dtype != KW_DTYPE_BF16 && src->dtype != KW_DTYPE_F32 && src->dtype != KW_DTYPE_F16,
                 KW_E_FUSER_TENSOR, "%s: tensor %s has dtype %d (bf16, f32 or f16 expected)", path, src->name,
                 (int)src->dtype);
    uint16_t *buf = malloc(numel * 2);
    KW_RETURN_IF(!buf, KW_E_NOMEM, "%s: bf16 copy of %s", path, src->name);
    const unsigned char *p = src->data;
    for (size_t k = 0; k < numel; ++k) {
        if (src->dtype == KW_DTYPE_F32)
            buf[k] = kw_f32_to_bf16(kw_load_lef32(p + 4 * k));
        else if (src->dtype == KW_DTYPE_F16)
            buf[k] = kw_f32_to_bf16(kw_f16_to_f32(kw_load_le16(p + 2 * k)));
        else
            buf[k] = kw_load_le16(p + 2 * k);
    }
    KW_FORWARD(kw_fl_keep_buffer(in, buf));
    dst->data = buf;
    return 0;
}

static void kw_fl_shape_text(char *buf, size_t cap, int32_t ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int32_t d = 0; d < ndim && d < 8 && len < cap; ++d)
        len += (size_t)snprintf(buf + len, cap - len, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

static float kw_fl_gate(const kw_fuser_tensor *t) {
    uint16_t h = 0;
    memcpy(&h, t->data, 2);
    return kw_bf16_to_f32(h);
}

/* Binds projector p from weight file `file`, whose tensors follow names[0..n). */
static int kw_fl_projector(kw_fuser *f, int32_t p, const char *path, char *const *names, kw_fuser_projector *proj,
                           kw_fuser_tensor *tensors, kw_fuser_ffn *blocks) {
    kw_fuser_internal *in = f->internal;
    const size_t n = kw_fuser_tensor_count(&f->dims);
    for (size_t i = 0; i < n; ++i) {
        char name[64];
        int32_t ndim = 0;
        int64_t shape[2];
        KW_FORWARD(kw_fuser_tensor_spec(&f->dims, i, name, sizeof name, &ndim, shape));
        kw_fl_src src = {0};
        int found = 0;
        for (size_t k = 0; !found && kw_fl_src_at(in, p, k, &src); ++k)
            found = strcmp(src.name, name) == 0;
        KW_RETURN_IF(!found, KW_E_FUSER_TENSOR, "%s: missing tensor %s", path, name);
        int ok = src.ndim == ndim;
        for (int32_t d = 0; ok && d < ndim; ++d)
            ok = src.shape[d] == shape[d];
        if (!ok) {
            char have[96], want[96];
            kw_fl_shape_text(have, sizeof have, src.ndim, src.shape);
            kw_fl_shape_text(want, sizeof want, ndim, shape);
            KW_FAIL(KW_E_FUSER_TENSOR, "%s: tensor %s has shape %s, expected %s", path, name, have, want);
        }
        kw_fuser_tensor *t = &tensors[i];
        t->name = names[i];
        t->ndim = ndim;
        t->shape[0] = shape[0];
        t->shape[1] = shape[1];
        const size_t numel = (size_t)(ndim > 0 ? shape[0] : 1) * (size_t)(ndim > 1 ? shape[1] : 1);
        KW_FORWARD(kw_fl_bind(in, &src, numel, t, path));
    }
    /* Anything else in the file, except the training buffer gate_temperature, is refused. */
    kw_fl_src src = {0};
    for (size_t k = 0; kw_fl_src_at(in, p, k, &src); ++k) {
        if (strcmp(src.name, "gate_temperature") == 0) continue;
        int expected = 0;
        for (size_t i = 0; !expected && i < n; ++i)
            expected = strcmp(src.name, names[i]) == 0;
        KW_RETURN_IF(!expected, KW_E_FUSER_TENSOR, "%s: unexpected tensor %s (not a C2CProjector parameter)", path,
                     src.name);
    }

    /* The branch views, by position in the canonical list (see kw_fuser_tensor_spec). */
    const int32_t nb = f->dims.num_layers - 2;
    for (int b = 0; b < 2; ++b) {
        kw_fuser_branch *br = b == 0 ? &proj->key : &proj->value;
        kw_fuser_ffn *pb = blocks + (size_t)b * (size_t)nb;
        br->gate_logit = &tensors[b];
        br->in_w = &tensors[2 + 2 * b];
        br->in_b = &tensors[3 + 2 * b];
        br->mlp1 = (kw_fuser_ffn){&tensors[6 + 3 * b], &tensors[7 + 3 * b], &tensors[8 + 3 * b]};
        br->scalar_mlp2 = (kw_fuser_ffn){&tensors[12 + 3 * b], &tensors[13 + 3 * b], &tensors[14 + 3 * b]};
        br->scalar_head_w = &tensors[18 + 2 * b];
        br->scalar_head_b = &tensors[19 + 2 * b];
        const size_t base = 22 + (size_t)b * 3 * (size_t)nb;
        for (int32_t k = 0; k < nb; ++k)
            pb[k] = (kw_fuser_ffn){&tensors[base + 3 * (size_t)k], &tensors[base + 3 * (size_t)k + 1],
                                   &tensors[base + 3 * (size_t)k + 2]};
        br->proj_mlp2 = pb;
        br->n_proj_blocks = nb;
        br->proj_out_w = &tensors[22 + 6 * (size_t)nb + 2 * b];
        br->proj_out_b = &tensors[23 + 6 * (size_t)nb + 2 * b];
        br->gate_value = kw_fl_gate(br->gate_logit);
        br->gate_open = br->gate_value > 0.0f;
    }
    proj->tensors = tensors;
    proj->n_tensors = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Public

static int kw_fl_load(kw_fuser *f, const char *dir, unsigned flags) {
    kw_fuser_internal *in = f->internal;
    kw_arena *a = &in->arena;

    /* Layout: DIR/final/ (pair folder, recipe at DIR/config.json) or DIR itself (checkpoint folder). */
    const char *ckpt = kw_fl_path(a, dir, "final");
    KW_RETURN_IF(!ckpt, KW_E_NOMEM, "path");
    char *mapping = kw_fl_path(a, ckpt, "projector_config.json");
    KW_RETURN_IF(!mapping, KW_E_NOMEM, "path");
    if (!kw_path_is_file(mapping)) {
        ckpt = dir;
        mapping = kw_fl_path(a, ckpt, "projector_config.json");
        KW_RETURN_IF(!mapping, KW_E_NOMEM, "path");
        KW_RETURN_IF(!kw_path_is_file(mapping), KW_E_NOT_FOUND,
                     "%s: no final/projector_config.json or projector_config.json (not a C2C fuser folder)", dir);
    }

    int n_pt = 0, n_st = 0;
    KW_FORWARD(kw_fl_count_files(ckpt, &n_pt, &n_st));
    KW_RETURN_IF(n_pt && n_st, KW_E_FUSER_CONFIG,
                 "%s: both projector_N.pt and projector_N.safetensors files; keep one kind", ckpt);
    KW_RETURN_IF(!n_pt && !n_st, KW_E_NOT_FOUND, "%s: no projector_N.pt (or .safetensors) files", ckpt);
    const int n = n_pt ? n_pt : n_st;
    KW_RETURN_IF(n > KW_FUSER_MAX_PROJECTORS, KW_E_LIMIT, "%s: %d projector files (limit %d)", ckpt, n,
                 KW_FUSER_MAX_PROJECTORS);
    f->n_projectors = n;
    f->weights_safetensors = n_pt == 0;

    /* Constructor configs: one set of dims for all. */
    for (int p = 0; p < n; ++p) {
        char file[64];
        snprintf(file, sizeof file, "projector_%d.json", p);
        char *path = kw_fl_path(a, ckpt, file);
        KW_RETURN_IF(!path, KW_E_NOMEM, "path");
        KW_RETURN_IF(!kw_path_is_file(path), KW_E_FUSER_CONFIG,
                     "%s missing: the folder has %d projector weight files, so projector_0..%d are expected", path, n,
                     n - 1);
        kw_fuser_dims d;
        KW_FORWARD(kw_fl_projector_json(path, &d));
        KW_RETURN_IF(p > 0 && memcmp(&d, &f->dims, sizeof d) != 0, KW_E_FUSER_CONFIG,
                     "%s: dimensions differ from projector_0.json", path);
        f->dims = d;
    }
    KW_FORWARD(kw_fl_mapping(f, mapping));
    char *recipe = kw_fl_path(a, dir, "config.json");
    KW_RETURN_IF(!recipe, KW_E_NOMEM, "path");
    if (kw_path_is_file(recipe)) KW_FORWARD(kw_fl_recipe(f, recipe));

    /* Weights. */
    const size_t nt = kw_fuser_tensor_count(&f->dims);
    char **names = kw_arena_calloc(a, nt, sizeof *names);
    kw_fuser_projector *projs = kw_arena_calloc(a, (size_t)n, sizeof *projs);
    kw_fuser_tensor *tensors = kw_arena_calloc(a, (size_t)n * nt, sizeof *tensors);
    kw_fuser_ffn *blocks = kw_arena_calloc(a, (size_t)n * 2 * (size_t)(f->dims.num_layers - 2), sizeof *blocks);
    KW_RETURN_IF(!names || !projs || !tensors || !blocks, KW_E_NOMEM, "fuser tables");
    for (size_t i = 0; i < nt; ++i) {
        char name[64];
        int32_t ndim;
        int64_t shape[2];
        KW_FORWARD(kw_fuser_tensor_spec(&f->dims, i, name, sizeof name, &ndim, shape));
        names[i] = kw_fl_strdup(a, name);
        KW_RETURN_IF(!names[i], KW_E_NOMEM, "names");
    }
    if (n_pt)
        in->pt = calloc((size_t)n, sizeof *in->pt);
    else
        in->st = calloc((size_t)n, sizeof *in->st);
    KW_RETURN_IF(!in->pt && !in->st, KW_E_NOMEM, "file table");
    for (int p = 0; p < n; ++p) {
        char file[64];
        snprintf(file, sizeof file, "projector_%d.%s", p, n_pt ? "pt" : "safetensors");
        char *path = kw_fl_path(a, ckpt, file);
        KW_RETURN_IF(!path, KW_E_NOMEM, "path");
        KW_RETURN_IF(!kw_path_is_file(path), KW_E_FUSER_CONFIG,
                     "%s missing: the folder has %d projector weight files, so projector_0..%d are expected", path, n,
                     n - 1);
        if (n_pt)
            KW_FORWARD(kw_torchzip_open(path, (flags & KW_FUSER_LOAD_NO_CRC) ? KW_TORCHZIP_NO_CRC : 0, &in->pt[p]));
        else
            KW_FORWARD(kw_safetensors_open(path, &in->st[p]));
        in->n_files = p + 1;
        KW_FORWARD(kw_fl_projector(f, p, path, names, &projs[p], tensors + (size_t)p * nt,
                                   blocks + (size_t)p * 2 * (size_t)(f->dims.num_layers - 2)));
    }
    f->projectors = projs;
    return 0;
}

int kw_fuser_load(const char *dir, unsigned flags, kw_fuser **out) {
    KW_RETURN_IF(!dir || !out, KW_E_INVALID_ARG, "kw_fuser_load: NULL argument");
    *out = NULL;
    kw_fuser *f = calloc(1, sizeof *f);
    kw_fuser_internal *in = calloc(1, sizeof *in);
    if (!f || !in) {
        free(f);
        free(in);
        KW_FAIL(KW_E_NOMEM, "kw_fuser");
    }
    kw_arena_init(&in->arena, 0);
    f->internal = in;
    const int rc = kw_fl_load(f, dir, flags);
    if (rc < 0) {
        kw_fuser_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

void kw_fuser_free(kw_fuser *f) {
    if (!f) return;
    kw_fuser_internal *in = f->internal;
    if (in) {
        for (int32_t i = 0; i < in->n_files; ++i) {
            if (in->pt) kw_torchzip_close(in->pt[i]);
            if (in->st) kw_safetensors_close(in->st[i]);
        }
        free(in->pt);
        free(in->st);
        for (size_t i = 0; i < in->n_buffers; ++i)
            free(in->buffers[i]);
        free(in->buffers);
        kw_arena_free(&in->arena);
        free(in);
    }
    free(f);
}

int kw_fuser_layer(const kw_fuser *f, int32_t t, int32_t *source_layer, const kw_fuser_projector **projector) {
    KW_RETURN_IF(!f, KW_E_INVALID_ARG, "NULL fuser");
    if (t < 0 || t >= f->n_target_layers || f->map_projector[t] < 0) return KW_E_NOT_FOUND;
    if (source_layer) *source_layer = f->map_source[t];
    if (projector) *projector = &f->projectors[f->map_projector[t]];
    return 0;
}

int kw_fuser_layer_active(const kw_fuser *f, int32_t t) {
    const kw_fuser_projector *p = NULL;
    if (kw_fuser_layer(f, t, NULL, &p) < 0) return 0;
    return p->key.gate_open || p->value.gate_open;
}

int kw_fuser_check_models(const kw_fuser *f, int32_t recv_layers, int32_t recv_kv_heads, int32_t recv_head_dim,
                          int32_t sharer_layers, int32_t sharer_kv_heads, int32_t sharer_head_dim) {
    KW_RETURN_IF(!f, KW_E_INVALID_ARG, "NULL fuser");
    KW_RETURN_IF(f->dims.target_heads != recv_kv_heads || f->dims.target_dim != recv_head_dim, KW_E_FUSER_CONFIG,
                 "fuser targets %d kv heads x %d, the receiver has %d x %d", f->dims.target_heads, f->dims.target_dim,
                 recv_kv_heads, recv_head_dim);
    KW_RETURN_IF(f->dims.source_heads != sharer_kv_heads || f->dims.source_dim != sharer_head_dim, KW_E_FUSER_CONFIG,
                 "fuser reads %d kv heads x %d, the sharer has %d x %d", f->dims.source_heads, f->dims.source_dim,
                 sharer_kv_heads, sharer_head_dim);
    KW_RETURN_IF(f->n_target_layers > recv_layers, KW_E_FUSER_CONFIG,
                 "fuser maps receiver layer %d, the receiver has %d layers", f->n_target_layers - 1, recv_layers);
    for (int32_t t = 0; t < f->n_target_layers; ++t)
        KW_RETURN_IF(f->map_projector[t] >= 0 && f->map_source[t] >= sharer_layers, KW_E_FUSER_CONFIG,
                     "fuser maps receiver layer %d from sharer layer %d, the sharer has %d layers", t, f->map_source[t],
                     sharer_layers);
    return 0;
}
