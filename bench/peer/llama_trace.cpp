// llama_trace.cpp: llama.cpp's greedy loop as llama-simple runs it (one batch for the prompt, then one token per step,
// argmax of the last row's logits), printing each step's id and its top-1 minus top-2 logit margin, with knobs that
// llama-simple lacks: flash attention on/off, the thread count, and a dump of every f32 graph tensor of every step
// (ggml's eval callback) as raw little-endian f32 files DUMPDIR/s<step>_<tensor name>.f32. Built by q8parity.sh against
// the llama.cpp build of llamacpp.sh (issue 10); written against that version's llama.h (llama_batch_ext).
// With FORCE (teacher forcing, q8agree.sh): the new tokens are the given ids instead of the argmax, fed back one after
// the other (EOG ids included); each step's line still gives the argmax, and adds forced=ID flogit=its logit.
// usage: llama_trace MODEL N_PREDICT PROMPT [FA: -1 auto, 0 off, 1 on] [THREADS, 0 default] [DUMPDIR] [FILTER] [FORCE]
//        [IGNORE_EOG: 1 = do not stop at an end-of-generation id]
//        FILTER: dump only tensors whose name contains it ("*" or empty: all)
//        FORCE: comma-separated ids; N_PREDICT is then their count (empty: none)
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <cmath>

static int g_step = 0;
static const char *g_dumpdir = nullptr;
static const char *g_filter = nullptr;

static bool cb(struct ggml_tensor *t, bool ask, void *) {
    if (ask)
        return g_dumpdir != nullptr &&
               (!g_filter || strstr(t->name, g_filter) != nullptr || strcmp(g_filter, "*") == 0);
    if (t->type != GGML_TYPE_F32) return true;
    size_t n = ggml_nelements(t);
    std::vector<float> v(n);
    if (!ggml_is_contiguous(t)) return true;
    ggml_backend_tensor_get(t, v.data(), 0, n * sizeof(float));
    double s = 0, sa = 0;
    for (float f : v) {
        s += f;
        sa += fabs(f);
    }
    printf("T step%d %s %s [%lld %lld %lld %lld] sum=%.9g abs=%.9g v0=%.9g v1=%.9g\n", g_step, t->name, ggml_op_desc(t),
           (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], s, sa, v[0],
           n > 1 ? v[1] : 0.f);
    char p[512];
    snprintf(p, sizeof p, "%s/s%d_%s.f32", g_dumpdir, g_step, t->name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fwrite(v.data(), 4, n, f);
        fclose(f);
    }
    return true;
}

static void batch_set_tokens(llama_batch_ext *batch, const llama_token *tokens, int32_t n_tokens, llama_pos pos_0) {
    llama_batch_ext_clear(batch);
    for (int32_t i = 0; i < n_tokens; ++i) {
        const int32_t idx = llama_batch_ext_add_token(batch, 0, tokens[i]);
        const llama_pos pos = pos_0 + i;
        llama_batch_ext_set_pos(batch, idx, &pos);
    }
    llama_batch_ext_set_output_logits(batch, n_tokens - 1, true);
}

int main(int argc, char **argv) {
    std::setlocale(LC_NUMERIC, "C");
    if (argc < 4) {
        fprintf(stderr, "usage: llama_trace MODEL N_PREDICT PROMPT [FA -1|0|1] [THREADS] [DUMPDIR] [FILTER] [FORCE] "
                        "[IGNORE_EOG]\n");
        return 1;
    }
    std::string model_path = argv[1];
    int n_predict = atoi(argv[2]);
    std::string prompt = argv[3];
    int fa = argc > 4 ? atoi(argv[4]) : -1;
    int nth = argc > 5 ? atoi(argv[5]) : 0;
    g_dumpdir = argc > 6 && argv[6][0] ? argv[6] : nullptr;
    g_filter = argc > 7 && argv[7][0] ? argv[7] : nullptr;
    const bool ignore_eog = argc > 9 && atoi(argv[9]) != 0;
    std::vector<llama_token> force;
    if (argc > 8 && argv[8][0]) {
        for (const char *p = argv[8];;) {
            char *end = nullptr;
            force.push_back((llama_token)strtol(p, &end, 10));
            if (end == p) {
                fprintf(stderr, "FORCE: bad id list '%s'\n", argv[8]);
                return 1;
            }
            while (*end == ' ')
                ++end;
            if (*end != ',') break;
            p = end + 1;
        }
        n_predict = (int)force.size();
    }
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model *model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) return 1;
    const llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), NULL, 0, true, true);
    std::vector<llama_token> toks(n_prompt);
    llama_tokenize(vocab, prompt.c_str(), prompt.size(), toks.data(), toks.size(), true, true);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict - 1;
    cp.n_batch = n_prompt;
    if (fa >= 0) cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (nth > 0) {
        cp.n_threads = nth;
        cp.n_threads_batch = nth;
    }
    cp.cb_eval = cb;
    cp.cb_eval_user_data = nullptr;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    fprintf(stderr, "threads %d/%d\n", llama_n_threads(ctx), llama_n_threads_batch(ctx));
    printf("prompt_ids:");
    for (auto id : toks)
        printf(" %d", id);
    printf("\n");
    llama_batch_ext *batch = llama_batch_ext_init(ctx);
    int n_vocab = llama_vocab_n_tokens(vocab);
    int n_pos = 0;
    batch_set_tokens(batch, toks.data(), n_prompt, 0);
    int n_tokens = n_prompt;
    std::string out;
    for (int s = 0; s < n_predict; ++s) {
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) return 1;
        n_pos += n_tokens;
        const float *lg = llama_get_logits_ith(ctx, -1);
        int b = 0, b2 = -1;
        for (int i = 1; i < n_vocab; ++i)
            if (lg[i] > lg[b]) b = i;
        for (int i = 0; i < n_vocab; ++i)
            if (i != b && (b2 < 0 || lg[i] > lg[b2])) b2 = i;
        char buf[128];
        int n = llama_token_to_piece(vocab, b, buf, sizeof buf, 0, true);
        std::string piece(buf, n > 0 ? n : 0);
        printf("tok %d id=%d logit=%.6f second=%d margin=%.6f", s, b, lg[b], b2, lg[b] - lg[b2]);
        if (!force.empty()) {
            if (force[s] < 0 || force[s] >= n_vocab) {
                fprintf(stderr, "FORCE: id %d outside the vocabulary\n", force[s]);
                return 1;
            }
            printf(" forced=%d flogit=%.6f", force[s], lg[force[s]]);
        }
        printf(" piece=[%s]\n", piece.c_str());
        out += piece;
        if (force.empty() && !ignore_eog && llama_vocab_is_eog(vocab, b)) break;
        g_step++;
        llama_token t = force.empty() ? b : force[s];
        batch_set_tokens(batch, &t, 1, n_pos);
        n_tokens = 1;
    }
    printf("text: %s\n", out.c_str());
    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
