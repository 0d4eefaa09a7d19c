/* test_cfg_reload.c: kw_cfg_reload (common/kw_cfg.h), what a daemon does on SIGHUP: the command line is parsed again
 * (the config file read again, the same overrides winning), and every key without KW_CFG_LIVE whose value changed
 * (strings, paths, numbers, enums, a list's count or any element) is named as refused; LIVE keys may change freely; a
 * file that no longer parses is an error. A small table of its own stands for a daemon's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_cfg.h"
#include "common/kw_status.h"

typedef struct item_cfg {
    char *name;
    int64_t port;
} item_cfg;

typedef struct demo_cfg {
    char *host;
    int64_t port;
    double ratio;
    int level;
    char *cert;
    item_cfg items[4];
    int32_t n_items;
} demo_cfg;

static const char *const levels[] = {"debug", "info", "warn", NULL};

static const kw_cfg_key item_keys[] = {
    {.name = "name", .type = KW_CFG_STRING, .offset = offsetof(item_cfg, name), .help = "name"},
    {.name = "port",
     .type = KW_CFG_INT,
     .offset = offsetof(item_cfg, port),
     .def = "1",
     .min = 1,
     .max = 65535,
     .help = "port"},
};

static const kw_cfg_key demo_keys[] = {
    {.name = "listen.host",
     .type = KW_CFG_STRING,
     .offset = offsetof(demo_cfg, host),
     .def = "127.0.0.1",
     .help = "host"},
    {.name = "listen.port",
     .type = KW_CFG_INT,
     .offset = offsetof(demo_cfg, port),
     .def = "7070",
     .min = 0,
     .max = 65535,
     .help = "port"},
    {.name = "policy.ratio",
     .type = KW_CFG_DOUBLE,
     .offset = offsetof(demo_cfg, ratio),
     .def = "0.5",
     .dmin = 0,
     .dmax = 1,
     .help = "a live double",
     .flags = KW_CFG_LIVE},
    {.name = "log.level",
     .type = KW_CFG_ENUM,
     .offset = offsetof(demo_cfg, level),
     .def = "info",
     .choices = levels,
     .help = "a live enum",
     .flags = KW_CFG_LIVE},
    {.name = "tls.cert",
     .type = KW_CFG_PATH,
     .offset = offsetof(demo_cfg, cert),
     .help = "a live path",
     .flags = KW_CFG_LIVE},
    {.name = "items",
     .type = KW_CFG_LIST,
     .offset = offsetof(demo_cfg, items),
     .help = "a list",
     .sub = item_keys,
     .n_sub = 2,
     .elem_size = sizeof(item_cfg),
     .max_items = 4,
     .count_offset = offsetof(demo_cfg, n_items)},
};

static const kw_cfg_table demo_table = {"demo", "a test table", demo_keys, sizeof demo_keys / sizeof demo_keys[0]};

static char config_path[64];

static void write_config(const char *text) {
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

#define V1                                                                                                             \
    "listen: {host: 127.0.0.1, port: 7070}\npolicy: {ratio: 0.5}\nlog: {level: info}\ntls: {cert: a.pem}\n"            \
    "items:\n  - {name: one, port: 10}\n  - {name: two, port: 20}\n"

/* Loads V1 as running, writes text, reloads with argv: returns the reload's status, fills refused. */
static int reload_after(const char *text, int argc, char **argv, demo_cfg *running, demo_cfg *next, char *refused,
                        size_t cap, int *n) {
    write_config(V1);
    enum kw_cfg_action action;
    memset(running, 0, sizeof *running);
    assert_int_equal(kw_cfg_parse_args(&demo_table, running, argc, argv, &action), 0);
    write_config(text);
    return kw_cfg_reload(&demo_table, running, next, sizeof *next, argc, argv, refused, cap, n);
}

static int setup(void **state) {
    (void)state;
    snprintf(config_path, sizeof config_path, "/tmp/kw-cfg-reload-%d.yaml", (int)getpid());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(config_path);
    return 0;
}

