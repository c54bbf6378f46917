/*
 *  The MQ_* functions C plugins call, exported from one small library that mqmta loads with
 *  RTLD_GLOBAL before any plugin: each forwards to a function pointer that mqtwisted.cplugins sets
 *  from Python (cffi callbacks).  Handles cross as integers; Python maps them to its objects.
 */
#include <stdint.h>
#include "mqtwisted.h"

#define SHIM __attribute__((visibility("default")))

struct mq_shim {
    void (*control)(uintptr_t connection, int kind);
    int (*file_descriptor)(uintptr_t connection);
    size_t (*send)(uintptr_t connection, const void *buffer, size_t size);
    bool (*flag)(uintptr_t handle, int which);
    void (*set_flag)(uintptr_t handle, int which, bool value);
    void *(*data)(uintptr_t handle, int which);
    void (*set_data)(uintptr_t handle, int which, void *data);
    void (*set_response)(uintptr_t connection, int code, const char *text, const char *enhanced);
    uintptr_t (*start_timer)(uintptr_t context, float timeout, void (*callback)(void *), void *data);
    void (*timer)(uintptr_t timer, int op, float timeout);
    uintptr_t (*io_watch)(uintptr_t context, int fd, int events,
                          void (*callback)(MQ_IOWatcher *, int, int, void *), void *data);
    void (*io_unwatch)(uintptr_t watcher);
    struct fjson_object *(*json)(uintptr_t message);
    uintptr_t (*envelope)(uintptr_t message);
    const char *(*string)(uintptr_t handle, int which);
    void (*set_string)(uintptr_t message, int which, const char *value, size_t size);
    void (*log)(int priority, const char *message);
};

static struct mq_shim shim;

SHIM void mq_shim_install(const struct mq_shim *table) { shim = *table; }

/* the `which` and `kind` codes below are mirrored in mqtwisted/cplugins/bridge.py */
SHIM void MQ_continue(MQ_Connection *c) { shim.control((uintptr_t)c, 0); }
SHIM void MQ_complete(MQ_Connection *c) { shim.control((uintptr_t)c, 1); }
SHIM void MQ_retry(MQ_Connection *c) { shim.control((uintptr_t)c, 2); }

SHIM int MQ_fileDescriptor(MQ_Connection *c) { return shim.file_descriptor((uintptr_t)c); }
SHIM size_t MQ_send(MQ_Connection *c, const void *b, size_t n) { return shim.send((uintptr_t)c, b, n); }
SHIM bool MQ_authenticated(MQ_Connection *c) { return shim.flag((uintptr_t)c, 0); }
SHIM bool MQ_secure(MQ_Connection *c) { return shim.flag((uintptr_t)c, 1); }
SHIM bool MQ_local(MQ_Message *m) { return shim.flag((uintptr_t)m, 2); }
SHIM void MQ_setAuthenticated(MQ_Connection *c, bool v) { shim.set_flag((uintptr_t)c, 0, v); }
SHIM void MQ_setLocal(MQ_Message *m, bool v) { shim.set_flag((uintptr_t)m, 2, v); }
SHIM void *MQ_connectionData(MQ_Connection *c) { return shim.data((uintptr_t)c, 0); }
SHIM void MQ_setConnectionData(MQ_Connection *c, void *d) { shim.set_data((uintptr_t)c, 0, d); }
SHIM void *MQ_contextData(MQ_Context *x) { return shim.data((uintptr_t)x, 1); }
SHIM void MQ_setContextData(MQ_Context *x, void *d) { shim.set_data((uintptr_t)x, 1, d); }

SHIM void MQ_setResponse(MQ_Connection *c, int code, const char *text, const char *enhanced)
{
    shim.set_response((uintptr_t)c, code, text, enhanced);
}

SHIM MQ_Timer *MQ_startTimer(MQ_Context *x, float timeout, void (*cb)(void *), void *data)
{
    return (MQ_Timer *)shim.start_timer((uintptr_t)x, timeout, cb, data);
}
SHIM void MQ_stopTimer(MQ_Timer *t) { shim.timer((uintptr_t)t, 0, 0); }
SHIM void MQ_resetTimer(MQ_Timer *t, float timeout) { shim.timer((uintptr_t)t, 1, timeout); }

SHIM MQ_IOWatcher *MQ_ioWatch(MQ_Context *x, int fd, int events,
                              void (*cb)(MQ_IOWatcher *, int, int, void *), void *data)
{
    return (MQ_IOWatcher *)shim.io_watch((uintptr_t)x, fd, events, cb, data);
}
SHIM void MQ_ioUnwatch(MQ_IOWatcher *w) { shim.io_unwatch((uintptr_t)w); }

SHIM struct fjson_object *MQ_json(MQ_Message *m) { return shim.json((uintptr_t)m); }
SHIM MQ_Envelope *MQ_envelope(MQ_Message *m) { return (MQ_Envelope *)shim.envelope((uintptr_t)m); }
SHIM const char *MQ_recipient(MQ_Message *m) { return shim.string((uintptr_t)m, 1); }
SHIM const char *MQ_mime(MQ_Message *m) { return shim.string((uintptr_t)m, 2); }
SHIM const char *MQ_email(MQ_Address *a) { return shim.string((uintptr_t)a, 3); }
SHIM void MQ_setEnvelope(MQ_Message *m, const char *v, size_t n) { shim.set_string((uintptr_t)m, 0, v, n); }
SHIM void MQ_setRecipient(MQ_Message *m, const char *v, size_t n) { shim.set_string((uintptr_t)m, 1, v, n); }
SHIM void MQ_setMime(MQ_Message *m, const char *v, size_t n) { shim.set_string((uintptr_t)m, 2, v, n); }

SHIM void MQ_log(int priority, const char *message) { shim.log(priority, message); }
