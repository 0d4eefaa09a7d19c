/* kw_cuda_launch.cuh: the one way kernels/cuda launches a kernel, so that the same source runs under nvcc and under
 * the CUDA emulator (kernels/cuda/emu/kw_cuda_emu.h, force-included when a .cu file is compiled as host C++).
 *
 * KW_CUDA_LAUNCH(kernel, grid, block, shmem, stream, args...) is kernel<<<grid, block, shmem, stream>>>(args...)
 * under nvcc and kwemu::launch there (raw <<<>>> does not compile as C++, so the emulated build enforces the rule).
 * A templated kernel with several template arguments needs its name in a typedef or a macro-safe alias first.
 * KW_DYNAMIC_SHARED(type, name) declares the block's dynamic shared memory as `type *name` in both worlds.
 */
#ifndef KW_CUDA_LAUNCH_CUH
#define KW_CUDA_LAUNCH_CUH

#ifdef KW_CUDA_EMU
#define KW_CUDA_LAUNCH(kernel, grid, block, shmem, stream, ...)                                                        \
    ::kwemu::launch(#kernel, kernel, grid, block, shmem, stream, ##__VA_ARGS__)
#define KW_DYNAMIC_SHARED(type, name) type *const name = reinterpret_cast<type *>(::kwemu::dynamic_shared())
#else
#define KW_CUDA_LAUNCH(kernel, grid, block, shmem, stream, ...) kernel<<<grid, block, shmem, stream>>>(__VA_ARGS__)
#define KW_DYNAMIC_SHARED(type, name)                                                                                  \
    extern __shared__ __align__(16) unsigned char name##_bytes_[];                                                     \
    type *const name = reinterpret_cast<type *>(name##_bytes_)
#endif

#endif /* KW_CUDA_LAUNCH_CUH */
