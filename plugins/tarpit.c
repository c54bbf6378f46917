/*
 *  tarpit.c: slows down unauthenticated clients.  It takes control in mq_smtp_in_rcptto and hands
 *  it back from a timer: the n-th recipient of a connection waits n times MQ_TARPIT_SECONDS
 *  (default 0.2).  The connection waits, the worker thread does not (other sessions go on).
 *
 *      cc -shared -fPIC -I"$(mqmta plugin-header)" -o plugins/tarpit.so plugins/tarpit.c
 */
#include <stdlib.h>
#include "mqtwisted.h"

static float seconds = 0.2f;

MQ_EXPORT int mq_version(void) { return MQ_API_VERSION; }

MQ_EXPORT void mq_initialize(void)
{
    const char *value = getenv("MQ_TARPIT_SECONDS");
    if (value != NULL) seconds = strtof(value, NULL);
}

/* The timer's callback: runs in the same worker thread as the hook did. */
static void resume(void *connection) { MQ_continue((MQ_Connection *)connection); }

MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    if (MQ_authenticated(connection)) return false;
    /* recipients so far on this connection: this plugin's own connection data */
    unsigned *count = MQ_connectionData(connection);
    if (count == NULL) {
        count = calloc(1, sizeof *count);
        MQ_setConnectionData(connection, count);
    }
    *count += 1;
    MQ_startTimer(context, seconds * (float)*count, resume, connection);
    /* true: this plugin has control until resume() calls MQ_continue */
    return true;
}

MQ_EXPORT bool mq_smtp_in_close(MQ_Context *context, MQ_Connection *connection)
{
    free(MQ_connectionData(connection));
    MQ_setConnectionData(connection, NULL);
    return false;
}