static void test_unchanged_and_live(void **state) {
    (void)state;
    char cfg_arg[96], refused[256];
    snprintf(cfg_arg, sizeof cfg_arg, "--config=%s", config_path);
    char *argv[] = {"demo", cfg_arg, NULL};
    demo_cfg running, next;
    int n = -1;
    /* the same file: nothing refused */
    assert_int_equal(reload_after(V1, 2, argv, &running, &next, refused, sizeof refused, &n), 0);
    assert_int_equal(n, 0);
    assert_string_equal(refused, "");
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
    /* only live keys changed: nothing refused, the new values are in next */
    assert_int_equal(reload_after("listen: {host: 127.0.0.1, port: 7070}\npolicy: {ratio: 0.25}\nlog: {level: warn}\n"
                                  "tls: {cert: b.pem}\nitems:\n  - {name: one, port: 10}\n  - {name: two, port: 20}\n",
                                  2, argv, &running, &next, refused, sizeof refused, &n),
                     0);
    assert_int_equal(n, 0);
    assert_true(next.ratio == 0.25);
    assert_int_equal(next.level, 2);
    assert_non_null(strstr(next.cert, "b.pem"));
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
}

static void test_refused(void **state) {
    (void)state;
    char cfg_arg[96], refused[256];
    snprintf(cfg_arg, sizeof cfg_arg, "--config=%s", config_path);
    char *argv[] = {"demo", cfg_arg, NULL};
    demo_cfg running, next;
    int n = 0;
    /* a string, an int and a list element's value: refused, named in table order */
    assert_int_equal(reload_after("listen: {host: 0.0.0.0, port: 7071}\nlog: {level: debug}\n"
                                  "items:\n  - {name: one, port: 10}\n  - {name: two, port: 21}\n",
                                  2, argv, &running, &next, refused, sizeof refused, &n),
                     0);
    /* log.level changed and tls.cert went unset, but both are live */
    assert_int_equal(n, 3);
    assert_string_equal(refused, "listen.host, listen.port, items");
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
}

static void test_list_count_and_overrides(void **state) {
    (void)state;
    char cfg_arg[96], refused[256];
    snprintf(cfg_arg, sizeof cfg_arg, "--config=%s", config_path);
    /* the command line's override wins again: a file changing that key is not a change */
    char *argv[] = {"demo", cfg_arg, "--listen.port=0", NULL};
    demo_cfg running, next;
    int n = 0;
    assert_int_equal(reload_after("listen: {host: 127.0.0.1, port: 9999}\nitems:\n  - {name: one, port: 10}\n", 3, argv,
                                  &running, &next, refused, sizeof refused, &n),
                     0);
    assert_int_equal(n, 1);
    assert_string_equal(refused, "items");
    assert_int_equal(next.port, 0);
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
    /* the refused list is cut to its buffer, always terminated, and still counts every key */
    char tiny[8];
    assert_int_equal(
        reload_after("listen: {host: 10.0.0.1, port: 1}\n", 3, argv, &running, &next, tiny, sizeof tiny, &n), 0);
    assert_int_equal(n, 2); /* listen.host, items (listen.port is overridden) */
    assert_true(strlen(tiny) < sizeof tiny);
    assert_memory_equal(tiny, "listen.", 7);
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
}

static void test_broken_file(void **state) {
    (void)state;
    char cfg_arg[96], refused[256];
    snprintf(cfg_arg, sizeof cfg_arg, "--config=%s", config_path);
    char *argv[] = {"demo", cfg_arg, NULL};
    demo_cfg running, next;
    int n = 0;
    assert_int_equal(reload_after("listen: [unclosed\n", 2, argv, &running, &next, refused, sizeof refused, &n),
                     KW_E_PARSE);
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
    assert_int_equal(reload_after("listen: {port: 70000}\n", 2, argv, &running, &next, refused, sizeof refused, &n),
                     KW_E_LIMIT);
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
    /* the file is gone */
    write_config(V1);
    enum kw_cfg_action action;
    memset(&running, 0, sizeof running);
    assert_int_equal(kw_cfg_parse_args(&demo_table, &running, 2, argv, &action), 0);
    unlink(config_path);
    assert_true(kw_cfg_reload(&demo_table, &running, &next, sizeof next, 2, argv, refused, sizeof refused, &n) < 0);
    assert_non_null(strstr(kw_error_detail(), "kw-cfg-reload"));
    kw_cfg_free(&demo_table, &running), kw_cfg_free(&demo_table, &next);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unchanged_and_live),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_list_count_and_overrides),
        cmocka_unit_test(test_broken_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
