/* kw_omp_wait.c: the OpenMP barrier waiting in effect, read from the environment libgomp read; see kw_omp_wait.h. */
#include "common/kw_omp_wait.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static char kw_omp_wait_text[128];
static pthread_once_t kw_omp_wait_once = PTHREAD_ONCE_INIT;

static void kw_omp_wait_describe(void) {
    const char *spin = getenv("GOMP_SPINCOUNT"), *policy = getenv("OMP_WAIT_POLICY");
    if (spin == NULL && policy == NULL) {
        snprintf(kw_omp_wait_text, sizeof kw_omp_wait_text,
                 "libgomp default (GOMP_SPINCOUNT and OMP_WAIT_POLICY unset)");
        return;
    }
    snprintf(kw_omp_wait_text, sizeof kw_omp_wait_text, "%s%.40s%s%s%.40s", policy ? "OMP_WAIT_POLICY=" : "",
             policy ? policy : "", policy && spin ? " " : "", spin ? "GOMP_SPINCOUNT=" : "", spin ? spin : "");
}

const char *kw_omp_wait_origin(void) {
    pthread_once(&kw_omp_wait_once, kw_omp_wait_describe);
    return kw_omp_wait_text;
}
