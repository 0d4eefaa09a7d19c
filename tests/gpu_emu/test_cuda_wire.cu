/* test_cuda_wire.cu: the device kernels of kernels/cuda/kw_cuda_wire.h against the CPU code byte for byte.
 *
 *  - selection: kw_cuda_select_scores equals the scores c2c/kw_select.c computes (bit patterns), for f32 and bf16
 *    rows in the token-major and the head-major layout, and kw_cuda_select_topk picks the positions
 *    kw_select_positions picks (knorm_topk), with tied scores (duplicated rows), NaN and Inf rows and k from 0 to T;
 *  - encoding: for every codec, granularity (channel groups of 4, 8, 16 and the whole head), scale dtype and input
 *    dtype, in single- and two-group sections with strided views and a row gather, the device bytes of each tensor
 *    equal the scales and codes of the CPU encoder's section (read back through kw_wire_reader), and the device's
 *    status equals the CPU's for inputs the codec cannot take (NaN, Inf, values beyond a passthrough dtype or a scale
 *    dtype); log8 scales (KVWire v1.1) likewise, for every symmetric integer codec and granularity;
 *  - whole blobs: a multi-section blob (two-group sections, a gather, zstd) whose tensors were encoded on the device
 *    and copied into a pinned host buffer (kw_wire_encoder_begin_section / finish_section) equals the CPU's;
 *  - decoding: the device's f32 and bf16 outputs equal kw_wire_section_dequantize's, for those sections and for
 *    copies whose codes were overwritten with random bytes (reserved codes, then flagged by both) and re-sealed with
 *    valid checksums;
 *  - the rotation (FORMAT.md §5.12): the sharer's forward rotation of gathered bf16 cache rows and the receiver's
 *    inverse one equal kw_wire_rotate_rows bit for bit (every head_dim 2..1024), and the receiver's outlier values
 *    land on exactly their elements (f32 and bf16 outputs);
 *  - clipped scales (§5.13): the device's candidate search gives the CPU encoder's bytes for every integer codec,
 *    granularity and scale dtype (test_encode_clip).
 *
 * Built twice: as host C++ against the CUDA emulator (test_cuda_wire_emu, label gpu-emu, always runs) and by nvcc
 * (test_gpu_wire, label gpu, exits 77 without a device).
 */
extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "c2c/kw_select.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_internal.h"
}
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "kernels/cuda/kw_cuda_wire.h"
#ifndef KW_CUDA_EMU
#include <cuda_runtime.h>
#endif

#define CK(expr)                                                                                                       \
    do {                                                                                                               \
        const cudaError_t ck_err_ = (expr);                                                                            \
        if (ck_err_ != cudaSuccess) fail_msg("%s: %s", #expr, cudaGetErrorString(ck_err_));                            \
    } while (0)

/* splitmix64: the same numbers everywhere */
struct rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    uint32_t below(uint32_t n) { return (uint32_t)(next() % n); }
    float uniform() { return (float)((int32_t)(next() >> 40) - (1 << 23)) * 0x1p-23f; } /* [-1, 1), exact */
};

