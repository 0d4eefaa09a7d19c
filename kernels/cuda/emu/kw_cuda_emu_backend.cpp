/* kw_cuda_emu_backend.cpp: the CUDA backend of kernels/cuda, compiled as host C++ against the emulator
 * (kw_cuda_emu.h is force-included) and exported as kw_backend_create_cuda_emu (kw_cuda_emu_api.h).
 *
 * Every .cu file of kernels/cuda is included here, unchanged, inside namespace kw_cuda_emu_backend, so that its
 * kernels and internal functions cannot clash with the real CUDA backend's when both are linked into one binary
 * (kernels/CMakeLists.txt checks that this list names every .cu file). What those files include from outside
 * kernels/cuda is included first, at global scope, so that the include guards keep system and project headers out of
 * the namespace; a .cu file that starts including something new needs it added here.
 */
#include "kernels/cuda/emu/kw_cuda_emu.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/kw_log.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "kernels/kw_backend_impl.h"
}
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#include "kernels/cuda/kw_cuda_wire.h"
#include "kernels/kw_kvq_format.h"
#include "kernels/kw_op_math.h"
#include "kernels/kw_select_math.h"
#include "wire/kw_wire_quant.h"

#define kw_backend_create_cuda kw_backend_create_cuda_emu

namespace kw_cuda_emu_backend {
#include "kernels/cuda/kw_cuda_backend.cu"
#include "kernels/cuda/kw_cuda_kvq.cu"
#include "kernels/cuda/kw_cuda_ops.cu"
#include "kernels/cuda/kw_cuda_select.cu"
#include "kernels/cuda/kw_cuda_wire.cu"
} // namespace kw_cuda_emu_backend
