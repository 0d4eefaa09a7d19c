/* bench_gpu.c: `kvwire bench gpu`: the GPU path against the device's peak memory bandwidth, for the Qwen3-0.6B shape
 * (28 layers, 8 KV heads x 128, hidden 1024, bf16). Built only when the CUDA backend is (tools/CMakeLists.txt).
 *
 * Peak bandwidth is read from the device: 2 (double data rate) x memory clock x bus width (cudaDevAttrMemoryClockRate,
 * cudaDevAttrGlobalMemoryBusWidth). Measured, and printed as one table:
 *  - pack: KVWire encode of every layer's K and V (kw_cuda_wire_encode_tensor) from a bf16 cache of --tokens tokens
 *    in device memory, for a few codecs; bandwidth counts the bytes a perfect kernel must move (the bf16 input once,
 *    the wire bytes once; the encoder in fact reads its input twice, absmax then pack), timed with CUDA events, best
 *    of --reps passes over all 56 tensors (far beyond L2);
 *  - unpack: the decode of those bytes back into bf16 (kw_cuda_wire_decode_tensor), counted the same way;
 *  - prefill tok/s and batch-1 decode tok/s of a random model of the shape on the CUDA backend (the gen-model library
 *    writes it to a temporary folder, or --model-dir), and decode against its bound, peak bandwidth / weight bytes
 *    read per token; for each --weights format: the bf16 folder, and GGUF files kw_quantize_file (`kvwire quantize`)
 *    writes from it, Q8_0 and Q4_K_M, whose weights the backend keeps quantized (fewer bytes read per token).
 * Targets (issue 9, unverified until run on hardware): pack/unpack >= 70% of peak, decode >= 60% of its bound.
 * Without a device it says so and exits 77, the skip status of the test suite. Not a correctness check:
 * tests/gpu does that.
 */
#include "kw_benches.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/cuda/kw_cuda_wire.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model/kw_quantize.h"
#include "tools/kw_cli.h"
#include "wire/kw_wire.h"

const char kw_bench_gpu_summary[] = "GPU: KVWire pack/unpack GB/s and decode tok/s as fractions of peak memory "
                                    "bandwidth, prefill tok/s (Qwen3-0.6B shape)";

#define KW_BENCH_GPU_NO_DEVICE 77

enum { KW_GPU_LAYERS = 28, KW_GPU_KV_HEADS = 8, KW_GPU_HEAD_DIM = 128 };

static void kw_bench_gpu_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire bench gpu [--device N] [--tokens N] [--prompt-len N] [--decode N] [--reps N]\n"
        "                        [--model-dir DIR] [--weights bf16|q8_0|q4_k_m|all] [--skip-model]\n"
        "  --device     CUDA device (default 0)\n"
        "  --tokens     cached tokens per layer for pack/unpack (default 4096)\n"
        "  --prompt-len prefill tokens (default 512); --decode: decode steps (default 128)\n"
        "  --reps       measured repetitions, best is reported (default 5)\n"
        "  --model-dir  where to write the random Qwen3-0.6B-shaped model (kept, and reused); default: a temp dir\n"
        "  --weights    the model's weight format(s) (default all: bf16, then GGUF Q8_0 and Q4_K_M kept quantized)\n"
        "  --skip-model pack/unpack only\n"
        "exit status: 0 done, 1 failure, 2 usage error, %d no CUDA device (nothing measured)\n",
        KW_BENCH_GPU_NO_DEVICE);
}

