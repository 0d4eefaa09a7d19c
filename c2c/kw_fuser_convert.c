/* kw_fuser_convert.c: rewrites a fuser folder with its weights as safetensors (or as torch zip archives), so that a
 * deployment can skip the pickle reader. The JSON files are copied unchanged; the weights are the loader's bf16
 * view, so a converted folder loads to exactly the same tensors as the original. */
#include "c2c/kw_fuser_load.h"

#include "c2c/kw_torchzip.h"
#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_safetensors.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int kw_fc_copy(const char *from, const char *to) {
    char *data = NULL;
    size_t size = 0;
    KW_FORWARD(kw_file_read_all(from, 64u << 20, &data, &size));
    const int rc = kw_file_write_all(to, data, size);
    free(data);
    return rc;
}

/* Copies dir_from/name to dir_to/name. */
static int kw_fc_copy_in(const char *dir_from, const char *dir_to, const char *name) {
    char *a = kw_path_join(dir_from, name), *b = kw_path_join(dir_to, name);
    const int rc = (a && b) ? kw_fc_copy(a, b) : kw_error_set(KW_E_NOMEM, "path");
    free(a);
    free(b);
    return rc;
}

static int kw_fc_write_projector(const kw_fuser_projector *p, int32_t index, const char *final, int safetensors) {
    kw_st_write_tensor *st = calloc(p->n_tensors, sizeof *st);
    kw_torchzip_write_tensor *tz = calloc(p->n_tensors, sizeof *tz);
    int rc = 0;
    char name[64];
    char *path = NULL;
    KW_CHECK_IF(!st || !tz, KW_E_NOMEM, "tensor tables");
    for (size_t i = 0; i < p->n_tensors; ++i) {
        const kw_fuser_tensor *t = &p->tensors[i];
        st[i] = (kw_st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        tz[i] = (kw_torchzip_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        for (int32_t d = 0; d < t->ndim; ++d)
            st[i].shape[d] = tz[i].shape[d] = t->shape[d];
    }
    snprintf(name, sizeof name, "projector_%d.%s", index, safetensors ? "safetensors" : "pt");
    path = kw_path_join(final, name);
    KW_CHECK_IF(!path, KW_E_NOMEM, "path");
    if (safetensors) {
        KW_CHECK(kw_safetensors_write(path, st, p->n_tensors, "{\"format\": \"pt\"}"));
    } else {
        snprintf(name, sizeof name, "projector_%d", index);
        KW_CHECK(kw_torchzip_write(path, name, tz, p->n_tensors));
    }
out:
    free(path);
    free(tz);
    free(st);
    return rc;
}

int kw_fuser_convert(const char *in_dir, const char *out_dir, int safetensors) {
    KW_RETURN_IF(!in_dir || !out_dir, KW_E_INVALID_ARG, "kw_fuser_convert: NULL argument");
    char rin[PATH_MAX], rout[PATH_MAX];
    KW_RETURN_IF(realpath(in_dir, rin) && realpath(out_dir, rout) && strcmp(rin, rout) == 0, KW_E_INVALID_ARG,
                 "convert-fuser: the output folder %s is the input folder", out_dir);
    kw_fuser *f = NULL;
    KW_FORWARD(kw_fuser_load(in_dir, 0, &f));
    char *in_final = kw_path_join(in_dir, "final"), *out_final = kw_path_join(out_dir, "final");
    char *probe = in_final ? kw_path_join(in_final, "projector_config.json") : NULL;
    int rc = 0;
    KW_CHECK_IF(!in_final || !out_final || !probe, KW_E_NOMEM, "path");
    const char *in_ckpt = kw_path_is_file(probe) ? in_final : in_dir;
    KW_CHECK(kw_path_mkdir(out_dir));
    KW_CHECK(kw_path_mkdir(out_final));
    for (int32_t p = 0; p < f->n_projectors; ++p) {
        char name[64];
        snprintf(name, sizeof name, "projector_%d.json", p);
        KW_CHECK(kw_fc_copy_in(in_ckpt, out_final, name));
        KW_CHECK(kw_fc_write_projector(&f->projectors[p], p, out_final, safetensors));
    }
    KW_CHECK(kw_fc_copy_in(in_ckpt, out_final, "projector_config.json"));
    if (f->recipe.present) KW_CHECK(kw_fc_copy_in(in_dir, out_dir, "config.json"));

    /* The converted folder must load to the same tensors. */
    kw_fuser *g = NULL;
    KW_CHECK(kw_fuser_load(out_dir, 0, &g));
    for (int32_t p = 0; p < f->n_projectors && rc == 0; ++p) {
        for (size_t i = 0; i < f->projectors[p].n_tensors && rc == 0; ++i) {
            const kw_fuser_tensor *a = &f->projectors[p].tensors[i], *b = &g->projectors[p].tensors[i];
            if (a->nbytes != b->nbytes || (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
                rc = kw_error_set(KW_E_INTERNAL, "convert-fuser: %s of projector %d differs after conversion", a->name,
                                  p);
        }
    }
    kw_fuser_free(g);
out:
    free(probe);
    free(in_final);
    free(out_final);
    kw_fuser_free(f);
    return rc;
}
