/* sharerd_main.c: the sharerd program (sharer/kw_sharerd.h does the work). */
#include "sharer/kw_sharerd.h"

int main(int argc, char **argv) {
    return kw_sharerd_main(argc, argv);
}