/* A device copy of a host array, freed with the object. */
template <typename T> struct dev_buf {
    T *p = nullptr;
    size_t n = 0;
    explicit dev_buf(size_t count) : n(count) { CK(cudaMalloc((void **)&p, (count ? count : 1) * sizeof(T))); }
    dev_buf(const T *host, size_t count) : dev_buf(count) {
        if (count) CK(cudaMemcpy(p, host, count * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~dev_buf() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> v(n);
        if (n) CK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return v;
    }
    dev_buf(const dev_buf &) = delete;
    dev_buf &operator=(const dev_buf &) = delete;
};

/* ------------------------------------------------------------------------------------------------------------
 * Selection
 */

static void check_select(uint32_t T, int32_t H, int32_t D, int bf16, int head_major, uint64_t seed) {
    rng r{seed};
    std::vector<float> x((size_t)T * H * D); /* (T, H, D): what kw_select_positions reads */
    for (uint32_t t = 0; t < T; ++t) {
        const float mag = ldexpf(1.0f, (int)r.below(12) - 6);
        for (int32_t i = 0; i < H * D; ++i) {
            float v = r.uniform() * mag;
            if (bf16) v = kw_bf16_to_f32(kw_f32_to_bf16(v));
            x[(size_t)t * H * D + i] = v;
        }
        if (t > 0 && r.below(4) == 0) /* ties: a copy of an earlier token */
            memcpy(&x[(size_t)t * H * D], &x[(size_t)r.below(t) * H * D], sizeof(float) * H * D);
        if (r.below(29) == 0) x[(size_t)t * H * D + r.below(H * D)] = NAN;
        if (r.below(31) == 0) x[(size_t)t * H * D + r.below(H * D)] = -INFINITY;
        if (r.below(37) == 0) memset(&x[(size_t)t * H * D], 0, sizeof(float) * H * D);
    }
    /* the device copy, in the requested layout and dtype */
    const int64_t ts = head_major ? D : (int64_t)H * D, hs = head_major ? (int64_t)T * D : D;
    std::vector<float> xf((size_t)T * H * D);
    std::vector<uint16_t> xb((size_t)T * H * D);
    for (uint32_t t = 0; t < T; ++t)
        for (int32_t h = 0; h < H; ++h)
            for (int32_t d = 0; d < D; ++d) {
                const float v = x[((size_t)t * H + h) * D + d];
                xf[t * ts + h * hs + d] = v;
                xb[t * ts + h * hs + d] = kw_f32_to_bf16(v);
            }
    dev_buf<float> dxf(xf.data(), xf.size());
    dev_buf<uint16_t> dxb(xb.data(), xb.size());
    dev_buf<float> dscore(T);
    assert_int_equal(kw_cuda_select_scores(nullptr, bf16 ? (const void *)dxb.p : (const void *)dxf.p,
                                           bf16 ? KW_DTYPE_BF16 : KW_DTYPE_F32, T, H, D, ts, hs, dscore.p),
                     0);
    const std::vector<float> gscore = dscore.get();

    std::vector<float> score(T);
    std::vector<int64_t> want(T);
    const uint32_t ks[] = {0, 1, 2, T / 3, T / 2, T - 1, T, T + 5};
    for (uint32_t k : ks) {
        kw_select_policy pol = {KW_SELECT_KNORM, 0.0, k ? (int64_t)k : 1, 0, 0};
        int64_t n = 0;
        assert_int_equal(kw_select_positions(&pol, T, H, D, x.data(), nullptr, 0, 0, score.data(), want.data(), &n), 0);
        if (k == 0) n = 0; /* the CPU's min_tokens is >= 1: k = 0 is the device's own edge */
        for (uint32_t t = 0; t < T; ++t)
            if (kw_f32_bits(score[t]) != kw_f32_bits(gscore[t]))
                fail_msg("T %u H %d D %d bf16 %d head-major %d: score[%u] %a on the device, %a on the CPU", T, H, D,
                         bf16, head_major, t, (double)gscore[t], (double)score[t]);
        dev_buf<uint32_t> dout(T + 5), dcount(1);
        assert_int_equal(kw_cuda_select_topk(nullptr, dscore.p, T, k, dout.p, dcount.p), 0);
        const std::vector<uint32_t> gout = dout.get(), gcount = dcount.get();
        if ((int64_t)gcount[0] != n)
            fail_msg("T %u k %u: %u positions on the device, %lld on the CPU", T, k, gcount[0], (long long)n);
        for (int64_t i = 0; i < n; ++i)
            if ((int64_t)gout[i] != want[i])
                fail_msg("T %u k %u: position %lld is %u on the device, %lld on the CPU", T, k, (long long)i, gout[i],
                         (long long)want[i]);
    }
}

static void test_select(void **state) {
    (void)state;
    check_select(1, 1, 8, 0, 0, 1);
    check_select(37, 3, 16, 0, 0, 2);
    check_select(300, 2, 8, 1, 0, 3);
    check_select(130, 8, 32, 0, 1, 4);
    check_select(600, 1, 8, 1, 1, 5); /* more tokens than the top-k block's threads: several compaction chunks */
}

/* ------------------------------------------------------------------------------------------------------------
 * KVWire encode and decode
 */

static constexpr uint32_t H = 2, D = 32, NPOS = 64;

struct wire_case {
    kw_wire_codec_spec a, b; /* group 0 (K a, V b) and, in two-group sections, group 1 (K b, V a) */
    uint32_t src_dtype;      /* enum kw_wire_dtype */
    uint32_t T, split;       /* tokens, and the first token of group 1 (0: one group) */
    int head_major, gather;
    int poison;  /* 0 none, 1 a NaN, 2 an Inf, 3 a huge value, 4 a tiny one, 5 a range no scale holds in the
                    first unit and a NaN in a later unit of the same row */
    int columns; /* 1: channel 3 a zero of one sign in every row, channel 5 one constant (channel scales' units) */
    uint32_t outliers = 0; /* > 0: the section sends that many outliers (FORMAT.md §5.10; the device encodes with the
                          CPU's choice and the tensors are compared, not the decode, which applies the table) */
    uint8_t clip = 0;      /* kw_wire_policy.clip: bit 0 K, bit 1 V take clipped scales (FORMAT.md §5.13) */
    int tails = 0;         /* 1: one value of most rows 4 to 12 times the row's spread (clipping then pays) */
};

/* The input of one tensor in the case's layout, as f32 values, plus its dtype bytes. */
struct tensor_src {
    std::vector<float> values;  /* (row, h, d) or (h, row, d) */
    std::vector<uint8_t> bytes; /* the same in src_dtype */
    size_t head_stride, token_stride;
};

/* t's bytes from its values in dtype, and its values rounded to that dtype (exact already, unless changed since). */
static void set_bytes(uint32_t dtype, tensor_src *t) {
    const size_t es = dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
    t->bytes.assign(t->values.size() * es, 0);
    for (size_t i = 0; i < t->values.size(); ++i) {
        if (es == 4) {
            memcpy(&t->bytes[4 * i], &t->values[i], 4);
        } else {
            const uint16_t h16 =
                dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(t->values[i]) : kw_f32_to_f16(t->values[i]);
            memcpy(&t->bytes[2 * i], &h16, 2);
            t->values[i] = dtype == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(h16) : kw_f16_to_f32(h16);
        }
    }
}

static void make_src(rng &r, const wire_case &c, uint32_t rows, tensor_src *out) {
    out->head_stride = c.head_major ? (size_t)rows * D : D;
    out->token_stride = c.head_major ? D : (size_t)H * D;
    out->values.assign((size_t)rows * H * D, 0.0f);
    for (uint32_t row = 0; row < rows; ++row)
        for (uint32_t h = 0; h < H; ++h) {
            const float mag = ldexpf(1.0f, (int)r.below(20) - 10);
            const int kind = (int)r.below(8);
            for (uint32_t d = 0; d < D; ++d) {
                float v = r.uniform() * mag;
                if (kind == 0) v = 0.0f;                                               /* a zero scale */
                if (kind == 1) v = (float)((int)r.below(15) - 7) + 0.5f;               /* rounding ties */
                if (kind == 2 && d % 5 == 0) v = 0.0f;                                 /* zeros in a row */
                if (kind == 3) v = d % 4 == 1 ? -0.0f : d % 4 == 3 ? 0.0f : fabsf(v);  /* minimum -0 (§5.9) */
                if (kind == 4) v = d % 4 == 2 ? 0.0f : d % 4 == 3 ? -0.0f : -fabsf(v); /* maximum +0 */
                if (kind == 5) v = mag * 0.75f;                                        /* constant: s = 0 */
                if (c.src_dtype == KW_WIRE_DTYPE_BF16) v = kw_bf16_to_f32(kw_f32_to_bf16(v));
                if (c.src_dtype == KW_WIRE_DTYPE_F16) v = kw_f16_to_f32(kw_f32_to_f16(v));
                out->values[row * out->token_stride + h * out->head_stride + d] = v;
            }
        }
    if (c.tails) /* a spike in most rows: near-Gaussian rows' tails, which the absmax scale spends levels on */
        for (uint32_t row = 0; row < rows; ++row)
            for (uint32_t h = 0; h < H; ++h) {
                float &v = out->values[row * out->token_stride + h * out->head_stride + r.below(D)];
                const float spike = v * (float)(4 + r.below(9)); /* rounded to the dtype by set_bytes below */
                if (r.below(4) != 0) v = spike;
            }
    if (c.columns) {
        const float zero = r.below(2) ? -0.0f : 0.0f;
        for (uint32_t row = 0; row < rows; ++row)
            for (uint32_t h = 0; h < H; ++h) {
                out->values[row * out->token_stride + h * out->head_stride + 3] = zero;
                out->values[row * out->token_stride + h * out->head_stride + 5] = 0.25f;
            }
    }
    if (c.poison == 5) { /* (token 0, head 0): channels 0 and 1 span 6e38, channel D-1 a NaN */
        out->values[0] = -3.0e38f;
        out->values[1] = 3.0e38f;
        out->values[D - 1] = NAN;
    } else if (c.poison) {
        const size_t i = r.below((uint32_t)out->values.size());
        const float p[] = {0.0f, NAN, -INFINITY, 3.0e38f, 1.0e-39f};
        float v = p[c.poison];
        if (c.poison == 3 && c.src_dtype != KW_WIRE_DTYPE_F32)
            v = c.src_dtype == KW_WIRE_DTYPE_F16 ? 65504.0f : 3.0e38f;
        out->values[i] = v;
        for (float &w : out->values) /* everything tiny so that a scale dtype's lower limit matters */
            if (c.poison == 4) w = w * 0x1p-100f;
    }
    set_bytes(c.src_dtype, out);
}

static kw_cuda_wire_spec dev_spec(const kw_wire_codec_spec &s) {
    return kw_cuda_wire_spec{s.codec, s.granularity, s.scale_dtype, s.group_log2, 0, 0};
}

/* A case's token groups, policy and layer input (pol.groups points into groups: keep the object in place). */
struct case_section {
    kw_wire_token_group groups[2];
    uint32_t n_groups;
    kw_wire_policy pol;
    kw_wire_layer_in in;
};

static void case_section_make(const wire_case &c, uint32_t layer, const tensor_src &ks, const tensor_src &vs,
                              const std::vector<uint32_t> &gather, const std::vector<uint32_t> &positions,
                              case_section *cs) {
    *cs = case_section{};
    cs->groups[0] = {c.split ? c.split : c.T, c.a, c.b};
    cs->groups[1] = {c.T - c.split, c.b, c.a};
    cs->n_groups = c.split ? 2 : 1;
    cs->pol.k = c.a;
    cs->pol.v = c.b;
    cs->pol.n_groups = c.split ? 2 : 0;
    cs->pol.groups = cs->groups;
    cs->pol.clip = c.clip;
    cs->in.layer = layer;
    cs->in.n_tokens = c.T;
    cs->in.positions = positions.data();
    cs->in.k = {ks.bytes.data(), ks.head_stride, ks.token_stride, c.gather ? gather.data() : nullptr};
    cs->in.v = {vs.bytes.data(), vs.head_stride, vs.token_stride, c.gather ? gather.data() : nullptr};
}

/* Encodes the section's tensors on the device in the CPU's order (group 0 K, V, group 1 K, V), each copied to
 * host_dst as the section lays them out (host_dst may be pinned memory); stops at the first failure and returns its
 * status. */
static int device_encode_section(const wire_case &c, const case_section &cs, const tensor_src &ks, const tensor_src &vs,
                                 const std::vector<uint32_t> &gather, const std::vector<uint8_t> &mask,
                                 uint8_t *host_dst) {
    dev_buf<uint8_t> dks(ks.bytes.data(), ks.bytes.size()), dvs(vs.bytes.data(), vs.bytes.size());
    dev_buf<uint8_t> dmask(mask.data(), mask.size());
    dev_buf<uint32_t> drows(gather.data(), gather.size());
    dev_buf<unsigned long long> err(1);
    size_t at = 0;
    for (uint32_t g = 0, t0 = 0; g < cs.n_groups; t0 += cs.groups[g].n_tokens, ++g) {
        const uint32_t tg = cs.pol.n_groups ? cs.groups[g].n_tokens : c.T;
        const kw_wire_codec_spec *specs[2] = {&cs.groups[g].k, &cs.groups[g].v};
        const dev_buf<uint8_t> *data[2] = {&dks, &dvs};
        const tensor_src *hs[2] = {&ks, &vs};
        for (int kv = 0; kv < 2; ++kv) {
            kw_cuda_wire_spec ds = dev_spec(*specs[kv]);
            ds.clip = (uint8_t)((c.clip >> kv) & 1u); /* the policy's bit for K or V, in every token group */
            const uint64_t bytes = kw_cuda_wire_tensor_bytes(&ds, H, tg, D);
            assert_true(bytes > 0);
            dev_buf<uint8_t> dst(bytes), work(kw_cuda_wire_work_bytes(&ds, H, tg, D));
            const kw_cuda_wire_src src = {data[kv]->p,
                                          c.src_dtype,
                                          hs[kv]->head_stride,
                                          hs[kv]->token_stride,
                                          c.gather ? drows.p : nullptr,
                                          t0,
                                          mask.empty() ? nullptr : dmask.p,
                                          kv ? (uint64_t)H * c.T * D : 0u,
                                          c.T};
            assert_int_equal(kw_cuda_wire_encode_tensor(nullptr, &ds, &src, H, tg, D, dst.p, work.p, err.p), 0);
            CK(cudaMemcpyAsync(host_dst + at, dst.p, bytes, cudaMemcpyDeviceToHost, nullptr));
            CK(cudaStreamSynchronize(nullptr));
            const int rc = kw_cuda_wire_encode_status(err.get()[0]);
            if (rc < 0) return rc;
            at += bytes;
        }
    }
    return 0;
}

/* Re-seals a one-section blob after its body was changed: the section checksum and the blob checksum. */
static void reseal(std::vector<uint8_t> &blob, size_t sec_off, size_t sec_len_without_checksum) {
    const uint64_t sc = kw__wire_hash_bytes(&blob[sec_off], sec_len_without_checksum);
    for (int i = 0; i < 8; ++i)
        blob[sec_off + sec_len_without_checksum + i] = (uint8_t)(sc >> (8 * i));
    kw__wire_hash h;
    kw__wire_hash_reset(&h);
    kw__wire_hash_update(&h, blob.data(), KW_WIRE_HEADER_BYTES);
    kw__wire_hash_update(&h, &blob[sec_off + sec_len_without_checksum], 8);
    const size_t trl = blob.size() - KW_WIRE_TRAILER_BYTES;
    kw__wire_hash_update(&h, &blob[trl], 16);
    const uint64_t bc = kw__wire_hash_digest(&h);
    for (int i = 0; i < 8; ++i)
        blob[trl + 16 + i] = (uint8_t)(bc >> (8 * i));
}

/* Decodes the blob's section on the CPU and on the device (every group, K and V, f32 and bf16) and compares. */
static void compare_decode(const std::vector<uint8_t> &blob, const char *what) {
    kw_wire_reader *rd = nullptr;
    const kw_wire_header *hdr = nullptr;
    assert_int_equal(kw_wire_reader_open(blob.data(), blob.size(), nullptr, &rd, &hdr), 0);
    const kw_wire_section *sec = nullptr;
    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
    const uint32_t T = sec->n_tokens;
    for (uint32_t out_dtype : {(uint32_t)KW_WIRE_DTYPE_F32, (uint32_t)KW_WIRE_DTYPE_BF16}) {
        const size_t es = out_dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, n = (size_t)T * H * D;
        std::vector<uint8_t> ck(n * es), cv(n * es);
        const kw_wire_tensor_out ko = {ck.data(), (uint8_t)out_dtype, D, (size_t)H * D};
        const kw_wire_tensor_out vo = {cv.data(), (uint8_t)out_dtype, D, (size_t)H * D};
        const int cpu_rc = kw_wire_section_dequantize(sec, &ko, &vo);
        dev_buf<uint8_t> dk(n * es), dv(n * es);
        dev_buf<unsigned int> bad(1);
        CK(cudaMemset(bad.p, 0, sizeof(unsigned int)));
        for (uint32_t g = 0; g < sec->n_groups; ++g) {
            const kw_wire_group_view &gv = sec->groups[g];
            const kw_wire_tensor_view *tv[2] = {&gv.k, &gv.v};
            dev_buf<uint8_t> *outs[2] = {&dk, &dv};
            for (int kv = 0; kv < 2; ++kv) {
                const size_t sb = tv[kv]->scale_bytes, zb = tv[kv]->zero_bytes;
                std::vector<uint8_t> bytes(sb + zb + tv[kv]->code_bytes);
                if (sb) memcpy(bytes.data(), tv[kv]->scales, sb);
                if (zb) memcpy(bytes.data() + sb, tv[kv]->zeros, zb);
                memcpy(bytes.data() + sb + zb, tv[kv]->codes, tv[kv]->code_bytes);
                dev_buf<uint8_t> src(bytes.data(), bytes.size());
                const kw_cuda_wire_spec ds = dev_spec(tv[kv]->spec);
                const kw_cuda_wire_dst dst = {outs[kv]->p, out_dtype, D, (size_t)H * D, gv.first_token};
                assert_int_equal(kw_cuda_wire_decode_tensor(nullptr, &ds, src.p, H, gv.n_tokens, D, &dst, bad.p), 0);
                CK(cudaDeviceSynchronize());
            }
        }
        const int dev_rc = bad.get()[0] ? KW_E_WIRE_VALUE : 0;
        if (dev_rc != cpu_rc) fail_msg("%s: decode status %d on the device, %d on the CPU", what, dev_rc, cpu_rc);
        if (dk.get() != ck || dv.get() != cv)
            fail_msg("%s: decoded %s values differ between the device and the CPU", what,
                     out_dtype == KW_WIRE_DTYPE_F32 ? "f32" : "bf16");
    }
    kw_wire_reader_close(rd);
}

/* Returns the encode status (equal on both sides). */
/* A one-group section with outliers made as sharerd makes it on a device: the choice on the device
 * (kw_cuda_wire_outlier_select, which must be the CPU's mask), its values (kw_cuda_wire_outlier_take), the table
 * written by kw_wire_encoder_begin_section_outliers around the device's tensors (dev_bytes): the CPU's section. */
static void check_outlier_section(const wire_case &c, const kw_wire_header &hdr, const case_section &cs,
                                  const tensor_src &ks, const tensor_src &vs, const std::vector<uint32_t> &gather,
                                  const std::vector<uint8_t> &mask, const std::vector<uint8_t> &dev_bytes,
                                  const uint8_t *cpu_section, size_t cpu_len) {
    const kw_cuda_wire_spec sk = dev_spec(c.a), sv = dev_spec(c.b);
    const uint64_t elems = 2ull * H * c.T * D;
    dev_buf<uint8_t> dks(ks.bytes.data(), ks.bytes.size()), dvs(vs.bytes.data(), vs.bytes.size());
    dev_buf<uint32_t> drows(gather.data(), gather.size()), chosen(c.outliers), n_dev(1);
    dev_buf<uint8_t> work(kw_cuda_wire_outlier_work_bytes(&sk, &sv, H, c.T, D));
    dev_buf<unsigned int> bad(1), dmask((elems + 31) / 32);
    dev_buf<float> values(c.outliers);
    const kw_cuda_wire_src srck = {
        dks.p, c.src_dtype, ks.head_stride, ks.token_stride, c.gather ? drows.p : nullptr, 0, nullptr, 0, 0};
    const kw_cuda_wire_src srcv = {
        dvs.p, c.src_dtype, vs.head_stride, vs.token_stride, c.gather ? drows.p : nullptr, 0, nullptr, 0, 0};
    assert_int_equal(kw_cuda_wire_outlier_select(nullptr, &sk, &sv, &srck, &srcv, H, c.T, D, c.outliers, work.p,
                                                 chosen.p, n_dev.p, bad.p),
                     0);
    assert_int_equal(
        kw_cuda_wire_outlier_take(nullptr, &srck, &srcv, H, c.T, D, chosen.p, c.outliers, n_dev.p, dmask.p, values.p),
        0);
    CK(cudaDeviceSynchronize());
    const uint32_t n = n_dev.get()[0];
    const std::vector<unsigned int> words = dmask.get();
    assert_memory_equal(words.data(), mask.data(), mask.size()); /* little-endian words: the mask's bytes */
    std::vector<uint8_t> sec(cpu_len + 64);
    kw_wire_encoder *enc = nullptr;
    assert_int_equal(kw_wire_encoder_create(&hdr, nullptr, &enc), 0);
    std::vector<uint8_t> head(KW_WIRE_HEADER_BYTES);
    size_t w = 0, off = 0, len = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, head.data(), head.size(), &w), 0);
    assert_int_equal(kw_wire_encoder_begin_section_outliers(enc, cs.in.layer, c.T, cs.in.positions, &cs.pol,
                                                            chosen.get().data(), values.get().data(), n, sec.data(),
                                                            sec.size(), &off),
                     0);
    const size_t tensors = kw_cuda_wire_tensor_bytes(&sk, H, c.T, D) + kw_cuda_wire_tensor_bytes(&sv, H, c.T, D);
    memcpy(&sec[off], dev_bytes.data(), tensors);
    assert_int_equal(kw_wire_encoder_finish_section(enc, &len), 0);
    kw_wire_encoder_destroy(enc);
    assert_int_equal(len, cpu_len);
    assert_memory_equal(sec.data(), cpu_section, cpu_len);
}

