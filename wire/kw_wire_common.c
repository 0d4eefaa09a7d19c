/* kw_wire_common.c: what the KVWire encoder and decoder share: magic values, names, ISA choice, the XXH3 wrapper,
 * codec-spec validation, size arithmetic and the token-position encodings (FORMAT.md §6). It holds no state. */
#include "wire/kw_wire_internal.h"

#include <stdatomic.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_isa.h"

/* xxHash compiled into this file (static, inline): the running state's layout is then known here at compile time
 * and no ABI of the shared library is involved. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wshadow"
#define XXH_INLINE_ALL
#include <xxhash.h>
#pragma GCC diagnostic pop

const uint8_t kw__wire_magic[8] = {0x89, 0x4b, 0x56, 0x57, 0x0d, 0x0a, 0x1a, 0x0a};
const uint8_t kw__wire_section_marker[4] = {0x8b, 0x53, 0x45, 0x43};
const uint8_t kw__wire_trailer_marker[4] = {0x8b, 0x45, 0x4e, 0x44};

// ---------------------------------------------------------------------------------------------------------------
// Names

const char *kw_wire_codec_name(uint32_t codec) {
    static const char *const names[] = {"?",   "bf16", "f16",  "int8", "int4", "int6",
                                        "nf4", "e4m3", "e5m2", "int3", "int2"};
    return codec < sizeof names / sizeof names[0] ? names[codec] : "?";
}

const char *kw_wire_gran_name(uint32_t gran) {
    static const char *const names[] = {"none", "layer", "head", "token", "group", "channel"};
    return gran < sizeof names / sizeof names[0] ? names[gran] : "?";
}

const char *kw_wire_scale_name(uint32_t scale_dtype) {
    static const char *const names[] = {"none", "f16", "bf16", "f32", "e8m0", "log8"};
    return scale_dtype < sizeof names / sizeof names[0] ? names[scale_dtype] : "?";
}

const char *kw_wire_index_name(uint32_t index_encoding) {
    static const char *const names[] = {"auto", "full", "range", "u16", "u32", "bitmap", "varint"};
    return index_encoding < sizeof names / sizeof names[0] ? names[index_encoding] : "?";
}

const char *kw_wire_dtype_name(uint32_t dtype) {
    switch (dtype) {
    case KW_WIRE_DTYPE_BF16:
        return "bf16";
    case KW_WIRE_DTYPE_F16:
        return "f16";
    case KW_WIRE_DTYPE_F32:
        return "f32";
    default:
        return "?";
    }
}

const char *kw_wire_isa_name(enum kw_wire_isa isa) {
    switch (isa) {
    case KW_WIRE_ISA_AUTO:
        return "auto";
    case KW_WIRE_ISA_SCALAR:
        return "scalar";
    case KW_WIRE_ISA_AVX2:
        return "avx2";
    case KW_WIRE_ISA_AVX512:
        return "avx512";
    default:
        return "?";
    }
}

enum kw_wire_isa kw_wire_isa_resolve(enum kw_wire_isa isa) {
    if (isa == KW_WIRE_ISA_AUTO) { /* the best the CPU has, at most KW_CPU_ISA's level (kw_isa.h) */
        static const enum kw_wire_isa by_level[] = {KW_WIRE_ISA_SCALAR, KW_WIRE_ISA_AVX2, KW_WIRE_ISA_AVX512};
        isa = by_level[kw_isa_env_cap()];
    }
    if (isa == KW_WIRE_ISA_SCALAR) return KW_WIRE_ISA_SCALAR;
    if (isa == KW_WIRE_ISA_AVX512 && kw__wire_kernels_avx512()) return KW_WIRE_ISA_AVX512;
    if (isa != KW_WIRE_ISA_SCALAR && kw__wire_kernels_avx2()) return KW_WIRE_ISA_AVX2;
    return KW_WIRE_ISA_SCALAR;
}

// ---------------------------------------------------------------------------------------------------------------
// Checksums

static XXH3_state_t *kw__wire_hash_state(const kw__wire_hash *h) {
    _Static_assert(sizeof(XXH3_state_t) + 64 <= sizeof(((kw__wire_hash *)0)->space), "kw__wire_hash too small");
    const uintptr_t p = ((uintptr_t)h->space + 63u) & ~(uintptr_t)63u;
    return (XXH3_state_t *)p;
}

