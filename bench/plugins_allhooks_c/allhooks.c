/* Benchmark plugin, the C twin of bench/plugins_allhooks/allhooks.py: all eight inbound hooks,
   each passing control on.  The bench compiles it with cc into a fresh plugin directory. */
#include "mqtwisted.h"

MQ_EXPORT int mq_version(void) { return MQ_API_VERSION; }

MQ_EXPORT bool mq_smtp_in_connect(MQ_Context *x, MQ_Connection *c) { return false; }
MQ_EXPORT bool mq_smtp_in_secure(MQ_Context *x, MQ_Connection *c) { return false; }
MQ_EXPORT bool mq_smtp_in_authenticate(MQ_Context *x, MQ_Connection *c, const char *login,
                                       size_t loginsize, const char *password, size_t passwordsize)
{
    return false;
}
MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *x, MQ_Connection *c, MQ_Address *a) { return false; }
MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *x, MQ_Connection *c, MQ_Address *a) { return false; }
MQ_EXPORT bool mq_smtp_in_data(MQ_Context *x, MQ_Connection *c, const char *mime, size_t size)
{
    return false;
}
MQ_EXPORT bool mq_smtp_in_message(MQ_Context *x, MQ_Connection *c, MQ_Message *m) { return false; }
MQ_EXPORT bool mq_smtp_in_close(MQ_Context *x, MQ_Connection *c) { return false; }
