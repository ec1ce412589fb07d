/* hello-wasm: logs, calls system.ping, shows a notification, exits 0. */
#include <stdio.h>
#include <string.h>

#include "../../sdk/c/estarter.h"

int main(int argc, char **argv) {
    char response[1024];
    estarter_log(ESTARTER_INFO, "hello from wasm");
    printf("running as %s\n", argc > 0 ? argv[0] : "?");

    int n = estarter_call("system.ping", NULL, response, sizeof response);
    if (n < 0 || strstr(response, "\"pong\":true") == NULL) {
        fprintf(stderr, "system.ping failed (%d): %s\n", n, n >= 0 ? response : "");
        return 1;
    }
    estarter_log(ESTARTER_INFO, response);

    n = estarter_call("ui.notify",
                      "{\"title\":\"hello-wasm\",\"message\":\"Hello from WebAssembly!\"}",
                      response, sizeof response);
    if (n < 0 || strstr(response, "\"result\"") == NULL) {
        fprintf(stderr, "ui.notify failed (%d): %s\n", n, n >= 0 ? response : "");
        return 1;
    }
    estarter_log(ESTARTER_INFO, "notification shown; bye");
    return 0;
}
