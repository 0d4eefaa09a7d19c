/* kw_share_request.c: the sharer half of one request (see kw_share_request.h). */
#include "sharer/kw_share_request.h"

#include <string.h>

#include "common/kw_status.h"

int kw_share_request_run(kw_model *model, const int32_t *ids, int64_t n, const kw_share_request_options *opt,
                         kw_share_request_stats *stats) {
    KW_RETURN_IF(opt == NULL || (opt->wire ? opt->write == NULL : opt->on_rows == NULL), KW_E_INVALID_ARG,
                 "share request: no destination for the rows");
    kw_share_request_stats local;
    if (stats == NULL) stats = &local;
    memset(stats, 0, sizeof *stats);
    kw_share_wire *w = NULL;
    if (opt->wire) {
        const kw_share_wire_options wo = {.policy = *opt->wire,
                                          .overrides = opt->overrides,
                                          .n_overrides = opt->n_overrides,
                                          .write = opt->write,
                                          .user = opt->user};
        KW_FORWARD(kw_share_wire_create(&wo, &w));
    }
    const kw_share_options so = {.sections = opt->sections,
                                 .n_sections = opt->n_sections,
                                 .layers = opt->layers,
                                 .n_layers = opt->n_layers,
                                 .select = opt->select,
                                 .same_positions = opt->same_positions,
                                 .cache_dtype = opt->cache_dtype,
                                 .pad = opt->pad,
                                 .on_layer = w ? kw_share_wire_on_layer : opt->on_rows,
                                 .user = w ? (void *)w : opt->user};
    const int rc = kw_share_run(model, ids, n, &so, &stats->share);
    if (w) stats->wire = *kw_share_wire_get_stats(w);
    kw_share_wire_free(w);
    return rc;
}