void kw__wire_hash_reset(kw__wire_hash *h) {
    XXH3_64bits_reset(kw__wire_hash_state(h));
}

void kw__wire_hash_update(kw__wire_hash *h, const void *data, size_t size) {
    if (size) XXH3_64bits_update(kw__wire_hash_state(h), data, size);
}

uint64_t kw__wire_hash_digest(const kw__wire_hash *h) {
    return XXH3_64bits_digest(kw__wire_hash_state(h));
}

uint64_t kw__wire_hash_bytes_sse2(const void *data, size_t size) {
    return XXH3_64bits(data, size);
}

/* KW_CPU_ISA's cap (common/kw_isa.h), read once per process: the hash value is the same on every path, so only the
 * tests' runs of the lower paths depend on it, and a getenv per section would cost more than a short hash. */
static enum kw_isa_level kw__wire_hash_cap(void) {
    static _Atomic int cap = -1;
    int c = atomic_load_explicit(&cap, memory_order_relaxed);
    if (c < 0) atomic_store_explicit(&cap, c = (int)kw_isa_env_cap(), memory_order_relaxed);
    return (enum kw_isa_level)c;
}

/* XXH3-64 of size bytes by the widest build the CPU and KW_CPU_ISA allow, AVX-512's only when wide (the value is the
 * same on every path). Short inputs gain nothing from wide vectors; long ones (section bodies) run 2-3x faster. */
static uint64_t kw__wire_hash_pick(const void *data, size_t size, int wide) {
    if (size >= 1024) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        const enum kw_isa_level cap = kw__wire_hash_cap();
        if (wide && cap >= KW_ISA_LEVEL_AVX512 && kw__wire_hash_has_avx512() && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw"))
            return kw__wire_hash_bytes_avx512(data, size);
        if (cap >= KW_ISA_LEVEL_AVX2 && kw__wire_hash_has_avx2() && __builtin_cpu_supports("avx2"))
            return kw__wire_hash_bytes_avx2(data, size);
#endif
    }
    return XXH3_64bits(data, size);
}

uint64_t kw__wire_hash_bytes(const void *data, size_t size) {
    return kw__wire_hash_pick(data, size, 1);
}