/* The header of a blob of one section of H heads of D values (layers: the blob's layer count). */
static kw_wire_header one_section_header(uint16_t layers, uint32_t positions, uint32_t src_dtype, uint16_t version) {
    kw_wire_header hdr = {};
    hdr.n_layers = layers;
    hdr.n_sections = 1;
    hdr.n_kv_heads = H;
    hdr.head_dim = D;
    hdr.n_positions = positions;
    hdr.src_dtype = (uint8_t)src_dtype;
    hdr.version = version;
    return hdr;
}

static int check_case(const wire_case &c, uint64_t seed) {
    rng r{seed};
    char what[160];
    snprintf(what, sizeof what, "K %s/%s/%s%s/G%u V %s/%s/%s%s/G%u src %s T %u split %u%s%s poison %d clip %u",
             kw_wire_codec_name(c.a.codec), kw_wire_gran_name(c.a.granularity),
             kw_wire_scale_name(kw_wire_spec_scale(&c.a)), kw_wire_spec_asym(&c.a) ? "-asym" : "", 1u << c.a.group_log2,
             kw_wire_codec_name(c.b.codec), kw_wire_gran_name(c.b.granularity),
             kw_wire_scale_name(kw_wire_spec_scale(&c.b)), kw_wire_spec_asym(&c.b) ? "-asym" : "", 1u << c.b.group_log2,
             kw_wire_dtype_name(c.src_dtype), c.T, c.split, c.head_major ? " head-major" : "",
             c.gather ? " gather" : "", c.poison, c.clip);
    const uint32_t rows = c.gather ? c.T + 7 : c.T;
    tensor_src ks, vs;
    make_src(r, c, rows, &ks);
    wire_case clean = c;
    clean.poison = 0;
    make_src(r, c.poison ? clean : c, rows, &vs); /* the poison goes into K only: the CPU reports K first */
    std::vector<uint32_t> gather(c.T), positions(c.T);
    for (uint32_t t = 0; t < c.T; ++t)
        gather[t] = c.gather ? r.below(rows) : t;
    for (uint32_t t = 0, p = 0; t < c.T; ++t, p += 1 + (t % 3 == 0))
        positions[t] = p;

    /* the CPU section */
    const kw_wire_header hdr = one_section_header(
        4, NPOS, c.src_dtype,
        kw_wire_spec_needs_v11(&c.a) || kw_wire_spec_needs_v11(&c.b) || c.outliers ? KW_WIRE_VERSION_1_1
                                                                                   : KW_WIRE_VERSION);
    case_section cs;
    case_section_make(c, 2, ks, vs, gather, positions, &cs);
    std::vector<uint8_t> mask; /* the CPU encoder's choice of outliers, which the device encode is given */
    if (c.outliers) {
        cs.pol.outliers = c.outliers;
        mask.assign((2ull * H * c.T * D + 7) / 8, 0);
        uint32_t chosen = 0;
        const int rc = kw_wire_outlier_select(&hdr, &cs.in, &cs.pol, c.outliers, mask.data(), &chosen);
        if (rc < 0) return rc;
        assert_int_equal(chosen, c.outliers < 2 * H * c.T * D ? c.outliers : 2 * H * c.T * D);
    }
    const uint32_t n_groups = cs.n_groups;
    kw_wire_encoder *enc = nullptr;
    assert_int_equal(kw_wire_encoder_create(&hdr, nullptr, &enc), 0);
    size_t sec_cap = 0;
    assert_int_equal(kw_wire_section_size(&hdr, &cs.pol, c.T, positions.data(), &sec_cap), 0);
    std::vector<uint8_t> blob(KW_WIRE_HEADER_BYTES + sec_cap + KW_WIRE_TRAILER_BYTES);
    size_t w = 0, sec_len = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, blob.data(), blob.size(), &w), 0);
    const int cpu_rc = kw_wire_encoder_write_section(enc, &cs.in, &cs.pol, &blob[w], sec_cap, &sec_len);

    /* the device's tensor bytes, laid out as in the section */
    std::vector<uint8_t> dev_bytes(sec_cap);
    const int dev_rc = device_encode_section(c, cs, ks, vs, gather, mask, dev_bytes.data());
    if (dev_rc != cpu_rc) fail_msg("%s: encode status %d on the device, %d on the CPU", what, dev_rc, cpu_rc);
    if (cpu_rc < 0) {
        kw_wire_encoder_destroy(enc);
        return cpu_rc;
    }
    size_t wt = 0;
    assert_int_equal(kw_wire_encoder_write_trailer(enc, &blob[w + sec_len], blob.size() - w - sec_len, &wt), 0);
    blob.resize(w + sec_len + wt);
    kw_wire_encoder_destroy(enc);

    /* the device bytes are the CPU section's scales and codes */
    kw_wire_reader *rd = nullptr;
    const kw_wire_header *rh = nullptr;
    assert_int_equal(kw_wire_reader_open(blob.data(), blob.size(), nullptr, &rd, &rh), 0);
    const kw_wire_section *sec = nullptr;
    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
    assert_int_equal(sec->n_groups, n_groups);
    size_t at = 0;
    for (uint32_t g = 0; g < n_groups; ++g) {
        const kw_wire_tensor_view *tv[2] = {&sec->groups[g].k, &sec->groups[g].v};
        for (int kv = 0; kv < 2; ++kv) {
            const uint8_t *got = &dev_bytes[at];
            const size_t sb = tv[kv]->scale_bytes, zb = tv[kv]->zero_bytes;
            if ((sb && memcmp(got, tv[kv]->scales, sb) != 0) || (zb && memcmp(got + sb, tv[kv]->zeros, zb) != 0) ||
                memcmp(got + sb + zb, tv[kv]->codes, tv[kv]->code_bytes) != 0)
                fail_msg("%s: group %u %c: the device's bytes differ from the CPU encoder's", what, g, kv ? 'V' : 'K');
            at += sb + zb + tv[kv]->code_bytes;
        }
    }
    kw_wire_reader_close(rd);
    if (c.outliers) { /* the device decoder does not apply the table (kw_wire_section_dequantize does) */
        if (!c.split) check_outlier_section(c, hdr, cs, ks, vs, gather, mask, dev_bytes, &blob[w], sec_len);
        return 0;
    }

    compare_decode(blob, what);
    /* random codes (scales kept): reserved codes and every code value, on both sides */
    const size_t sec_off = KW_WIRE_HEADER_BYTES;
    const size_t body = sec_off + KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * n_groups;
    {
        kw_wire_reader *rd2 = nullptr;
        assert_int_equal(kw_wire_reader_open(blob.data(), blob.size(), nullptr, &rd2, &rh), 0);
        assert_int_equal(kw_wire_reader_next(rd2, &sec), 1);
        std::vector<std::pair<size_t, size_t>> code_spans;
        for (uint32_t g = 0; g < n_groups; ++g)
            for (const kw_wire_tensor_view *tv : {&sec->groups[g].k, &sec->groups[g].v})
                code_spans.push_back({(size_t)(tv->codes - blob.data()), (size_t)tv->code_bytes});
        kw_wire_reader_close(rd2);
        for (const auto &sp : code_spans)
            for (size_t i = 0; i < sp.second; ++i)
                blob[sp.first + i] = (uint8_t)r.next();
    }
    (void)body;
    reseal(blob, sec_off, sec_len - KW_WIRE_CHECKSUM_BYTES);
    char what2[200];
    snprintf(what2, sizeof what2, "%s, random codes", what);
    compare_decode(blob, what2);
    return 0;
}