#define KW_CUDA_CHECK(expr)                                                                                            \
    do {                                                                                                               \
        const cudaError_t kw_e_ = (expr);                                                                              \
        KW_CHECK_IF(kw_e_ != cudaSuccess, KW_E_CUDA, "%s: %s", #expr, cudaGetErrorString(kw_e_));                      \
    } while (0)

struct kw_gpu_codec {
    const char *name;
    kw_cuda_wire_spec spec;
};

static const struct kw_gpu_codec kw_gpu_codecs[] = {
    {"int8 token f16", {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0, 0, 0}},
    {"int4 group32 f16", {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 5, 0, 0}},
    {"nf4 token bf16", {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0, 0, 0}},
    {"e4m3 head e8m0", {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_E8M0, 0, 0, 0}},
};
#define KW_GPU_CODECS (sizeof kw_gpu_codecs / sizeof kw_gpu_codecs[0])

/* Pack and unpack times of one codec: best of reps passes over every layer's K and V. */
static int kw_gpu_time_codec(const kw_cuda_wire_spec *spec, uint32_t T, const uint16_t *cache, size_t tensor_elems,
                             int64_t reps, double *pack_s, double *unpack_s, uint64_t *wire_bytes) {
    int rc = 0;
    const uint32_t H = KW_GPU_KV_HEADS, D = KW_GPU_HEAD_DIM, n = 2 * KW_GPU_LAYERS;
    const uint64_t bytes = kw_cuda_wire_tensor_bytes(spec, H, T, D),
                   work_bytes = kw_cuda_wire_work_bytes(spec, H, T, D);
    uint8_t *wire = NULL;
    void *work = NULL;
    uint16_t *out = NULL;
    unsigned long long *err = NULL;
    unsigned int *bad = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    KW_CUDA_CHECK(cudaMalloc((void **)&wire, bytes * n));
    KW_CUDA_CHECK(cudaMalloc(&work, work_bytes));
    KW_CUDA_CHECK(cudaMalloc((void **)&out, tensor_elems * 2 * n)); /* distinct outputs: no write stays in L2 */
    KW_CUDA_CHECK(cudaMalloc((void **)&err, sizeof *err));
    KW_CUDA_CHECK(cudaMalloc((void **)&bad, sizeof *bad));
    KW_CUDA_CHECK(cudaMemset(bad, 0, sizeof *bad));
    KW_CUDA_CHECK(cudaEventCreate(&start));
    KW_CUDA_CHECK(cudaEventCreate(&stop));
    *pack_s = *unpack_s = 1e30;
    for (int64_t r = 0; r <= reps; ++r) { /* pass 0 warms up */
        KW_CUDA_CHECK(cudaEventRecord(start, NULL));
        for (uint32_t i = 0; i < n; ++i) {
            const kw_cuda_wire_src src = {
                cache + (size_t)i * tensor_elems, KW_WIRE_DTYPE_BF16, (size_t)T * D, D, NULL, 0, NULL, 0, 0};
            KW_CHECK(kw_cuda_wire_encode_tensor(NULL, spec, &src, H, T, D, wire + (size_t)i * bytes, work, err));
        }
        KW_CUDA_CHECK(cudaEventRecord(stop, NULL));
        KW_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        KW_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        unsigned long long e = 0;
        KW_CUDA_CHECK(cudaMemcpy(&e, err, sizeof e, cudaMemcpyDeviceToHost));
        KW_CHECK(kw_cuda_wire_encode_status(e));
        if (r > 0 && ms * 1e-3 < *pack_s) *pack_s = ms * 1e-3;

        KW_CUDA_CHECK(cudaEventRecord(start, NULL));
        for (uint32_t i = 0; i < n; ++i) {
            const kw_cuda_wire_dst dst = {out + (size_t)i * tensor_elems, KW_WIRE_DTYPE_BF16, (size_t)T * D, D, 0};
            KW_CHECK(kw_cuda_wire_decode_tensor(NULL, spec, wire + (size_t)i * bytes, H, T, D, &dst, bad));
        }
        KW_CUDA_CHECK(cudaEventRecord(stop, NULL));
        KW_CUDA_CHECK(cudaEventSynchronize(stop));
        KW_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (r > 0 && ms * 1e-3 < *unpack_s) *unpack_s = ms * 1e-3;
    }
    *wire_bytes = bytes * n;
out:
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    cudaFree(wire);
    cudaFree(work);
    cudaFree(out);
    cudaFree(err);
    cudaFree(bad);
    return rc;
}

/* The --weights choices: the bf16 folder itself, or a GGUF file quantized from it with a kw_quant_scheme. */
static const char *const kw_gpu_weights[] = {"bf16", "q8_0", "q4_k_m", "all", NULL};
static const int kw_gpu_scheme[] = {-1, KW_QUANT_Q8_0, KW_QUANT_Q4_K_M};

/* Prefill and decode of the Qwen3-0.6B-shaped random model on the CUDA backend, weights as kw_gpu_weights[format]. */
static int kw_gpu_time_model(int device, const char *dir, int format, int64_t prompt_len, int64_t n_decode,
                             int64_t reps, double *prefill_s, double *decode_s, size_t *weight_bytes) {
    int rc = 0;
    kw_backend *be = NULL;
    kw_model *model = NULL;
    kw_kvcache *cache = NULL;
    int32_t *ids = NULL;
    char *st_path = kw_path_join(dir, "model.safetensors");
    KW_CHECK_IF(!st_path, KW_E_NOMEM, "out of memory");
    const int exists = kw_path_is_file(st_path);
    free(st_path);
    if (!exists) {
        kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 1};
        KW_CHECK(kw_genmodel_preset("qwen3-0.6b", NULL, &go.cfg));
        KW_CHECK(kw_genmodel_write(&go, dir));
    }
    char gguf[4096];
    if (kw_gpu_scheme[format] >= 0) { /* written once next to the folder's files, and reused with --model-dir */
        snprintf(gguf, sizeof gguf, "%s/model-%s.gguf", dir, kw_gpu_weights[format]);
        if (!kw_path_is_file(gguf))
            KW_CHECK(kw_quantize_file(dir, gguf, (enum kw_quant_scheme)kw_gpu_scheme[format], NULL, NULL));
    }
    KW_CHECK(kw_backend_create_cuda(device, &be));
    const kw_model_options mo = {.max_batch = (int32_t)(prompt_len < 512 ? prompt_len : 512)};
    KW_CHECK(kw_model_load(be, kw_gpu_scheme[format] >= 0 ? gguf : dir, &mo, &model));
    const kw_model_config *cfg = kw_model_get_config(model);
    ids = malloc((size_t)prompt_len * sizeof *ids);
    KW_CHECK_IF(!ids, KW_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < prompt_len; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)cfg->vocab);
    KW_CHECK(kw_model_create_cache(model, prompt_len + n_decode + 1, KW_DTYPE_BF16, &cache));
    *prefill_s = *decode_s = 1e30;
    for (int64_t r = 0; r <= reps; ++r) { /* pass 0 warms up */
        int32_t next = 0;
        KW_CHECK(kw_kvcache_reset(cache));
        const kw_forward_args a = {
            .ids = ids, .n = prompt_len, .mode = KW_LOGITS_LAST, .argmax = &next, .argmax_flags = 1};
        uint64_t t0 = kw_time_now_ns();
        KW_CHECK(kw_model_forward(model, cache, &a)); /* returns with the argmax on the host: synchronized */
        const double pre = kw_time_seconds(t0, kw_time_now_ns());
        t0 = kw_time_now_ns();
        for (int64_t i = 0; i < n_decode; ++i)
            KW_CHECK(kw_model_decode_step(model, cache, next, NULL, &next, KW_ARGMAX_ROUND_BF16));
        const double dec = kw_time_seconds(t0, kw_time_now_ns());
        if (r > 0 && pre < *prefill_s) *prefill_s = pre;
        if (r > 0 && dec < *decode_s) *decode_s = dec;
    }
    *weight_bytes = kw_model_weight_bytes_per_token(model);
