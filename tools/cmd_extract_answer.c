/* cmd_extract_answer.c: `kvwire extract-answer` reads one JSON string per line on stdin (a model's output text) and
 * prints the answer letter the C2C reference extractor would give, or `null`, one line per input line.
 *
 * The JSON string literal is decoded with kw_json_decode_string (RFC 8259: escapes, \u with surrogate pairs, \u0000
 * kept as a byte), not with cJSON, whose C strings would stop at an embedded NUL. A line that is not exactly one JSON
 * string (surrounding blanks allowed), or that decodes to a lone surrogate or invalid UTF-8, stops the command with
 * exit status 1 and the line number on stderr; nothing is guessed. */
#include "c2c/kw_answer.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <stdio.h>
#include <stdlib.h>

const char kw_cmd_extract_answer_summary[] =
    "print the reference answer letter (or null) for each JSON string line on stdin";

/* One line: a JSON string to the reference's answer letter, or null. */
static int kw_extract_answer_line(void *user, const char *line, size_t len) {
    (void)user;
    char *text = NULL;
    size_t text_len = 0;
    char letter = 0;
    int rc = kw_json_decode_string(line, len, &text, &text_len);
    if (rc == 0) rc = kw_answer_extract(text, text_len, &letter);
    free(text);
    if (rc < 0) return rc;
    if (letter)
        printf("%c\n", letter);
    else
        printf("null\n");
    return 0;
}

int kw_cmd_extract_answer(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        fprintf(stderr,
                "usage: kvwire extract-answer < lines\n"
                "  each stdin line is one JSON string (a model's output); prints A, B, C, D or null per line\n");
        return 2;
    }
    return kw_cli_each_line("kvwire extract-answer", stdin, kw_extract_answer_line, NULL);
}
