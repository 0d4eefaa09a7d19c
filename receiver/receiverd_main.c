/* receiverd_main.c: the receiverd program (receiver/kw_receiverd.h does the work). */
#include "receiver/kw_receiverd.h"

int main(int argc, char **argv) {
    return kw_receiverd_main(argc, argv);
}