static kw_wire_codec_spec spec_of(uint32_t codec, uint32_t gran, uint32_t scale, uint32_t glog2) {
    return kw_wire_codec_spec{(uint8_t)codec, (uint8_t)gran, (uint8_t)scale, (uint8_t)glog2};
}

static const kw_wire_codec_spec k_bf16 = {KW_WIRE_CODEC_BF16, 0, 0, 0};

/* Every quantizing codec x granularity x scale dtype, against a passthrough partner, one input dtype each (rotating).
 */
static void test_encode_every_codec(void **state) {
    (void)state;
    uint64_t seed = 100;
    uint32_t dt = 0;
    for (uint32_t codec = KW_WIRE_CODEC_INT8; codec <= KW_WIRE_CODEC_INT2; ++codec) /* v1.1's int3 and int2 too */
        for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_GROUP; ++gran)
            for (uint32_t scale = KW_WIRE_SCALE_F16; scale <= KW_WIRE_SCALE_E8M0; ++scale) {
                /* G = 4, 8, 16, 32 (int3 in 4s: the general path, test_encode_v11 covers it fully) */
                const uint32_t glog2 = gran == KW_WIRE_GRAN_GROUP ? 2 + (seed % 4) : 0;
                wire_case c = {};
                c.a = spec_of(codec, gran, scale, glog2);
                c.b = k_bf16;
                c.src_dtype = 1 + (dt++ % 3);
                c.T = 5;
                c.head_major = (int)(seed & 1);
                assert_int_equal(check_case(c, seed++), 0);
            }
}

/* Passthrough codecs from every input dtype; two groups with a row gather; mixed codecs in one section. */
static void test_encode_layouts(void **state) {
    (void)state;
    const kw_wire_codec_spec f16 = {KW_WIRE_CODEC_F16, 0, 0, 0};
    const kw_wire_codec_spec i4g = spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3);
    const kw_wire_codec_spec i6t = spec_of(KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0);
    const kw_wire_codec_spec nfh = spec_of(KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_E8M0, 0);
    const kw_wire_codec_spec e4l = spec_of(KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0);
    uint64_t seed = 900;
    for (uint32_t dt = KW_WIRE_DTYPE_BF16; dt <= KW_WIRE_DTYPE_F32; ++dt) {
        assert_int_equal(check_case(wire_case{k_bf16, f16, dt, 6, 0, 0, 0, 0, 0}, seed++), 0);
        assert_int_equal(check_case(wire_case{i4g, i6t, dt, 9, 4, 1, 1, 0, 0}, seed++), 0);
        assert_int_equal(check_case(wire_case{nfh, e4l, dt, 11, 3, 0, 1, 0, 0}, seed++), 0);
        assert_int_equal(check_case(wire_case{f16, nfh, dt, 7, 2, 1, 0, 0, 0}, seed++), 0);
    }
}

/* The outcomes of a run of check_case calls on inputs a codec may not take; every one must be reached. */
struct outcomes {
    int ok = 0, nonfinite = 0, range = 0;
    int tally(int rc) {
        ok += rc == 0;
        nonfinite += rc == KW_E_WIRE_NONFINITE;
        range += rc == KW_E_WIRE_RANGE;
        return rc;
    }
    void expect_each(int total) const {
        assert_true(ok > 0);
        assert_true(nonfinite > 0);
        assert_true(range > 0);
        assert_int_equal(ok + nonfinite + range, total);
    }
};

/* Inputs the codecs cannot take: the device reports what the CPU reports. */
static void test_encode_errors(void **state) {
    (void)state;
    const kw_wire_codec_spec f16 = {KW_WIRE_CODEC_F16, 0, 0, 0};
    const kw_wire_codec_spec i8f16 = spec_of(KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0);
    const kw_wire_codec_spec i4g = spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 2);
    const kw_wire_codec_spec e5h = spec_of(KW_WIRE_CODEC_E5M2, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_BF16, 0);
    const kw_wire_codec_spec nfl = spec_of(KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_E8M0, 0);
    uint64_t seed = 5000;
    outcomes o;
    for (int poison = 1; poison <= 4; ++poison)
        for (uint32_t dt = KW_WIRE_DTYPE_BF16; dt <= KW_WIRE_DTYPE_F32; ++dt)
            for (const kw_wire_codec_spec &s : {f16, k_bf16, i8f16, i4g, e5h, nfl}) {
                wire_case c = {s, k_bf16, dt, 6, 0, (int)(seed & 1), 0, poison, 0};
                o.tally(check_case(c, seed++));
            }
    o.expect_each(4 * 3 * 6); /* the cases above reach every outcome */
}

/* The KVWire v1.1 general path (FORMAT.md §5.8, §5.9): zero points for every integer codec at every granularity and
 * scale dtype, channel scales over runs of L = 1..16 tokens for every quantizing codec (with and without zero points),
 * and int3 in groups of 4, in one- and two-group sections with odd group lengths (a short last run), strided views
 * and a row gather; the inputs hold zero rows, constant rows (s = 0), rows whose minimum is -0 or maximum +0, and
 * columns of one zero or one constant down all tokens. Bytes, statuses and decoded values equal the CPU's. */
