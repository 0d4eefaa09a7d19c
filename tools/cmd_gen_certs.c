/* cmd_gen_certs.c: `kvwire gen-certs` writes a private PKI for TLS between the daemons (net/kw_net_pki.c): a CA, a
 * server certificate for the names given, a client certificate for mutual TLS. Option parsing only. */
#include "common/kw_status.h"
#include "net/kw_net.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <stdio.h>

const char kw_cmd_gen_certs_summary[] = "write a CA, a server and a client certificate for TLS between the daemons";

static void kw_gen_certs_usage(FILE *out) {
    fprintf(out, "usage: kvwire gen-certs --out DIR [--san LIST] [--days N] [--ca-name NAME]\n"
                 "Writes DIR/ca.pem, ca.key, server.pem, server.key, client.pem, client.key (EC P-256, SHA-256; keys\n"
                 "mode 0600). LIST is the server certificate's subjectAltName in OpenSSL syntax, default\n"
                 "\"DNS:localhost,IP:127.0.0.1\"; name every host and address the receivers connect to, e.g.\n"
                 "\"DNS:sharer1.cluster,IP:10.0.0.5\". Servers use server.pem/server.key and, for mutual TLS, trust\n"
                 "ca.pem; clients trust ca.pem and present client.pem/client.key. Keep ca.key offline.\n");
}

int kw_cmd_gen_certs(int argc, char **argv) {
    const char *out = NULL, *san = NULL, *ca_name = NULL;
    int64_t days = 365;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--out", &out),
        KW_CLI_STR("--san", &san),
        KW_CLI_STR("--ca-name", &ca_name),
        KW_CLI_INT("--days", &days, 1, 36500),
    };
    const int parsed = KW_CLI_PARSE("kvwire gen-certs", argc, argv, opts, kw_gen_certs_usage);
    if (parsed != KW_CLI_RUN) return parsed;
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/ca.pem", out);
    kw_cli_make_parents(probe); /* creates DIR itself */
    const kw_net_pki_options opt = {.server_san = san, .ca_name = ca_name, .days = (uint32_t)days};
    const int rc = kw_net_pki_generate(out, &opt);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-certs: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    printf("wrote %s/{ca,server,client}.{pem,key}\n", out);
    return 0;
}