uint64_t kw__wire_hash_cold(const void *data, size_t size) {
    /* AVX2's build read data from memory faster than AVX-512's on the machine measured (issue 10 item 5, AMD EPYC
     * Zen 5, bench/hash_read.sh: 26-35 against 19-21 GB/s for 30 MB; in the caches AVX-512's is the faster one, 82-98
     * against 68-79 GB/s; docs/BENCHMARKS.md, "Codec speed, eighth pass (b)") */
    return kw__wire_hash_pick(data, size, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Codec specs and sizes

int kw__wire_spec_check(const kw_wire_codec_spec *spec, uint32_t head_dim, int v11) {
    if (spec->codec == 0 || spec->codec >= (v11 ? KW_WIRE_CODEC_COUNT_V11 : KW_WIRE_CODEC_COUNT))
        return KW_E_WIRE_CODEC;
    const uint32_t last_gran = v11 ? KW_WIRE_GRAN_CHANNEL : KW_WIRE_GRAN_GROUP;
    /* v1: the byte is the dtype; v1.1: a dtype in bits 0..3, reserved bits 4..6, zero points in bit 7 */
    if (v11 && (spec->scale_dtype & KW_WIRE_SCALE_RESERVED_BITS)) return KW_E_WIRE_RESERVED;
    const int asym = v11 && kw_wire_spec_asym(spec);
    const uint32_t sdt = v11 ? kw_wire_spec_scale(spec) : spec->scale_dtype;
    if (kw_wire_codec_is_passthrough(spec->codec)) {
        if (spec->granularity != KW_WIRE_GRAN_NONE || spec->scale_dtype != KW_WIRE_SCALE_NONE) return KW_E_WIRE_CODEC;
    } else {
        if (spec->granularity < KW_WIRE_GRAN_LAYER || spec->granularity > last_gran) return KW_E_WIRE_CODEC;
        if (sdt < KW_WIRE_SCALE_F16 || sdt > (v11 ? KW_WIRE_SCALE_LOG8 : KW_WIRE_SCALE_E8M0)) return KW_E_WIRE_CODEC;
    }
    /* zero points: integer codecs with a scale dtype that holds any finite value; log8 (v1.1): symmetric integer
     * codecs only (the receiver cache's scales) */
    if (asym && (!kw_wire_codec_is_int(spec->codec) || sdt == KW_WIRE_SCALE_E8M0)) return KW_E_WIRE_CODEC;
    if (sdt == KW_WIRE_SCALE_LOG8 && (!kw_wire_codec_is_int(spec->codec) || asym)) return KW_E_WIRE_CODEC;
    if (spec->granularity == KW_WIRE_GRAN_GROUP) {
        if (spec->group_log2 < 2 || spec->group_log2 > 10) return KW_E_WIRE_CODEC;
        if (head_dim % (1u << spec->group_log2) != 0) return KW_E_WIRE_CODEC;
    } else if (spec->granularity == KW_WIRE_GRAN_CHANNEL) {
        if (spec->group_log2 > KW_WIRE_MAX_RUN_LOG2) return KW_E_WIRE_CODEC;
    } else if (spec->group_log2 != 0) {
        return KW_E_WIRE_RESERVED;
    }
    return 0;
}

int kw_wire_spec_needs_v11(const kw_wire_codec_spec *spec) {
    return spec->codec == KW_WIRE_CODEC_INT3 || spec->codec == KW_WIRE_CODEC_INT2 ||
           spec->granularity == KW_WIRE_GRAN_CHANNEL || (spec->scale_dtype & ~KW_WIRE_SCALE_DTYPE_MASK) != 0 ||
           kw_wire_spec_scale(spec) == KW_WIRE_SCALE_LOG8;
}

int kw_wire_policy_needs_v11(const kw_wire_policy *pol) {
    if (!pol) return 0;
    if (pol->outliers || pol->pre_rope || pol->rotate || pol->rans) return 1;
    if (pol->n_groups == 0) return kw_wire_spec_needs_v11(&pol->k) || kw_wire_spec_needs_v11(&pol->v);
    for (uint32_t g = 0; pol->groups && g < pol->n_groups; ++g)
        if (kw_wire_spec_needs_v11(&pol->groups[g].k) || kw_wire_spec_needs_v11(&pol->groups[g].v)) return 1;
    return 0;
}

uint64_t kw__wire_scale_count(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim) {
    return kw_wire_scale_units(spec->granularity, spec->group_log2, n_heads, n_tokens, head_dim);
}

uint64_t kw__wire_code_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim) {
    return (uint64_t)n_heads * n_tokens * head_dim * kw_wire_codec_bits(spec->codec) / 8u;
}

uint64_t kw__wire_scale_block_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens,
                                    uint32_t head_dim) {
    return kw__wire_scale_count(spec, n_heads, n_tokens, head_dim) * kw_wire_scale_size(kw_wire_spec_scale(spec));
}

uint64_t kw__wire_tensor_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim) {
    const uint64_t scales = kw__wire_scale_block_bytes(spec, n_heads, n_tokens, head_dim);
    return scales * (kw_wire_spec_asym(spec) ? 2u : 1u) + kw__wire_code_bytes(spec, n_heads, n_tokens, head_dim);
}

// ---------------------------------------------------------------------------------------------------------------
// Token positions (FORMAT.md §6)

uint64_t kw__wire_index_fixed_bytes(uint32_t encoding, uint32_t n_tokens, uint32_t n_positions) {
    switch (encoding) {
    case KW_WIRE_INDEX_FULL:
        return 0;
    case KW_WIRE_INDEX_RANGE:
        return 4;
    case KW_WIRE_INDEX_U16:
        return 2ull * n_tokens;
    case KW_WIRE_INDEX_U32:
        return 4ull * n_tokens;
    case KW_WIRE_INDEX_BITMAP:
        return ((uint64_t)n_positions + 7u) / 8u;
    default:
        return 0;
    }
}

static inline uint32_t kw__pos(const uint32_t *positions, uint32_t i) {
    return positions ? positions[i] : i;
}