static void test_encode_v11(void **state) {
    (void)state;
    uint64_t seed = 7000;
    uint32_t dt = 0, n = 0;
    const uint32_t Ts[] = {7, 9, 13, 5};
    for (uint32_t codec = KW_WIRE_CODEC_INT8; codec <= KW_WIRE_CODEC_INT2; ++codec)
        for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_CHANNEL; ++gran)
            for (uint32_t zp = 0; zp < 2; ++zp)
                for (uint32_t scale = KW_WIRE_SCALE_F16; scale <= KW_WIRE_SCALE_E8M0; ++scale) {
                    if (zp && (!kw_wire_codec_is_int(codec) || scale == KW_WIRE_SCALE_E8M0)) continue;
                    const int int3_g4 = codec == KW_WIRE_CODEC_INT3 && gran == KW_WIRE_GRAN_GROUP;
                    if (!zp && gran != KW_WIRE_GRAN_CHANNEL && !int3_g4) continue; /* v1 paths: other tests */
                    const uint32_t glog2 = gran == KW_WIRE_GRAN_CHANNEL ? (uint32_t)(seed % 5)
                                           : gran == KW_WIRE_GRAN_GROUP ? (int3_g4 ? 2u : 2 + (uint32_t)(seed % 4))
                                                                        : 0u;
                    wire_case c = {};
                    c.a = spec_of(codec, gran, scale | (zp ? KW_WIRE_SCALE_ZERO_POINTS : 0u), glog2);
                    c.b = (seed % 3) == 0 ? spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL,
                                                    KW_WIRE_SCALE_BF16 | KW_WIRE_SCALE_ZERO_POINTS, 1)
                                          : k_bf16;
                    c.src_dtype = 1 + (dt++ % 3);
                    c.T = Ts[seed % 4];
                    c.split = (seed % 4) == 1 ? 4 : 0;
                    c.head_major = (int)(seed & 1);
                    c.gather = (int)((seed >> 1) & 1);
                    c.columns = (int)((seed >> 2) & 1) || gran == KW_WIRE_GRAN_CHANNEL;
                    assert_int_equal(check_case(c, seed++), 0);
                    ++n;
                }
    assert_int_equal(n, 5 * 5 * 3 + 8 * 4 + 4); /* zero points; symmetric channel scales; symmetric int3 in 4s */
}

/* Inputs the v1.1 general path cannot take (NaN, Inf, a range a zero point or scale cannot hold, values below a
 * scale dtype): the device reports the CPU's status, also when the failure is in a later row or unit of a block than
 * a NaN (the CPU checks a block's rows before its scales). */
static void test_encode_v11_errors(void **state) {
    (void)state;
    const kw_wire_codec_spec specs[] = {
        spec_of(KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0),
        spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_BF16 | KW_WIRE_SCALE_ZERO_POINTS, 2),
        spec_of(KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0),
        spec_of(KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS, 0),
        spec_of(KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 2),
        spec_of(KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_E8M0, 1),
        spec_of(KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 2),
    };
    uint64_t seed = 9000;
    outcomes o;
    for (int poison = 1; poison <= 5; ++poison)
        for (uint32_t dt = KW_WIRE_DTYPE_BF16; dt <= KW_WIRE_DTYPE_F32; ++dt)
            for (const kw_wire_codec_spec &s : specs) {
                wire_case c = {s, k_bf16, dt, 7, 0, (int)(seed & 1), 0, poison, 1};
                const int rc = o.tally(check_case(c, seed++));
                if (poison == 5) assert_int_equal(rc, KW_E_WIRE_NONFINITE); /* the row's NaN before any scale */
            }
    o.expect_each(5 * 3 * 7);
}

/* Each spec is refused with status before anything runs, and its size is 0. */
static void expect_refused(const kw_cuda_wire_spec *refused, size_t n, int status) {
    dev_buf<uint8_t> data(2 * 4 * 16 * 2), dst(4096), work(4096);
    dev_buf<unsigned long long> err(1);
    const kw_cuda_wire_src src = {data.p, KW_WIRE_DTYPE_BF16, 4 * 16, 16, nullptr, 0, nullptr, 0, 0};
    for (size_t i = 0; i < n; ++i) {
        assert_int_equal(kw_cuda_wire_tensor_bytes(&refused[i], 2, 4, 16), 0);
        assert_int_equal(kw_cuda_wire_encode_tensor(nullptr, &refused[i], &src, 2, 4, 16, dst.p, work.p, err.p),
                         status);
    }
}

/* Specs the format forbids are refused before anything runs, as the CPU refuses them (KW_E_INVALID_ARG here), and
 * the size functions report 0. */
/* Clipped scales (FORMAT.md §5.13): every integer codec at every granularity, symmetric and with zero points, every
 * scale dtype the codec takes, K, V or both clipped, one- and two-group sections, gathers, outliers; the inputs hold
 * tails (a spike per row) so that narrower candidates win, constant and zero rows, rounding ties. The device's bytes
 * are the CPU encoder's with that policy, and so is the status of inputs the search must leave alone (a NaN). */
static void test_encode_clip(void **state) {
    (void)state;
    uint64_t seed = 21000;
    uint32_t n = 0;
    for (uint32_t codec = KW_WIRE_CODEC_INT8; codec <= KW_WIRE_CODEC_INT2; ++codec)
        for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_CHANNEL; ++gran)
            for (uint32_t zp = 0; zp < 2; ++zp) {
                if (!kw_wire_codec_is_int(codec)) continue;
                const uint32_t scales[] = {KW_WIRE_SCALE_F16, KW_WIRE_SCALE_BF16, KW_WIRE_SCALE_F32,
                                           (uint32_t)(zp ? KW_WIRE_SCALE_F16 : KW_WIRE_SCALE_E8M0),
                                           (uint32_t)(zp ? KW_WIRE_SCALE_BF16 : KW_WIRE_SCALE_LOG8)};
                const uint32_t glog2 = gran == KW_WIRE_GRAN_CHANNEL ? (uint32_t)(seed % 4)
                                       : gran == KW_WIRE_GRAN_GROUP ? 2 + (uint32_t)(seed % 3)
                                                                    : 0u;
                wire_case c = {};
                c.a = spec_of(codec, gran, scales[seed % 5] | (zp ? KW_WIRE_SCALE_ZERO_POINTS : 0u), glog2);
                c.b = (seed % 3) == 0   ? spec_of(KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_GROUP,
                                                  KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 3)
                      : (seed % 3) == 1 ? spec_of(KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0)
                                        : k_bf16;
                c.src_dtype = 1 + (uint32_t)(seed % 3);
                c.T = 3 + (uint32_t)(seed % 11);
                c.split = (seed % 4) == 1 ? 2 : 0;
                c.head_major = (int)(seed & 1);
                c.gather = (int)((seed >> 1) & 1);
                c.columns = (int)((seed >> 2) & 1);
                c.clip = (uint8_t)(1 + seed % 3);
                c.outliers = (seed % 5) == 2 ? 1 + (uint32_t)(seed % 30) : 0;
                c.tails = 1;
                assert_int_equal(check_case(c, seed++), 0);
                ++n;
            }
    assert_int_equal(n, 5 * 5 * 2);
    /* a NaN in a clipped tensor: the CPU's status, the search skipped */
    wire_case c = {};
    c.a = spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3);
    c.b = k_bf16;
    c.src_dtype = KW_WIRE_DTYPE_F32;
    c.T = 6;
    c.poison = 1;
    c.clip = 1;
    assert_int_equal(check_case(c, seed++), KW_E_WIRE_NONFINITE);
}

static void test_encode_refuses_bad_specs(void **state) {
    (void)state;
    const kw_cuda_wire_spec refused[] = {
        {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0, 0,
         0}, /* not integer */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0 | KW_WIRE_SCALE_ZERO_POINTS, 0, 0,
         0},                                                                          /* e8m0 zero */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | 0x10u, 0, 0, 0}, /* reserved bit */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, KW_WIRE_MAX_RUN_LOG2 + 1, 0,
         0},                                                                         /* run too long */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL + 1, KW_WIRE_SCALE_F16, 0, 0, 0},  /* no such gran */
        {KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_NONE, KW_WIRE_SCALE_ZERO_POINTS, 0, 0, 0}, /* passthrough with a zero point */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_LOG8 | KW_WIRE_SCALE_ZERO_POINTS, 0, 0,
         0},                                                                  /* log8 zero */
        {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_LOG8, 0, 0, 0}, /* log8 float */
    };
    expect_refused(refused, sizeof refused / sizeof refused[0], KW_E_INVALID_ARG);
}

/* log8 scales (FORMAT.md §5.4): every symmetric integer codec at every granularity (group sizes and channel runs
 * rotating; int3 in 4s on the general path), one- and two-group sections, the receiver cache's layout (int8 keys per
 * channel run, values per group) among them; then the inputs no log8 byte holds (a huge value: above 2^15.875 qmax)
 * or a NaN, reported as the CPU reports them. log8 with zero points or a float codec is refused as the format
 * refuses it (test_encode_refuses_bad_specs). */
