/* kw_proto_identity.c: which model pairs can serve which mode, decided on the identities both sides exchange in the
 * hello (docs/PROTOCOL.md §4.1): a fuser fits a sharer model, two models are the same files. Pure comparisons. */
#include <stdio.h>
#include <string.h>

#include "proto/kw_proto.h"

static bool kw__proto_digest_set(const ProtobufCBinaryData *d) {
    return d->len == 32;
}

static bool kw__proto_digest_eq(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b) {
    return kw__proto_digest_set(a) && kw__proto_digest_set(b) && memcmp(a->data, b->data, 32) == 0;
}

bool kw_proto_same_model(const Kwctl__ModelDigest *a, const Kwctl__ModelDigest *b) {
    return a && b && kw__proto_digest_eq(&a->config_sha256, &b->config_sha256) &&
           kw__proto_digest_eq(&a->weights_sha256, &b->weights_sha256);
}

bool kw_proto_fuser_fits(const Kwctl__FuserIdentity *f, const Kwctl__ModelIdentity *m, char *why, size_t cap) {
    char local[8];
    if (!why) why = local, cap = sizeof local;
    why[0] = '\0';
    const Kwctl__KvShape *need = f->sharer_kv, *have = m->kv;
    if (!have) {
        snprintf(why, cap, "sharer model %s has no cache shape", m->name);
        return false;
    }
    if (need && (need->n_kv_heads != have->n_kv_heads || need->head_dim != have->head_dim)) {
        snprintf(why, cap, "fuser %s takes %u kv heads of %u dims, sharer model %s has %u of %u", f->name,
                 need->n_kv_heads, need->head_dim, m->name, have->n_kv_heads, have->head_dim);
        return false;
    }
    if (need && need->n_layers > have->n_layers) {
        snprintf(why, cap, "fuser %s maps sharer layers up to %u, sharer model %s has %u layers", f->name,
                 need->n_layers - 1, m->name, have->n_layers);
        return false;
    }
    const Kwctl__ModelDigest *pin = f->sharer;
    const bool pinned =
        pin && (kw__proto_digest_set(&pin->config_sha256) || kw__proto_digest_set(&pin->weights_sha256));
    if (pinned) {
        const Kwctl__ModelDigest *d = m->digest;
        const bool ok = d &&
                        (!kw__proto_digest_set(&pin->config_sha256) ||
                         kw__proto_digest_eq(&pin->config_sha256, &d->config_sha256)) &&
                        (!kw__proto_digest_set(&pin->weights_sha256) ||
                         kw__proto_digest_eq(&pin->weights_sha256, &d->weights_sha256));
        if (!ok) {
            snprintf(why, cap, "fuser %s is pinned to another sharer model than %s (digests differ)", f->name, m->name);
            return false;
        }
    }
    return true;
}
