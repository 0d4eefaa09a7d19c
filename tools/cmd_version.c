/* cmd_version.c: `kvwire version` prints the version, the build configuration and how the CPU backend's threads
 * wait between ops. */
#include "kernels/kw_backend.h"
#include "kw_commands.h"

#include <stdio.h>

const char kw_cmd_version_summary[] = "print the version and build configuration";

int kw_cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
#ifdef KW_HAVE_CUDA
    const char *cuda = "yes";
#else
    const char *cuda = "no";
#endif
    printf("kvwire %s (CUDA backend: %s)\nCPU threads wait: %s\n", KW_VERSION, cuda, kw_backend_cpu_wait());
    return 0;
}
