/* Drives sdk/c/estarter_native.c against the fake host of tests/host/test_c_sdk.py.
 * Built with -DESTARTER_RECV_MAX=256. Reports each outcome as a log line. */
#include <stdio.h>
#include <string.h>

#include "estarter_native.h"

static char noted[256];

static void on_message(void *ctx, const char *method, const char *id, const char *msg,
                       size_t len) {
    (void)ctx; (void)id; (void)msg; (void)len;
    size_t used = strlen(noted);
    snprintf(noted + used, sizeof noted - used, "%s;", method);
}

static void report(const char *what, int rc, const char *out) {
    char line[512];
    snprintf(line, sizeof line, "%s rc=%d out=%s", what, rc, out);
    estarter_log(ESTARTER_INFO, line);
}

int main(int argc, char **argv) {
    char out[128];
    int rc = estarter_init();
    if (rc != 0) {
        fprintf(stderr, "init %d\n", rc);
        return 2;
    }
    if (argc > 1 && strcmp(argv[1], "garbage") == 0) {
        rc = estarter_call("t.one", NULL, out, sizeof out);
        report("garbage", rc, "");
        return 3;
    }
    estarter_on_message(on_message, NULL);
    rc = estarter_call("t.one", "{\"a\":1}", out, sizeof out);
    report("one", rc, rc >= 0 ? out : "");
    report("noted", 0, noted);
    rc = estarter_call("t.big", NULL, out, sizeof out);
    report("big", rc, "");
    rc = estarter_call("t.small", NULL, out, 8);
    report("small", rc, out);
    rc = estarter_call("t.three", NULL, out, sizeof out);
    const char *v;
    size_t n;
    if (rc >= 0 && estarter_json_get(out, (size_t)rc, "result", &v, &n) == 0)
        snprintf(out, sizeof out, "%.*s", (int)n, v);
    report("three", rc, out);
    report("bad-method", estarter_call("bad name", NULL, out, sizeof out), "");
    report("bad-params", estarter_call("t.x", "oops", out, sizeof out), "");
    estarter_log(ESTARTER_WARNING, "ctl\x01 quote\" nl\n bad\xff end\xe2\x82");
    printf("printed\n"); /* goes to stderr now, never into a frame */
    fflush(stdout);
    estarter_on_message(NULL, NULL);
    rc = estarter_poll(-1); /* app.shutdown without a handler: answered, exit 0 */
    report("after-shutdown", rc, "");
    return 4;
}
