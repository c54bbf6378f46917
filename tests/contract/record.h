/* record(): one line per call in $MQ_TEST_RECORD, "hook context connection thread extra", the
   format tests/contract/recording.py writes for the Python plugins. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "mqtwisted.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static inline void record(const char *hook, MQ_Context *ctx, MQ_Connection *conn, const char *extra)
{
    const char *path = getenv("MQ_TEST_RECORD");
    if (path == NULL) return;
    pthread_mutex_lock(&lock);
    FILE *f = fopen(path, "a");
    if (f != NULL) {
        fprintf(f, "%s %lu %lu %ld%s%s\n", hook, (unsigned long)(uintptr_t)ctx,
                (unsigned long)(uintptr_t)conn, (long)syscall(SYS_gettid), extra ? " " : "",
                extra ? extra : "");
        fclose(f);
    }
    pthread_mutex_unlock(&lock);
}
