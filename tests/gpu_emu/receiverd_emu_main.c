/* receiverd_emu_main.c: receiverd whose compute.backend cuda is the CUDA emulator (kernels/cuda/emu), for the daemon
 * test of the receiver's device decode (test_daemons_share_emu). A test program only: the product never links the
 * emulator. */
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#include "kernels/kw_backend.h"
#include "receiver/kw_receiverd.h"

int main(int argc, char **argv) {
    kw_backend_set_cuda_create(kw_backend_create_cuda_emu);
    return kw_receiverd_main(argc, argv);
}