static void test_encode_log8(void **state) {
    (void)state;
    uint64_t seed = 11000;
    uint32_t dt = 0, n = 0;
    for (uint32_t codec = KW_WIRE_CODEC_INT8; codec <= KW_WIRE_CODEC_INT2; ++codec) {
        if (!kw_wire_codec_is_int(codec)) continue;
        for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_CHANNEL; ++gran) {
            const uint32_t glog2 = gran == KW_WIRE_GRAN_CHANNEL ? (uint32_t)(seed % 5)
                                   : gran == KW_WIRE_GRAN_GROUP ? 2 + (uint32_t)(seed % 4)
                                                                : 0u;
            wire_case c = {};
            c.a = spec_of(codec, gran, KW_WIRE_SCALE_LOG8, glog2);
            c.b = (seed % 3) == 0 ? spec_of(KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_LOG8, 3) : k_bf16;
            c.src_dtype = 1 + (dt++ % 3);
            c.T = 5 + (uint32_t)(seed % 9);
            c.split = (seed % 4) == 1 ? 3 : 0;
            c.head_major = (int)(seed & 1);
            c.gather = (int)((seed >> 1) & 1);
            c.columns = gran == KW_WIRE_GRAN_CHANNEL;
            assert_int_equal(check_case(c, seed++), 0);
            ++n;
        }
    }
    assert_int_equal(n, 5 * 5);
    outcomes o;
    for (int poison = 1; poison <= 4; ++poison)
        for (uint32_t dt2 = KW_WIRE_DTYPE_BF16; dt2 <= KW_WIRE_DTYPE_F32; ++dt2)
            for (uint32_t gran : {(uint32_t)KW_WIRE_GRAN_TOKEN, (uint32_t)KW_WIRE_GRAN_CHANNEL}) {
                const int channel = gran == KW_WIRE_GRAN_CHANNEL;
                wire_case c = {spec_of(KW_WIRE_CODEC_INT4, gran, KW_WIRE_SCALE_LOG8, (uint32_t)channel),
                               k_bf16,
                               dt2,
                               7,
                               0,
                               (int)(seed & 1),
                               0,
                               poison,
                               channel};
                o.tally(check_case(c, seed++));
            }
    o.expect_each(4 * 3 * 2);
}

/* Sections with outliers (FORMAT.md §5.10): given the CPU's choice (kw_cuda_wire_src.d_mask), the device's tensors
 * are the CPU encoder's, whose general path leaves the outliers out of every scale and gives them the code of +0:
 * every granularity, symmetric and with zero points, integer and float codecs, a passthrough partner, one and two
 * token groups, gathers, counts from one element to all of them. */
static void test_encode_outliers(void **state) {
    (void)state;
    uint64_t seed = 15000;
    uint32_t n = 0;
    const uint32_t codecs[] = {KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_NF4,
                               KW_WIRE_CODEC_E4M3, KW_WIRE_CODEC_INT3, KW_WIRE_CODEC_INT2};
    for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_CHANNEL; ++gran)
        for (uint32_t codec : codecs)
            for (uint32_t zp = 0; zp < 2; ++zp) {
                if (zp && !kw_wire_codec_is_int(codec)) continue;
                const uint32_t glog2 = gran == KW_WIRE_GRAN_CHANNEL ? (uint32_t)(seed % 4)
                                       : gran == KW_WIRE_GRAN_GROUP ? 2 + (uint32_t)(seed % 3)
                                                                    : 0u;
                const uint32_t scale =
                    (seed % 2 ? KW_WIRE_SCALE_F16 : KW_WIRE_SCALE_BF16) | (zp ? KW_WIRE_SCALE_ZERO_POINTS : 0u);
                wire_case c = {};
                c.a = spec_of(codec, gran, scale, glog2);
                c.b = (seed % 3) == 0 ? k_bf16 : spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0);
                c.src_dtype = 1 + (uint32_t)(seed % 3);
                c.T = 4 + (uint32_t)(seed % 9);
                c.split = (seed % 4) == 1 ? 2 : 0;
                c.head_major = (int)(seed & 1);
                c.gather = (int)((seed >> 1) & 1);
                c.columns = (int)((seed >> 2) & 1);
                const uint32_t all = 2 * H * c.T * D;
                const uint32_t counts[] = {1u, 3u + (uint32_t)(seed % 40), all / 4, all};
                c.outliers = counts[seed % 4];
                assert_int_equal(check_case(c, seed++), 0);
                ++n;
            }
    assert_int_equal(n, 5 * (6 + 4));
}

/* The outlier table's choice (kw_cuda_wire_outlier_select) against kw_wire_outlier_select, element for element: every
 * granularity, with and without zero points, a passthrough partner, each input dtype, layouts and gathers, counts
 * from one element to all of them; the inputs' spikes, zero and constant rows give large, tied and zero scores. A NaN
 * is reported as the CPU reports it. */
static void check_outliers(const wire_case &c, uint32_t count, uint64_t seed) {
    rng r{seed};
    const uint32_t rows = c.gather ? c.T + 7 : c.T;
    tensor_src ks, vs;
    make_src(r, c, rows, &ks);
    wire_case clean = c;
    clean.poison = 0;
    make_src(r, clean, rows, &vs);
    for (int i = 0; i < 3 && !c.poison; ++i) /* spikes: far outside their scale's spread */
        ks.values[r.below((uint32_t)ks.values.size())] *= 300.0f,
            vs.values[r.below((uint32_t)vs.values.size())] *= -80.0f;
    set_bytes(c.src_dtype, &ks); /* the spiked values' bytes */
    set_bytes(c.src_dtype, &vs);
    std::vector<uint32_t> gather(c.T);
    for (uint32_t t = 0; t < c.T; ++t)
        gather[t] = c.gather ? r.below(rows) : t;
    /* the CPU's choice */
    kw_wire_header hdr = {};
    hdr.n_layers = 1;
    hdr.n_sections = 1;
    hdr.n_kv_heads = H;
    hdr.head_dim = D;
    hdr.n_positions = NPOS;
    hdr.src_dtype = c.src_dtype;
    hdr.version = KW_WIRE_VERSION_1_1;
    kw_wire_layer_in in = {};
    in.n_tokens = c.T;
    in.k = {ks.bytes.data(), ks.head_stride, ks.token_stride, c.gather ? gather.data() : nullptr};
    in.v = {vs.bytes.data(), vs.head_stride, vs.token_stride, c.gather ? gather.data() : nullptr};
    kw_wire_policy pol = {};
    pol.k = c.a;
    pol.v = c.b;
    const uint64_t elems = 2ull * H * c.T * D;
    std::vector<uint8_t> mask((elems + 7) / 8);
    uint32_t n_cpu = 0;
    const int rc_cpu = kw_wire_outlier_select(&hdr, &in, &pol, count, mask.data(), &n_cpu);
    /* the device's */
    const kw_cuda_wire_spec sk = dev_spec(c.a), sv = dev_spec(c.b);
    dev_buf<uint8_t> dks(ks.bytes.data(), ks.bytes.size()), dvs(vs.bytes.data(), vs.bytes.size());
    dev_buf<uint32_t> drows(gather.data(), gather.size()), out(count ? count : 1), n_dev(1);
    dev_buf<uint8_t> work(kw_cuda_wire_outlier_work_bytes(&sk, &sv, H, c.T, D));
    dev_buf<unsigned int> bad(1);
    const kw_cuda_wire_src srck = {
        dks.p, c.src_dtype, ks.head_stride, ks.token_stride, c.gather ? drows.p : nullptr, 0, nullptr, 0, 0};
    const kw_cuda_wire_src srcv = {
        dvs.p, c.src_dtype, vs.head_stride, vs.token_stride, c.gather ? drows.p : nullptr, 0, nullptr, 0, 0};
    assert_true(work.n > 0);
    assert_int_equal(
        kw_cuda_wire_outlier_select(nullptr, &sk, &sv, &srck, &srcv, H, c.T, D, count, work.p, out.p, n_dev.p, bad.p),
        0);
    CK(cudaDeviceSynchronize());
    if (rc_cpu < 0) {
        assert_int_equal(rc_cpu, KW_E_WIRE_NONFINITE);
        assert_int_not_equal(bad.get()[0], 0);
        return;
    }
    assert_int_equal(bad.get()[0], 0);
    const std::vector<uint32_t> got = out.get();
    assert_int_equal(n_dev.get()[0], n_cpu);
    std::vector<uint8_t> dmask((elems + 7) / 8, 0);
    for (uint32_t i = 0; i < n_cpu; ++i) {
        assert_true(got[i] < elems);
        assert_true(i == 0 || got[i] > got[i - 1]);
        dmask[got[i] / 8] |= (uint8_t)(1u << (got[i] % 8));
    }
    for (size_t i = 0; i < mask.size(); ++i)
        if (mask[i] != dmask[i])
            fail_msg("outliers, K %u/%u/%u/%u V %u/%u/%u/%u T %u count %u: mask byte %zu is %02x on the device, %02x "
                     "on the CPU",
                     c.a.codec, c.a.granularity, c.a.scale_dtype, c.a.group_log2, c.b.codec, c.b.granularity,
                     c.b.scale_dtype, c.b.group_log2, c.T, count, i, dmask[i], mask[i]);
}

