/*
 *  mqtwisted.h: MailerQ's plugin API for C plugins of mqmta.
 *
 *  A plugin is a shared object in --plugin-directory (cc -shared -fPIC -I"$(mqmta plugin-header)"
 *  -o 10-example.so example.c, plus -lfastjson when it calls MQ_json).  Names, arguments and
 *  semantics follow MailerQ's documentation; docs/plugins.rst ("C plugins") says what differs.
 *
 *  Hooks (the plugin defines them, all optional but mq_version) return true to take control;
 *  control then comes back with MQ_continue, MQ_complete or MQ_retry, from any thread.
 */
#ifndef MQTWISTED_H
#define MQTWISTED_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What mq_version() must return. */
#define MQ_API_VERSION 1

/* Marks a hook for export (build with -fvisibility=hidden to keep everything else private). */
#if defined(__GNUC__)
#define MQ_EXPORT __attribute__((visibility("default")))
#else
#define MQ_EXPORT
#endif

/* MQ_log priorities (MailerQ's values). */
#define MQ_CRIT 1
#define MQ_WARN 2
#define MQ_INFO 3

/* MQ_ioWatch events. */
#define MQ_READ 1
#define MQ_WRITE 2

/* Opaque handles: only ever passed back to MQ_* functions. */
typedef struct MQ_Context MQ_Context;
typedef struct MQ_Connection MQ_Connection;
typedef struct MQ_Address MQ_Address;
typedef struct MQ_Address MQ_Envelope;
typedef struct MQ_Message MQ_Message;
typedef struct MQ_Timer MQ_Timer;
typedef struct MQ_IOWatcher MQ_IOWatcher;

/* libfastjson's object (MQ_json); include <libfastjson/json.h> to work with it. */
struct fjson_object;

/* -- hooks a plugin may define ------------------------------------------------------------- */

MQ_EXPORT int mq_version(void);
MQ_EXPORT void mq_initialize(void);
MQ_EXPORT void mq_cleanup(void);
MQ_EXPORT void mq_context_initialize(MQ_Context *context);
MQ_EXPORT void mq_context_cleanup(MQ_Context *context);

MQ_EXPORT bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection);
MQ_EXPORT bool mq_smtp_in_secure(MQ_Context *context, MQ_Connection *connection);
MQ_EXPORT bool mq_smtp_in_authenticate(MQ_Context *context, MQ_Connection *connection,
                                       const char *login, size_t loginsize,
                                       const char *password, size_t passwordsize);
MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *context, MQ_Connection *connection,
                                   MQ_Address *envelope);
MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection,
                                 MQ_Address *address);
MQ_EXPORT bool mq_smtp_in_data(MQ_Context *context, MQ_Connection *connection,
                               const char *mime, size_t size);
MQ_EXPORT bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection,
                                  MQ_Message *message);
MQ_EXPORT bool mq_smtp_in_close(MQ_Context *context, MQ_Connection *connection);
MQ_EXPORT bool mq_smtp_out_data(MQ_Context *context, MQ_Connection *connection,
                                MQ_Message *message);
MQ_EXPORT bool mq_smtp_out_sent(MQ_Context *context, MQ_Connection *connection,
                                MQ_Message *message);

/* -- handing control back (any thread) ------------------------------------------------------ */

void MQ_continue(MQ_Connection *connection);
void MQ_complete(MQ_Connection *connection);
void MQ_retry(MQ_Connection *connection);

/* -- connections -------------------------------------------------------------------------- */

int MQ_fileDescriptor(MQ_Connection *connection);
size_t MQ_send(MQ_Connection *connection, const void *buffer, size_t size);
bool MQ_authenticated(MQ_Connection *connection);
void MQ_setAuthenticated(MQ_Connection *connection, bool authenticated);
bool MQ_secure(MQ_Connection *connection);
void *MQ_connectionData(MQ_Connection *connection);
void MQ_setConnectionData(MQ_Connection *connection, void *data);
/* mqmta's extension: the reply to the command being processed (4xx/5xx refuses it).
   enhanced (e.g. "5.7.1") may be NULL. */
void MQ_setResponse(MQ_Connection *connection, int code, const char *text, const char *enhanced);

/* -- contexts (one per worker thread) -------------------------------------------------------- */

void *MQ_contextData(MQ_Context *context);
void MQ_setContextData(MQ_Context *context, void *value);
MQ_Timer *MQ_startTimer(MQ_Context *context, float timeout, void (*callback)(void *data),
                        void *data);
void MQ_stopTimer(MQ_Timer *timer);
void MQ_resetTimer(MQ_Timer *timer, float timeout);
MQ_IOWatcher *MQ_ioWatch(MQ_Context *context, int fd, int events,
                         void (*callback)(MQ_IOWatcher *watcher, int fd, int events, void *data),
                         void *data);
void MQ_ioUnwatch(MQ_IOWatcher *watcher);

/* -- messages ------------------------------------------------------------------------------- */

/* Valid until the hook hands control back; edits are then written to the message. */
struct fjson_object *MQ_json(MQ_Message *message);
MQ_Envelope *MQ_envelope(MQ_Message *message);
void MQ_setEnvelope(MQ_Message *message, const char *envelope, size_t size);
const char *MQ_recipient(MQ_Message *message);
void MQ_setRecipient(MQ_Message *message, const char *recipient, size_t size);
const char *MQ_mime(MQ_Message *message);
void MQ_setMime(MQ_Message *message, const char *mime, size_t size);
bool MQ_local(MQ_Message *message);
void MQ_setLocal(MQ_Message *message, bool local);

/* -- other ---------------------------------------------------------------------------------- */

const char *MQ_email(MQ_Address *address);
void MQ_log(int priority, const char *message);

#ifdef __cplusplus
}
#endif

#endif
