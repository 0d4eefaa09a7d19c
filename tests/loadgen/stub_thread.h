/* stub_thread.h: the stub receiverd (loadgen/kw_load_stub.h) on a thread of its own, for tests that drive kvload
 * in-process. Test-only code: failures fail the running test. */
#ifndef KW_STUB_THREAD_H
#define KW_STUB_THREAD_H

#include <pthread.h>
#include <stdint.h>

#include <uv.h>

#include "loadgen/kw_load_stub.h"

typedef struct stub_thread {
    uv_loop_t loop;
    uv_async_t stop;
    kw_load_stub *stub;
    pthread_t thread;
    char url[64];
} stub_thread;

/* Starts a stub with cfg (NULL: defaults) on 127.0.0.1 and an ephemeral port; url gets its base URL. */
void stub_thread_start(stub_thread *t, const kw_load_stub_config *cfg);

/* Shuts it down gracefully and joins the thread. */
void stub_thread_stop(stub_thread *t);

#endif /* KW_STUB_THREAD_H */
