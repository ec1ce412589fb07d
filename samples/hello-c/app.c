/* hello-c: a native app in C speaking the wire protocol through sdk/c.
 * Pings the kernel, asks for system.info (if granted), logs what it sees of its
 * sandbox, shows a notification and exits 0. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../../sdk/c/estarter_native.h"

/* The "Seccomp:" mode of this process (2: a filter), or -1 if /proc cannot say. */
static int seccomp_mode(void) {
    char line[256];
    int mode = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp: %d", &mode) == 1) break;
    fclose(f);
    return mode;
}

int main(void) {
    char response[4096], line[512];
    int rc = estarter_init();
    if (rc != 0) {
        fprintf(stderr, "hello-c: not hosted by estarter (%d)\n", rc);
        return 2;
    }
    int n = estarter_call("system.ping", NULL, response, sizeof response);
    if (n < 0 || strstr(response, "\"pong\":true") == NULL) {
        fprintf(stderr, "system.ping failed (%d): %s\n", n, n >= 0 ? response : "");
        return 1;
    }
    estarter_log(ESTARTER_INFO, "hello from C: ping answered");

    n = estarter_call("system.info", NULL, response, sizeof response);
    const char *result;
    size_t len;
    if (n >= 0 && estarter_json_get(response, (size_t)n, "result", &result, &len) == 0) {
        snprintf(line, sizeof line, "system.info: %.*s", (int)(len < 400 ? len : 400), result);
    } else if (n >= 0 && strstr(response, "-32001") != NULL) {
        snprintf(line, sizeof line, "system.info: not granted (-32001)");
    } else {
        fprintf(stderr, "system.info failed (%d): %s\n", n, n >= 0 ? response : "");
        return 1;
    }
    estarter_log(ESTARTER_INFO, line);

    snprintf(line, sizeof line, "sandbox: uid=%d seccomp=%d", (int)getuid(), seccomp_mode());
    estarter_log(ESTARTER_INFO, line);

    n = estarter_call("ui.notify",
                      "{\"title\":\"hello-c\",\"message\":\"Hello from C!\"}",
                      response, sizeof response);
    if (n < 0 || strstr(response, "\"result\"") == NULL) {
        fprintf(stderr, "ui.notify failed (%d): %s\n", n, n >= 0 ? response : "");
        return 1;
    }
    printf("stdout still works: it goes to the app's log\n");
    return 0;
}
