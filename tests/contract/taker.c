/* Takes control and hands it back (tests/contract/taker.py is the same plugin in Python): at
   MAIL FROM from a thread of its own, at RCPT TO from an MQ_startTimer timer (the context's
   thread), and at DATA the first time with MQ_retry from its own thread. */
#include "record.h"

struct later {
    MQ_Connection *conn;
    void (*control)(MQ_Connection *);
    useconds_t delay;
};

static void *run_later(void *p)
{
    struct later *later = p;
    usleep(later->delay);
    later->control(later->conn);
    free(later);
    return NULL;
}

static void from_thread(MQ_Connection *conn, void (*control)(MQ_Connection *), useconds_t delay)
{
    pthread_t thread;
    struct later *later = malloc(sizeof *later);
    later->conn = conn;
    later->control = control;
    later->delay = delay;
    pthread_create(&thread, NULL, run_later, later);
    pthread_detach(thread);
}

MQ_EXPORT int mq_version(void) { return MQ_API_VERSION; }

MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    from_thread(conn, MQ_continue, 100000);
    record("mailfrom", ctx, conn, NULL);
    return true;
}

struct resume {
    MQ_Context *ctx;
    MQ_Connection *conn;
};

static void resume(void *data)
{
    struct resume *r = data;
    record("timer", r->ctx, r->conn, NULL);
    MQ_continue(r->conn);
    free(r);
}

MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    struct resume *r = malloc(sizeof *r);
    r->ctx = ctx;
    r->conn = conn;
    MQ_startTimer(ctx, 0.1f, resume, r);
    record("rcptto", ctx, conn, NULL);
    return true;
}

static int data_calls;

MQ_EXPORT bool mq_smtp_in_data(MQ_Context *ctx, MQ_Connection *conn, const char *mime, size_t size)
{
    int calls = __atomic_add_fetch(&data_calls, 1, __ATOMIC_SEQ_CST);
    record("data", ctx, conn, NULL);
    if (calls == 1) {
        from_thread(conn, MQ_retry, 50000);
        return true;
    }
    return false;
}