out:
    free(ids);
    kw_kvcache_free(cache);
    kw_model_free(model);
    kw_backend_destroy(be);
    return rc;
}

int kw_bench_gpu(int argc, char **argv) {
    int64_t device = 0, tokens = 4096, prompt_len = 512, n_decode = 128, reps = 5;
    const char *model_dir = NULL;
    int skip_model = 0, weights = 3;
    const kw_cli_option opts[] = {
        KW_CLI_INT("--device", &device, 0, 64),
        KW_CLI_INT("--tokens", &tokens, 1, 1 << 20),
        KW_CLI_INT("--prompt-len", &prompt_len, 1, 8192),
        KW_CLI_INT("--decode", &n_decode, 1, 8192),
        KW_CLI_INT("--reps", &reps, 1, 100),
        KW_CLI_STR("--model-dir", &model_dir),
        KW_CLI_CHOICE("--weights", &weights, kw_gpu_weights),
        KW_CLI_FLAG("--skip-model", &skip_model),
    };
    const int st = KW_CLI_PARSE("kvwire bench gpu", argc, argv, opts, kw_bench_gpu_usage);
    if (st != KW_CLI_RUN) return st;

    int count = 0;
    const cudaError_t ce = cudaGetDeviceCount(&count);
    if (ce != cudaSuccess || count <= device) {
        fprintf(stderr, "kvwire bench gpu: no CUDA device %ld (%s); run it on a GPU node\n", (long)device,
                ce != cudaSuccess ? cudaGetErrorString(ce) : "not that many devices");
        return KW_BENCH_GPU_NO_DEVICE;
    }
    int rc = 0;
    const char *stage = "device properties";
    char tmpl[] = "/tmp/kw_bench_gpu_XXXXXX";
    const char *dir = model_dir; /* the random model, written once for every format */
    int temp_dir = 0;
    uint16_t *cache = NULL;
    struct cudaDeviceProp prop;
    int clock_khz = 0, bus_bits = 0;
    KW_CUDA_CHECK(cudaSetDevice((int)device));
    KW_CUDA_CHECK(cudaGetDeviceProperties(&prop, (int)device));
    KW_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, (int)device));
    KW_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, (int)device));
    const double peak = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0);
    KW_CHECK_IF(peak <= 0, KW_E_CUDA, "the device reports no memory clock or bus width");

    stage = "pack/unpack";
    const uint32_t T = (uint32_t)tokens;
    const size_t tensor_elems = (size_t)KW_GPU_KV_HEADS * T * KW_GPU_HEAD_DIM;
    const size_t cache_elems = tensor_elems * 2 * KW_GPU_LAYERS;
    KW_CUDA_CHECK(cudaMalloc((void **)&cache, cache_elems * 2));
    {
        /* a bell-ish bf16 fill made on the host once (the values only need to be finite and varied) */
        uint16_t *h = malloc(cache_elems * 2);
        KW_CHECK_IF(!h, KW_E_NOMEM, "out of memory for %zu cache elements", cache_elems);
        uint64_t s = 1;
        for (size_t i = 0; i < cache_elems; ++i) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            h[i] = (uint16_t)((0x3c00u + ((s >> 40) & 0x3ffu)) ^ ((s >> 20) & 0x8000u)); /* +-[2^-7, 2) */
        }
        const cudaError_t e = cudaMemcpy(cache, h, cache_elems * 2, cudaMemcpyHostToDevice);
        free(h);
        KW_CUDA_CHECK(e);
    }
    printf("device %ld: %s, sm_%d%d, %d SMs, %.1f GiB; peak memory bandwidth %.1f GB/s (2 x %d MHz x %d bits)\n",
           (long)device, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
           (double)prop.totalGlobalMem / (1u << 30), peak * 1e-9, clock_khz / 1000, bus_bits);
    printf("shape: Qwen3-0.6B KV, %d layers x (K, V) x %d heads x %u tokens x %d, bf16 cache (%.1f MiB)\n\n",
           KW_GPU_LAYERS, KW_GPU_KV_HEADS, T, KW_GPU_HEAD_DIM, (double)cache_elems * 2 / (1u << 20));
    printf("%-34s %12s %12s %10s\n", "measurement", "time", "rate", "of peak");
    const double in_bytes = (double)cache_elems * 2;
    for (size_t c = 0; c < KW_GPU_CODECS; ++c) {
        double pack_s = 0, unpack_s = 0;
        uint64_t wire_bytes = 0;
        KW_CHECK(
            kw_gpu_time_codec(&kw_gpu_codecs[c].spec, T, cache, tensor_elems, reps, &pack_s, &unpack_s, &wire_bytes));
        const double moved = in_bytes + (double)wire_bytes;
        char label[64];
        snprintf(label, sizeof label, "pack %s", kw_gpu_codecs[c].name);
        printf("%-34s %9.3f ms %7.1f GB/s %9.1f%%\n", label, pack_s * 1e3, moved / pack_s * 1e-9,
               100.0 * moved / pack_s / peak);
        snprintf(label, sizeof label, "unpack %s", kw_gpu_codecs[c].name);
        printf("%-34s %9.3f ms %7.1f GB/s %9.1f%%\n", label, unpack_s * 1e3, moved / unpack_s * 1e-9,
               100.0 * moved / unpack_s / peak);
    }
    cudaFree(cache);
    cache = NULL;

    if (!skip_model && !dir) { /* a temporary folder unless --model-dir */
        KW_CHECK_IF(!mkdtemp(tmpl), KW_E_IO, "mkdtemp: %s", strerror(errno));
        dir = tmpl;
        temp_dir = 1;
    }
    for (int f = 0; f < 3 && !skip_model; ++f) {
        if (weights != 3 && weights != f) continue;
        stage = "model";
        double prefill_s = 0, decode_s = 0;
        size_t wbytes = 0;
        KW_CHECK(kw_gpu_time_model((int)device, dir, f, prompt_len, n_decode, reps, &prefill_s, &decode_s, &wbytes));
        const double decode_tps = (double)n_decode / decode_s, bound_tps = peak / (double)wbytes;
        char label[64];
        snprintf(label, sizeof label, "prefill %ld tokens, %s", (long)prompt_len, kw_gpu_weights[f]);
        printf("%-34s %9.3f ms %7.0f tok/s %8s\n", label, prefill_s * 1e3, (double)prompt_len / prefill_s, "-");
        snprintf(label, sizeof label, "decode %ld steps (batch 1), %s", (long)n_decode, kw_gpu_weights[f]);
        printf("%-34s %9.3f ms %7.1f tok/s %8.1f%%\n", label, decode_s * 1e3, decode_tps,
               100.0 * decode_tps / bound_tps);
        printf("  %s decode bound: %.1f tok/s = peak bandwidth / %.1f MB of weights read per token\n",
               kw_gpu_weights[f], bound_tps, (double)wbytes * 1e-6);
    }
    printf("targets (issue 9, unverified until measured on hardware): pack/unpack >= 70%% of peak, decode >= 60%% of "
           "its bound\n");
out:
    cudaFree(cache);
    if (temp_dir) {
        for (int f = 0; f < 3; ++f) {
            char gguf[4096];
            snprintf(gguf, sizeof gguf, "%s/model-%s.gguf", dir, kw_gpu_weights[f]);
            remove(gguf);
        }
        kw_cli_remove_generated_model(dir);
    }
    if (rc < 0) fprintf(stderr, "kvwire bench gpu: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    return rc < 0 ? 1 : 0;
}