static void test_outlier_select(void **state) {
    (void)state;
    uint64_t seed = 13000;
    uint32_t n = 0;
    for (uint32_t gran = KW_WIRE_GRAN_LAYER; gran <= KW_WIRE_GRAN_CHANNEL; ++gran)
        for (uint32_t zp = 0; zp < 2; ++zp)
            for (uint32_t dt = KW_WIRE_DTYPE_BF16; dt <= KW_WIRE_DTYPE_F32; ++dt) {
                const uint32_t glog2 = gran == KW_WIRE_GRAN_CHANNEL ? (uint32_t)(seed % 4)
                                       : gran == KW_WIRE_GRAN_GROUP ? 2 + (uint32_t)(seed % 3)
                                                                    : 0u;
                const uint32_t scale = KW_WIRE_SCALE_F16 | (zp ? KW_WIRE_SCALE_ZERO_POINTS : 0u);
                wire_case c = {};
                c.a = spec_of(zp ? KW_WIRE_CODEC_INT4 : KW_WIRE_CODEC_INT8, gran, scale, glog2);
                c.b = (seed % 3) == 0 ? k_bf16 : spec_of(KW_WIRE_CODEC_INT2, gran, scale, glog2);
                c.src_dtype = dt;
                c.T = 3 + (uint32_t)(seed % 11);
                c.head_major = (int)(seed & 1);
                c.gather = (int)((seed >> 1) & 1);
                c.columns = (int)((seed >> 2) & 1);
                const uint32_t all = 2 * H * c.T * D;
                for (uint32_t count : {1u, 7u, all / 50 + 1, all / 3, all, all + 5})
                    check_outliers(c, count, seed++), ++n;
            }
    assert_int_equal(n, 5 * 2 * 3 * 6);
    wire_case nan = {};
    nan.a = spec_of(KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0);
    nan.b = nan.a;
    nan.src_dtype = KW_WIRE_DTYPE_F32;
    nan.T = 4;
    nan.poison = 1;
    check_outliers(nan, 5, seed);
}

/* A whole blob: the CPU encoder's, and the same blob with every tensor encoded on the device (begin_section, the
 * device's bytes copied into the section in pinned host memory, finish_section); zstd on for some sections. */
/* The receiver's last steps: kw_cuda_wire_unrotate equals kw_wire_rotate_rows (inverse) bit for bit for every head_dim
 * 2..1024 (one block per row: the larger ones spread each butterfly stage over the block, with barriers between
 * stages), rows at a token offset t0 of a padded view, its flag left clear; rows whose butterflies add up past f32
 * (the CPU decoder's KW_E_WIRE_VALUE) set the flag, rows just within it do not; kw_cuda_wire_outliers_apply writes
 * exactly the listed elements of K and V (f32, and rounded into bf16), nothing else. */
static void test_decode_rotate_outliers(void **state) {
    (void)state;
    rng r{20251206};
    for (uint32_t Dr = 2; Dr <= 1024; Dr <<= 1) {
        const uint32_t Hh = 3, T = Dr >= 512 ? 2 : 5, t0 = 1, pad = 8;
        const size_t ts = (size_t)Hh * (Dr + pad), n = (size_t)(t0 + T) * ts;
        std::vector<float> x(n);
        for (float &v : x)
            v = r.uniform() * 8.0f;
        std::vector<float> want = x;
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t h = 0; h < Hh; ++h)
                assert_int_equal(
                    kw_wire_rotate_rows(want.data() + (t0 + t) * ts + (size_t)h * (Dr + pad), 1, Dr, Dr, 1), 0);
        dev_buf<float> d(x.data(), n);
        const unsigned int zero = 0;
        dev_buf<unsigned int> flag(&zero, 1);
        const kw_cuda_wire_dst dst = {d.p, 3u, (size_t)(Dr + pad), ts, t0};
        assert_int_equal(kw_cuda_wire_unrotate(nullptr, Hh, T, Dr, &dst, flag.p), 0);
        const std::vector<float> got = d.get();
        for (size_t i = 0; i < n; ++i)
            if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                fail_msg("unrotate Dr %u: value %zu: device %.9g, CPU %.9g", Dr, i, got[i], want[i]);
        assert_int_equal(flag.get()[0], 0);
    }
    for (int big = 0; big < 2; ++big) { /* D 16: y = M everywhere sums to 16 M before the factor 2^-2 */
        const uint32_t Dr = 16;
        std::vector<float> x(Dr, big ? 1e38f : 2e37f);
        dev_buf<float> d(x.data(), Dr);
        const unsigned int zero = 0;
        dev_buf<unsigned int> flag(&zero, 1);
        const kw_cuda_wire_dst dst = {d.p, 3u, Dr, Dr, 0};
        assert_int_equal(kw_cuda_wire_unrotate(nullptr, 1, 1, Dr, &dst, flag.p), 0);
        assert_int_equal(flag.get()[0] != 0, big);
    }
    /* the sharer's side: kw_cuda_wire_rotate_gather from a bf16 (H, cap, D) cache through a row gather equals the
     * rows widened and rotated forward by kw_wire_rotate_rows; rotate 0 the widened rows */
    for (uint32_t Dr = 2; Dr <= 1024; Dr <<= 1) {
        const uint32_t Hh = 2, cap = 9, T = 4;
        const uint32_t gather[T] = {7, 2, 3, 8};
        std::vector<uint16_t> c((size_t)Hh * cap * Dr);
        for (uint16_t &v : c)
            v = kw_f32_to_bf16(r.uniform() * 4.0f);
        dev_buf<uint16_t> dc(c.data(), c.size());
        dev_buf<uint32_t> dg(gather, T);
        dev_buf<float> out((size_t)Hh * T * Dr);
        kw_cuda_wire_src src{};
        src.d_data = dc.p, src.dtype = 1u, src.head_stride = (size_t)cap * Dr, src.token_stride = Dr;
        src.d_rows = dg.p;
        for (int rot = 0; rot < 2; ++rot) {
            std::vector<float> want((size_t)Hh * T * Dr);
            for (uint32_t h = 0; h < Hh; ++h)
                for (uint32_t t = 0; t < T; ++t) {
                    float *w = want.data() + ((size_t)h * T + t) * Dr;
                    for (uint32_t d = 0; d < Dr; ++d)
                        w[d] = kw_bf16_to_f32(c[((size_t)h * cap + gather[t]) * Dr + d]);
                    if (rot) assert_int_equal(kw_wire_rotate_rows(w, 1, Dr, Dr, 0), 0);
                }
            assert_int_equal(kw_cuda_wire_rotate_gather(nullptr, &src, Hh, T, Dr, rot, out.p), 0);
            const std::vector<float> got = out.get();
            for (size_t i = 0; i < want.size(); ++i)
                if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
                    fail_msg("rotate_gather D %u rotate %d: value %zu: device %.9g, CPU %.9g", Dr, rot, i, got[i],
                             want[i]);
        }
    }
    const kw_cuda_wire_dst bad = {nullptr, 3u, 12, 12, 0};
    unsigned int *no_flag = nullptr;
    assert_int_equal(kw_cuda_wire_unrotate(nullptr, 1, 1, 12, &bad, no_flag), KW_E_INVALID_ARG);

    const uint32_t Hh = 2, T = 7, Dd = 16, nh = Hh * T * Dd;
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        const size_t es = bf16 ? 2 : 4, n = (size_t)nh * es;
        std::vector<uint8_t> k0(n), v0(n);
        for (size_t i = 0; i < n; ++i)
            k0[i] = (uint8_t)r.next(), v0[i] = (uint8_t)r.next();
        std::vector<uint32_t> elems{2 * nh + 3}; /* past the section: skipped */
        std::vector<float> vals{1.0f};
        for (uint32_t e = r.below(5); e < 2 * nh; e += 1 + r.below(9)) {
            elems.push_back(e);
            vals.push_back(r.uniform() * 1000.0f);
        }
        std::vector<uint8_t> kw = k0, vw = v0;
        for (size_t i = 1; i < elems.size(); ++i) {
            const uint32_t e = elems[i] % nh, d = e % Dd, t = e / Dd % T, h = e / Dd / T;
            uint8_t *o = (elems[i] < nh ? kw.data() : vw.data()) + ((size_t)t * Hh * Dd + (size_t)h * Dd + d) * es;
            if (bf16) {
                const uint16_t b = kw_f32_to_bf16(vals[i]);
                memcpy(o, &b, 2);
            } else {
                memcpy(o, &vals[i], 4);
            }
        }
        dev_buf<uint8_t> dk(k0.data(), n), dv(v0.data(), n);
        dev_buf<uint32_t> de(elems.data(), elems.size());
        dev_buf<float> dvals(vals.data(), vals.size());
        const uint32_t dt = bf16 ? 1u : 3u;
        const kw_cuda_wire_dst ok = {dk.p, dt, Dd, (size_t)Hh * Dd, 0}, ov = {dv.p, dt, Dd, (size_t)Hh * Dd, 0};
        assert_int_equal(
            kw_cuda_wire_outliers_apply(nullptr, de.p, dvals.p, (uint32_t)elems.size(), Hh, T, Dd, &ok, &ov), 0);
        assert_memory_equal(dk.get().data(), kw.data(), n);
        assert_memory_equal(dv.get().data(), vw.data(), n);
    }
}

/* The rotated tensors' limit (FORMAT.md §5.12, kw_wire_rotated_max): rows the sharer rotated on the device
 * (kw_cuda_wire_spec.rotated) with a unit past the limit are refused with the CPU encoder's status (the CPU given the
 * same rows unrotated, rotating them itself), and at the limit the device writes the CPU's bytes. The rotated rows
 * are small integers and one row of A in every channel, so the CPU's forward rotation of their inverse gives them
 * back exactly. Units: per token, groups, head, layer, zero points, channel runs, clipped scales, e8m0 and int2. */