int kw_wire_index_choose(uint32_t n_positions, const uint32_t *positions, uint32_t n_tokens, uint8_t request,
                         uint8_t *encoding, size_t *bytes) {
    KW_RETURN_IF(n_tokens == 0, KW_E_INVALID_ARG, "a section needs at least one token");
    KW_RETURN_IF(n_tokens > n_positions, KW_E_INVALID_ARG, "%u tokens out of %u positions", n_tokens, n_positions);
    uint64_t varint = 0;
    uint32_t prev = 0;
    for (uint32_t i = 0; i < n_tokens; ++i) {
        const uint32_t p = kw__pos(positions, i);
        KW_RETURN_IF(p >= n_positions, KW_E_INVALID_ARG, "position %u (token %u) >= n_positions %u", p, i, n_positions);
        KW_RETURN_IF(i > 0 && p <= prev, KW_E_INVALID_ARG,
                     "positions not strictly increasing at token %u (%u after %u)", i, p, prev);
        varint += kw__wire_varint_len(i == 0 ? p : p - prev - 1);
        prev = p;
    }
    return kw__wire_index_pick(n_positions, n_tokens, kw__pos(positions, 0), kw__pos(positions, n_tokens - 1), varint,
                               request, encoding, bytes);
}

int kw__wire_index_pick(uint32_t n_positions, uint32_t n_tokens, uint32_t first, uint32_t last, uint64_t varint,
                        uint8_t request, uint8_t *encoding, size_t *bytes) {
    const int contiguous = last - first == n_tokens - 1;
    uint64_t size[KW_WIRE_INDEX_COUNT];
    int usable[KW_WIRE_INDEX_COUNT];
    size[0] = 0;
    usable[0] = 0;
    for (uint32_t e = 1; e < KW_WIRE_INDEX_COUNT; ++e) {
        size[e] = e == KW_WIRE_INDEX_VARINT ? varint : kw__wire_index_fixed_bytes(e, n_tokens, n_positions);
        usable[e] = 1;
    }
    usable[KW_WIRE_INDEX_FULL] = contiguous && first == 0;
    usable[KW_WIRE_INDEX_RANGE] = contiguous;
    usable[KW_WIRE_INDEX_U16] = last < 65536u;
    if (request != KW_WIRE_INDEX_AUTO) {
        KW_RETURN_IF(request >= KW_WIRE_INDEX_COUNT, KW_E_INVALID_ARG, "unknown index encoding %u", request);
        KW_RETURN_IF(!usable[request], KW_E_INVALID_ARG, "index encoding %s cannot represent these positions",
                     kw_wire_index_name(request));
        *encoding = request;
        *bytes = (size_t)size[request];
        return 0;
    }
    uint32_t best = KW_WIRE_INDEX_U32;
    for (uint32_t e = 1; e < KW_WIRE_INDEX_COUNT; ++e)
        if (usable[e] && (size[e] < size[best] || (size[e] == size[best] && e < best))) best = e;
    *encoding = (uint8_t)best;
    *bytes = (size_t)size[best];
    return 0;
}

void kw__wire_index_write(uint32_t encoding, const uint32_t *positions, uint32_t n_tokens, uint32_t n_positions,
                          uint8_t *dst) {
    switch (encoding) {
    case KW_WIRE_INDEX_FULL:
        break;
    case KW_WIRE_INDEX_RANGE:
        kw_store_le32(dst, kw__pos(positions, 0));
        break;
    case KW_WIRE_INDEX_U16:
        for (uint32_t i = 0; i < n_tokens; ++i)
            kw_store_le16(dst + 2 * (size_t)i, (uint16_t)kw__pos(positions, i));
        break;
    case KW_WIRE_INDEX_U32:
        for (uint32_t i = 0; i < n_tokens; ++i)
            kw_store_le32(dst + 4 * (size_t)i, kw__pos(positions, i));
        break;
    case KW_WIRE_INDEX_BITMAP:
        memset(dst, 0, ((size_t)n_positions + 7) / 8);
        for (uint32_t i = 0; i < n_tokens; ++i) {
            const uint32_t p = kw__pos(positions, i);
            dst[p >> 3] |= (uint8_t)(1u << (p & 7u));
        }
        break;
    case KW_WIRE_INDEX_VARINT: {
        uint32_t prev = 0;
        for (uint32_t i = 0; i < n_tokens; ++i) {
            const uint32_t p = kw__pos(positions, i);
            uint32_t v = i == 0 ? p : p - prev - 1;
            prev = p;
            while (v >= 0x80u) {
                *dst++ = (uint8_t)(v | 0x80u);
                v >>= 7;
            }
            *dst++ = (uint8_t)v;
        }
        break;
    }
    default:
        break;
    }
}

