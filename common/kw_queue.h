/* kw_queue.h: a blocking work queue between threads (the daemons' compute threads take their jobs from one): an
 * intrusive FIFO under a mutex, a condition variable for the taker, and a close that lets the taker drain what is
 * queued and stop. Items are the caller's (embed kw_queue_item); the queue allocates nothing. Any thread may push;
 * one or more threads may pop. Not here: the loop side (net/kw_net.h's completion queue goes the other way). */
#ifndef KW_QUEUE_H
#define KW_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct kw_queue_item {
    struct kw_queue_item *next;
} kw_queue_item;

typedef struct kw_queue {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    kw_queue_item *head, *tail;
    size_t length;
    bool closed;
} kw_queue;

/* @return 0 or KW_E_NOMEM/KW_E_INTERNAL. */
int kw_queue_init(kw_queue *q);

/* Destroys an empty (or abandoned) queue's mutex and condition; the items still in it are the caller's. */
void kw_queue_destroy(kw_queue *q);

/* Appends item (owned by the queue until popped) and wakes a taker. @return false (item not queued) once closed. */
bool kw_queue_push(kw_queue *q, kw_queue_item *item);

/* Waits for the next item; NULL once the queue is closed and empty. */
kw_queue_item *kw_queue_pop(kw_queue *q);

/* No more pushes; takers drain what is queued, then get NULL. */
void kw_queue_close(kw_queue *q);

/* Items queued now (a snapshot). */
size_t kw_queue_length(kw_queue *q);

#endif /* KW_QUEUE_H */
