/* fuzz_config.c: libFuzzer target for the config engine's YAML reader (common/kw_cfg.c) over a table with every key
 * type (string, path, integer, number, bool, choice, a list of records). Invariants: nothing a file holds makes it
 * crash or leak; every accepted value is inside its key's range; a config that loads prints (--print-config) to YAML
 * that loads back to the same print (the dump is a faithful config file). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_cfg.h"
#include "common/kw_status.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_cfg_item {
    char *name, *path;
    int64_t weight;
} fuzz_cfg_item;

typedef struct fuzz_cfg {
    char *host, *file;
    int64_t port;
    double ratio;
    int flag, level;
    fuzz_cfg_item items[4];
    int32_t n_items;
} fuzz_cfg;

static const char *const fuzz_levels[] = {"low", "mid", "high", NULL};

static const kw_cfg_key fuzz_item_keys[] = {
    {.name = "name", .type = KW_CFG_STRING, .offset = offsetof(fuzz_cfg_item, name), .help = "name"},
    {.name = "path", .type = KW_CFG_PATH, .offset = offsetof(fuzz_cfg_item, path), .help = "path"},
    {.name = "weight",
     .type = KW_CFG_INT,
     .offset = offsetof(fuzz_cfg_item, weight),
     .def = "1",
     .min = -5,
     .max = 5,
     .help = "weight"},
};

static const kw_cfg_key fuzz_keys[] = {
    {.name = "net.host", .type = KW_CFG_STRING, .offset = offsetof(fuzz_cfg, host), .def = "127.0.0.1", .help = "h"},
    {.name = "net.port",
     .type = KW_CFG_INT,
     .offset = offsetof(fuzz_cfg, port),
     .def = "80",
     .min = 0,
     .max = 65535,
     .help = "p"},
    {.name = "ratio",
     .type = KW_CFG_DOUBLE,
     .offset = offsetof(fuzz_cfg, ratio),
     .def = "0.5",
     .dmin = 0,
     .dmax = 1,
     .help = "r"},
    {.name = "flag", .type = KW_CFG_BOOL, .offset = offsetof(fuzz_cfg, flag), .def = "false", .help = "f"},
    {.name = "level",
     .type = KW_CFG_ENUM,
     .offset = offsetof(fuzz_cfg, level),
     .def = "mid",
     .choices = fuzz_levels,
     .help = "l"},
    {.name = "file", .type = KW_CFG_PATH, .offset = offsetof(fuzz_cfg, file), .help = "file", .flags = 0},
    {.name = "items",
     .type = KW_CFG_LIST,
     .offset = offsetof(fuzz_cfg, items),
     .sub = fuzz_item_keys,
     .n_sub = 3,
     .elem_size = sizeof(fuzz_cfg_item),
     .max_items = 4,
     .count_offset = offsetof(fuzz_cfg, n_items),
     .help = "items"},
};

static const kw_cfg_table fuzz_table = {"fuzz", "fuzz", fuzz_keys, sizeof fuzz_keys / sizeof fuzz_keys[0]};

/* The --print-config text of c (malloc'ed). */
static char *fuzz_print(const fuzz_cfg *c, size_t *len) {
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    FUZZ_CHECK(f != NULL);
    kw_cfg_print(&fuzz_table, c, f);
    FUZZ_CHECK(fclose(f) == 0);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_cfg c;
    memset(&c, 0, sizeof c);
    FUZZ_CHECK(kw_cfg_defaults(&fuzz_table, &c) == 0);
    const int rc = kw_cfg_load_string(&fuzz_table, &c, (const char *)data, size, "/base");
    if (rc < 0) {
        FUZZ_CHECK(kw_error_detail()[0] != '\0');
        kw_cfg_free(&fuzz_table, &c);
        return 0;
    }
    FUZZ_CHECK(c.port >= 0 && c.port <= 65535 && c.ratio >= 0 && c.ratio <= 1);
    FUZZ_CHECK((c.flag == 0 || c.flag == 1) && c.level >= 0 && c.level <= 2);
    FUZZ_CHECK(c.n_items >= 0 && c.n_items <= 4);
    for (int32_t i = 0; i < c.n_items; ++i)
        FUZZ_CHECK(c.items[i].weight >= -5 && c.items[i].weight <= 5);
    /* the dump loads back to itself */
    size_t len1 = 0, len2 = 0;
    char *text1 = fuzz_print(&c, &len1);
    fuzz_cfg back;
    memset(&back, 0, sizeof back);
    FUZZ_CHECK(kw_cfg_defaults(&fuzz_table, &back) == 0);
    FUZZ_CHECK(kw_cfg_load_string(&fuzz_table, &back, text1, len1, NULL) == 0);
    char *text2 = fuzz_print(&back, &len2);
    FUZZ_CHECK(len1 == len2 && memcmp(text1, text2, len1) == 0);
    free(text1);
    free(text2);
    kw_cfg_free(&fuzz_table, &back);
    kw_cfg_free(&fuzz_table, &c);
    return 0;
}
