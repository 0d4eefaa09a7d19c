/* kw_hd.h: the KW_HD qualifier for math that both the CPU and the CUDA backend compile (bf16/fp16/fp8 conversion,
 * quantize/dequantize of a group, nibble packing). Under nvcc it expands to __host__ __device__, elsewhere to
 * nothing, so the CPU tests exercise exactly the code the GPU runs. */
#ifndef KW_HD_H
#define KW_HD_H

#if defined(__CUDACC__)
#define KW_HD __host__ __device__ __forceinline__
#else
#define KW_HD static inline
#endif

#endif /* KW_HD_H */
