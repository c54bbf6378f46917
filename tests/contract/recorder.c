/* The contract recorder in C (tests/contract/recorder.py is the same plugin in Python): one line
   per hook in $MQ_TEST_RECORD, "hook context connection thread extra...", and a refusal at the
   hook named by $MQ_TEST_REFUSE.  In mq_smtp_in_message it edits the JSON through libfastjson. */
#include <libfastjson/json.h>
#include "record.h"

static bool step(const char *hook, MQ_Context *ctx, MQ_Connection *conn, const char *extra)
{
    record(hook, ctx, conn, extra);
    const char *refuse = getenv("MQ_TEST_REFUSE");
    if (refuse != NULL && strcmp(refuse, hook) == 0) {
        char text[64];
        snprintf(text, sizeof text, "refused at %s", hook);
        MQ_setResponse(conn, strcmp(hook, "mailfrom") == 0 || strcmp(hook, "rcptto") == 0 ? 550 : 554,
                       text, "5.7.1");
    }
    return false;
}

MQ_EXPORT int mq_version(void) { return MQ_API_VERSION; }

MQ_EXPORT void mq_context_initialize(MQ_Context *ctx) { record("context_initialize", ctx, NULL, NULL); }
MQ_EXPORT void mq_context_cleanup(MQ_Context *ctx) { record("context_cleanup", ctx, NULL, NULL); }

MQ_EXPORT bool mq_smtp_in_connect(MQ_Context *ctx, MQ_Connection *conn) { return step("connect", ctx, conn, NULL); }

MQ_EXPORT bool mq_smtp_in_secure(MQ_Context *ctx, MQ_Connection *conn)
{
    return step("secure", ctx, conn, MQ_secure(conn) ? "1" : "0");
}

MQ_EXPORT bool mq_smtp_in_authenticate(MQ_Context *ctx, MQ_Connection *conn, const char *login,
                                       size_t loginsize, const char *password, size_t passwordsize)
{
    char extra[256];
    snprintf(extra, sizeof extra, "%.*s %.*s", (int)loginsize, login, (int)passwordsize, password);
    return step("authenticate", ctx, conn, extra);
}

MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    char extra[256];
    const char *email = MQ_email(address);
    snprintf(extra, sizeof extra, "%s %d", email ? email : "-", MQ_authenticated(conn) ? 1 : 0);
    return step("mailfrom", ctx, conn, extra);
}

MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    return step("rcptto", ctx, conn, MQ_email(address));
}

MQ_EXPORT bool mq_smtp_in_data(MQ_Context *ctx, MQ_Connection *conn, const char *mime, size_t size)
{
    char *hex = malloc(2 * size + 1);
    for (size_t i = 0; i < size; i++) sprintf(hex + 2 * i, "%02x", (unsigned char)mime[i]);
    hex[2 * size] = '\0';
    bool verdict = step("data", ctx, conn, hex);
    free(hex);
    return verdict;
}

MQ_EXPORT bool mq_smtp_in_message(MQ_Context *ctx, MQ_Connection *conn, MQ_Message *message)
{
    struct fjson_object *json = MQ_json(message), *tags;
    if (!fjson_object_object_get_ex(json, "tags", &tags)) {
        tags = fjson_object_new_array();
        fjson_object_object_add(json, "tags", tags);
    }
    fjson_object_array_add(tags, fjson_object_new_string("recorded"));
    fjson_object_object_add(json, "recorder-saw", fjson_object_new_string(MQ_recipient(message)));
    return step("message", ctx, conn, MQ_recipient(message));
}

MQ_EXPORT bool mq_smtp_in_close(MQ_Context *ctx, MQ_Connection *conn) { return step("close", ctx, conn, NULL); }