int kw__wire_index_decode(uint32_t encoding, const uint8_t *data, uint32_t bytes, uint32_t n_tokens,
                          uint32_t n_positions, uint32_t *out) {
    if (encoding != KW_WIRE_INDEX_VARINT) {
        KW_RETURN_IF(bytes != kw__wire_index_fixed_bytes(encoding, n_tokens, n_positions), KW_E_WIRE_CORRUPT,
                     "index block of %u bytes for %s encoding of %u tokens", bytes, kw_wire_index_name(encoding),
                     n_tokens);
    }
    switch (encoding) {
    case KW_WIRE_INDEX_FULL:
        KW_RETURN_IF(n_tokens > n_positions, KW_E_WIRE_INDICES, "full range of %u tokens > %u positions", n_tokens,
                     n_positions);
        if (out)
            for (uint32_t i = 0; i < n_tokens; ++i)
                out[i] = i;
        return 0;
    case KW_WIRE_INDEX_RANGE: {
        const uint32_t start = kw_load_le32(data);
        KW_RETURN_IF((uint64_t)start + n_tokens > n_positions, KW_E_WIRE_INDICES,
                     "range %u + %u tokens exceeds %u positions", start, n_tokens, n_positions);
        if (out)
            for (uint32_t i = 0; i < n_tokens; ++i)
                out[i] = start + i;
        return 0;
    }
    case KW_WIRE_INDEX_U16:
    case KW_WIRE_INDEX_U32: {
        uint32_t prev = 0;
        for (uint32_t i = 0; i < n_tokens; ++i) {
            const uint32_t p =
                encoding == KW_WIRE_INDEX_U16 ? kw_load_le16(data + 2 * (size_t)i) : kw_load_le32(data + 4 * (size_t)i);
            KW_RETURN_IF(p >= n_positions, KW_E_WIRE_INDICES, "position %u >= %u", p, n_positions);
            KW_RETURN_IF(i > 0 && p <= prev, KW_E_WIRE_INDICES, "positions not increasing at token %u", i);
            prev = p;
            if (out) out[i] = p;
        }
        return 0;
    }
    case KW_WIRE_INDEX_BITMAP: {
        const uint32_t tail = n_positions & 7u;
        KW_RETURN_IF(tail && (data[bytes - 1] >> tail) != 0, KW_E_WIRE_RESERVED,
                     "bitmap padding bits beyond position %u are set", n_positions);
        uint64_t count = 0;
        for (uint32_t b = 0; b < bytes; ++b)
            count += (uint64_t)__builtin_popcount(data[b]);
        KW_RETURN_IF(count != n_tokens, KW_E_WIRE_INDICES, "bitmap has %llu positions, section has %u tokens",
                     (unsigned long long)count, n_tokens);
        if (out) {
            uint32_t i = 0;
            for (uint32_t b = 0; b < bytes; ++b)
                for (uint32_t bits = data[b]; bits; bits &= bits - 1)
                    out[i++] = b * 8u + (uint32_t)__builtin_ctz(bits);
        }
        return 0;
    }
    case KW_WIRE_INDEX_VARINT: {
        uint32_t at = 0;
        uint64_t prev = 0;
        for (uint32_t i = 0; i < n_tokens; ++i) {
            uint64_t v = 0;
            uint32_t len = 0;
            for (;;) {
                KW_RETURN_IF(at >= bytes, KW_E_WIRE_INDICES, "varint %u runs past the index block", i);
                const uint8_t b = data[at++];
                KW_RETURN_IF(len == 4 && b > 0x0f, KW_E_WIRE_INDICES, "varint %u exceeds 32 bits", i);
                v |= (uint64_t)(b & 0x7fu) << (7 * len);
                ++len;
                if (!(b & 0x80u)) {
                    KW_RETURN_IF(len > 1 && b == 0, KW_E_WIRE_INDICES, "varint %u is overlong", i);
                    break;
                }
            }
            const uint64_t p = i == 0 ? v : prev + 1 + v;
            KW_RETURN_IF(p >= n_positions, KW_E_WIRE_INDICES, "position %llu >= %u", (unsigned long long)p,
                         n_positions);
            prev = p;
            if (out) out[i] = (uint32_t)p;
        }
        KW_RETURN_IF(at != bytes, KW_E_WIRE_INDICES, "%u bytes after the last varint", bytes - at);
        return 0;
    }
    default:
        KW_FAIL(KW_E_WIRE_CODEC, "unknown index encoding %u", encoding);
    }
}