static void test_encode_rotated_range(void **state) {
    (void)state;
    const uint32_t T = 5;
    const float rmax = kw_wire_rotated_max(D);
    const struct {
        kw_wire_codec_spec s;
        uint8_t clip;
    } cases[] = {
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}, 0},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F32, 3}, 0},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F32, 0}, 0},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0}, 0},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS, 0}, 0},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F32, 1}, 0},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}, 3},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS, 0}, 3},
        {{KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0}, 0},
        {{KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}, 0},
    };
    rng r{0x70ad};
    for (const auto &c : cases)
        for (int past = 0; past < 2; ++past)
            for (int big_v = 0; big_v < 2; ++big_v) {
                /* (t, h, d) rows of K and V in the rotated domain; row (t 2, h 1) of K or V all A */
                const float A = past ? 0x1p122f : rmax;
                std::vector<float> y[2], x[2];
                for (int kv = 0; kv < 2; ++kv) {
                    y[kv].resize((size_t)T * H * D);
                    for (float &v : y[kv])
                        v = (float)((int)r.below(17) - 8);
                    if (kv == big_v)
                        for (uint32_t d = 0; d < D; ++d)
                            y[kv][((size_t)2 * H + 1) * D + d] = A;
                    x[kv] = y[kv];
                    assert_int_equal(kw_wire_rotate_rows(x[kv].data(), (size_t)T * H, D, D, 1), 0);
                }
                const kw_wire_header hdr = one_section_header(1, T, KW_WIRE_DTYPE_F32, KW_WIRE_VERSION_1_1);
                kw_wire_policy pol = {};
                pol.k = pol.v = c.s;
                pol.rotate = 3;
                pol.clip = c.clip;
                kw_wire_layer_in in = {};
                in.n_tokens = T;
                in.k = {x[0].data(), D, (size_t)H * D, nullptr};
                in.v = {x[1].data(), D, (size_t)H * D, nullptr};
                kw_wire_encoder *enc = nullptr;
                assert_int_equal(kw_wire_encoder_create(&hdr, nullptr, &enc), 0);
                size_t cap = 0, w = 0, sec_len = 0, wt = 0;
                assert_int_equal(kw_wire_section_size(&hdr, &pol, T, nullptr, &cap), 0);
                std::vector<uint8_t> blob(KW_WIRE_HEADER_BYTES + cap + KW_WIRE_TRAILER_BYTES);
                assert_int_equal(kw_wire_encoder_write_header(enc, blob.data(), blob.size(), &w), 0);
                const int cpu_rc = kw_wire_encoder_write_section(enc, &in, &pol, &blob[w], cap, &sec_len);
                if (cpu_rc == 0)
                    assert_int_equal(kw_wire_encoder_write_trailer(enc, &blob[w + sec_len], KW_WIRE_TRAILER_BYTES, &wt),
                                     0);
                kw_wire_encoder_destroy(enc);
                int dev_rc = 0;
                std::vector<uint8_t> dev_bytes;
                for (int kv = 0; kv < 2 && dev_rc == 0; ++kv) {
                    kw_cuda_wire_spec ds = dev_spec(c.s);
                    ds.clip = (uint8_t)((c.clip >> kv) & 1u);
                    ds.rotated = 1;
                    const uint64_t bytes = kw_cuda_wire_tensor_bytes(&ds, H, T, D);
                    dev_buf<float> dy(y[kv].data(), y[kv].size());
                    dev_buf<uint8_t> dst(bytes), work(kw_cuda_wire_work_bytes(&ds, H, T, D));
                    dev_buf<unsigned long long> err(1);
                    kw_cuda_wire_src src{};
                    src.d_data = dy.p, src.dtype = KW_WIRE_DTYPE_F32, src.head_stride = D, src.token_stride = H * D;
                    assert_int_equal(kw_cuda_wire_encode_tensor(nullptr, &ds, &src, H, T, D, dst.p, work.p, err.p), 0);
                    dev_rc = kw_cuda_wire_encode_status(err.get()[0]);
                    const std::vector<uint8_t> got = dst.get();
                    dev_bytes.insert(dev_bytes.end(), got.begin(), got.end());
                }
                if (dev_rc != cpu_rc || cpu_rc != (past ? KW_E_WIRE_RANGE : 0))
                    fail_msg("%s/%s clip %u, A %s in %c: device %s, CPU %s", kw_wire_codec_name(c.s.codec),
                             kw_wire_gran_name(c.s.granularity), c.clip, past ? "2^122" : "at the limit",
                             big_v ? 'V' : 'K', kw_status_name(dev_rc), kw_status_name(cpu_rc));
                if (cpu_rc == 0) { /* the tensors' bytes are the section body's, K then V */
                    kw_wire_reader *rd = nullptr;
                    const kw_wire_header *rh = nullptr;
                    const kw_wire_section *sec = nullptr;
                    assert_int_equal(kw_wire_reader_open(blob.data(), w + sec_len + wt, nullptr, &rd, &rh), 0);
                    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
                    const uint8_t *body = sec->groups[0].k.scales;
                    if (memcmp(body, dev_bytes.data(), dev_bytes.size()) != 0)
                        fail_msg("%s/%s clip %u at the limit: the device's bytes differ from the CPU's",
                                 kw_wire_codec_name(c.s.codec), kw_wire_gran_name(c.s.granularity), c.clip);
                    kw_wire_reader_close(rd);
                }
            }
}

static void test_blob_byte_identical(void **state) {
    (void)state;
    const kw_wire_codec_spec i4g = spec_of(KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3);
    const kw_wire_codec_spec i8t = spec_of(KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0);
    const kw_wire_codec_spec e5h = spec_of(KW_WIRE_CODEC_E5M2, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_E8M0, 0);
    const wire_case layers[] = {
        {i4g, i8t, KW_WIRE_DTYPE_BF16, 9, 0, 0, 0, 0, 0},
        {e5h, k_bf16, KW_WIRE_DTYPE_BF16, 12, 5, 1, 1, 0, 0},
        {i8t, i4g, KW_WIRE_DTYPE_BF16, 10, 0, 0, 1, 0, 0},
    };
    const uint32_t n_layers = sizeof layers / sizeof layers[0];
    rng r{77};
    kw_wire_header hdr = {};
    hdr.n_layers = 8;
    hdr.n_sections = (uint16_t)n_layers;
    hdr.n_kv_heads = H;
    hdr.head_dim = D;
    hdr.n_positions = NPOS;
    hdr.src_dtype = KW_WIRE_DTYPE_BF16;
    hdr.model_id = 0x1234;
    kw_wire_encoder *cpu = nullptr, *gpu = nullptr;
    assert_int_equal(kw_wire_encoder_create(&hdr, nullptr, &cpu), 0);
    assert_int_equal(kw_wire_encoder_create(&hdr, nullptr, &gpu), 0);
    const size_t cap = 1 << 16;
    std::vector<uint8_t> cpu_blob(cap);
    uint8_t *gpu_blob = nullptr; /* pinned: the device's bytes land in the blob directly */
    CK(cudaMallocHost((void **)&gpu_blob, cap));
    size_t cpu_len = 0, gpu_len = 0, w = 0;
    assert_int_equal(kw_wire_encoder_write_header(cpu, cpu_blob.data(), cap, &w), 0);
    cpu_len += w;
    assert_int_equal(kw_wire_encoder_write_header(gpu, gpu_blob, cap, &w), 0);
    gpu_len += w;
    for (uint32_t l = 0; l < n_layers; ++l) {
        const wire_case &c = layers[l];
        const uint32_t rows = c.gather ? c.T + 7 : c.T;
        tensor_src ks, vs;
        make_src(r, c, rows, &ks);
        make_src(r, c, rows, &vs);
        std::vector<uint32_t> gather(c.T), positions(c.T);
        for (uint32_t t = 0; t < c.T; ++t) {
            gather[t] = c.gather ? r.below(rows) : t;
            positions[t] = 2 * t + l;
        }
        case_section cs;
        case_section_make(c, 2 * l + 1, ks, vs, gather, positions, &cs);
        cs.pol.zstd_level = l == 1 ? 3 : 0;
        assert_int_equal(kw_wire_encoder_write_section(cpu, &cs.in, &cs.pol, &cpu_blob[cpu_len], cap - cpu_len, &w), 0);
        cpu_len += w;
        size_t at = 0;
        assert_int_equal(kw_wire_encoder_begin_section(gpu, cs.in.layer, c.T, positions.data(), &cs.pol,
                                                       gpu_blob + gpu_len, cap - gpu_len, &at),
                         0);
        assert_int_equal(device_encode_section(c, cs, ks, vs, gather, {}, gpu_blob + gpu_len + at), 0);
        assert_int_equal(kw_wire_encoder_finish_section(gpu, &w), 0);
        gpu_len += w;
    }
    assert_int_equal(kw_wire_encoder_write_trailer(cpu, &cpu_blob[cpu_len], cap - cpu_len, &w), 0);
    cpu_len += w;
    assert_int_equal(kw_wire_encoder_write_trailer(gpu, gpu_blob + gpu_len, cap - gpu_len, &w), 0);
    gpu_len += w;
    assert_int_equal(gpu_len, cpu_len);
    assert_memory_equal(gpu_blob, cpu_blob.data(), cpu_len);
    assert_true(kw_wire_encoder_breakdown(gpu)->compressed_sections == 1); /* the zstd path was taken */
    kw_wire_encoder_destroy(cpu);
    kw_wire_encoder_destroy(gpu);
    CK(cudaFreeHost(gpu_blob));
}

int main(void) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select),
        cmocka_unit_test(test_encode_every_codec),
        cmocka_unit_test(test_encode_layouts),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_encode_v11),
        cmocka_unit_test(test_encode_v11_errors),
        cmocka_unit_test(test_encode_refuses_bad_specs),
        cmocka_unit_test(test_encode_clip),
        cmocka_unit_test(test_encode_log8),
        cmocka_unit_test(test_outlier_select),
        cmocka_unit_test(test_encode_outliers),
        cmocka_unit_test(test_blob_byte_identical),
        cmocka_unit_test(test_decode_rotate_outliers),
        cmocka_unit_test(test_encode_rotated_range),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
