/*
 *  blockdomain.c: refuses recipients at the domains of a block list, with MQ_setResponse.
 *
 *  The list is the MQ_BLOCKED_DOMAINS environment variable, a comma list (default
 *  "blocked.example"), read once in mq_initialize.  Build and run:
 *
 *      cc -shared -fPIC -I"$(mqmta plugin-header)" -o plugins/blockdomain.so plugins/blockdomain.c
 *      MQ_BLOCKED_DOMAINS=spam.example,junk.example twistd -n mqmta --plugin-directory plugins
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "mqtwisted.h"

/* Written once before any worker thread starts, only read afterwards: no lock needed. */
static char *domains;

MQ_EXPORT int mq_version(void) { return MQ_API_VERSION; }

MQ_EXPORT void mq_initialize(void)
{
    const char *list = getenv("MQ_BLOCKED_DOMAINS");
    domains = strdup(list != NULL ? list : "blocked.example");
}

MQ_EXPORT void mq_cleanup(void) { free(domains); }

static bool blocked(const char *domain)
{
    size_t size = strlen(domain);
    for (const char *p = domains; p != NULL && *p != '\0';) {
        const char *comma = strchr(p, ',');
        size_t length = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (length == size && strncasecmp(p, domain, size) == 0) return true;
        p = comma != NULL ? comma + 1 : NULL;
    }
    return false;
}

MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    const char *email = MQ_email(address);
    const char *at = email != NULL ? strrchr(email, '@') : NULL;
    if (at != NULL && blocked(at + 1)) {
        char line[512];
        snprintf(line, sizeof line, "refused %s: its domain is blocked", email);
        MQ_log(MQ_INFO, line);
        MQ_setResponse(connection, 550, "Recipient's domain is blocked here", "5.7.1");
    }
    /* false: control stays with mqmta, the next plugin runs */
    return false;
}
