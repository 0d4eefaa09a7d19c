/* kw_queue.c: the blocking work queue (see kw_queue.h). */
#include "common/kw_queue.h"

#include "common/kw_status.h"

int kw_queue_init(kw_queue *q) {
    q->head = q->tail = NULL;
    q->length = 0;
    q->closed = false;
    KW_RETURN_IF(pthread_mutex_init(&q->mu, NULL) != 0, KW_E_INTERNAL, "queue: cannot create a mutex");
    if (pthread_cond_init(&q->cond, NULL) != 0) {
        pthread_mutex_destroy(&q->mu);
        KW_FAIL(KW_E_INTERNAL, "queue: cannot create a condition variable");
    }
    return 0;
}

void kw_queue_destroy(kw_queue *q) {
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mu);
}

bool kw_queue_push(kw_queue *q, kw_queue_item *item) {
    pthread_mutex_lock(&q->mu);
    const bool ok = !q->closed;
    if (ok) {
        item->next = NULL;
        if (q->tail)
            q->tail->next = item;
        else
            q->head = item;
        q->tail = item;
        ++q->length;
        pthread_cond_signal(&q->cond);
    }
    pthread_mutex_unlock(&q->mu);
    return ok;
}

kw_queue_item *kw_queue_pop(kw_queue *q) {
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->closed)
        pthread_cond_wait(&q->cond, &q->mu);
    kw_queue_item *item = q->head;
    if (item) {
        q->head = item->next;
        if (!q->head) q->tail = NULL;
        item->next = NULL;
        --q->length;
    }
    pthread_mutex_unlock(&q->mu);
    return item;
}

void kw_queue_close(kw_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

size_t kw_queue_length(kw_queue *q) {
    pthread_mutex_lock(&q->mu);
    const size_t n = q->length;
    pthread_mutex_unlock(&q->mu);
    return n;
}
