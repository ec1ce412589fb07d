/* estarter.h: the estarter ABI for C guests compiled to wasm32-wasi (header only).
 *
 * Imports, from module "estarter" (see DESIGN.md, "WebAssembly ABI"):
 *   log(level, ptr, len)                       one UTF-8 log line
 *   api_call(req_ptr, req_len) -> i32          performs {"method","params"}; returns the
 *                                              response length, or a negative ABI error
 *   api_response(buf_ptr, buf_len) -> i32      copies the kept response; returns bytes copied
 *
 * The response is JSON: {"result": ...} or {"error": {"code", "message", "data"?}}.
 */
#ifndef ESTARTER_H
#define ESTARTER_H

#include <stddef.h>
#include <string.h>

#define ESTARTER_DEBUG 0
#define ESTARTER_INFO 1
#define ESTARTER_WARNING 2
#define ESTARTER_ERROR 3

/* Negative results of estarter_call (and of the raw imports). */
#define ESTARTER_E_BOUNDS (-1)     /* a pointer or length outside memory */
#define ESTARTER_E_TOO_LARGE (-2)  /* request over the host's cap (1 MiB) */
#define ESTARTER_E_NOT_JSON (-3)   /* not JSON, or no string "method" */
#define ESTARTER_E_NO_ROOM (-4)    /* (wrapper) the request did not fit its buffer */
#define ESTARTER_E_TRUNCATED (-5)  /* (wrapper) out was too small; out holds a prefix */

#define ESTARTER_IMPORT(name) \
    __attribute__((import_module("estarter"), import_name(name)))

ESTARTER_IMPORT("log") void __estarter_log(int level, const char *ptr, int len);
ESTARTER_IMPORT("api_call") int __estarter_api_call(const char *req, int req_len);
ESTARTER_IMPORT("api_response") int __estarter_api_response(char *buf, int buf_len);

#ifndef ESTARTER_REQUEST_MAX
#define ESTARTER_REQUEST_MAX 4096 /* the wrapper's request buffer, on the stack */
#endif

static inline void estarter_log(int level, const char *message) {
    __estarter_log(level, message, (int)strlen(message));
}

/* Calls `method` with `params_json` (a JSON object text, or NULL for {}). Writes the
 * response JSON, NUL-terminated, into `out` and returns its length, or a negative
 * ESTARTER_E_* error. method must be a plain name (it is not JSON-escaped). */
static inline int estarter_call(const char *method, const char *params_json, char *out,
                                int out_len) {
    static const char head[] = "{\"method\":\"", mid[] = "\",\"params\":";
    char req[ESTARTER_REQUEST_MAX];
    size_t m = strlen(method), p = params_json ? strlen(params_json) : 2;
    size_t n = sizeof head - 1 + m + sizeof mid - 1 + p + 1;
    if (n > sizeof req) return ESTARTER_E_NO_ROOM;
    char *w = req;
    memcpy(w, head, sizeof head - 1); w += sizeof head - 1;
    memcpy(w, method, m); w += m;
    memcpy(w, mid, sizeof mid - 1); w += sizeof mid - 1;
    memcpy(w, params_json ? params_json : "{}", p); w += p;
    *w++ = '}';
    int len = __estarter_api_call(req, (int)(w - req));
    if (len < 0) return len;
    if (out_len <= 0) return ESTARTER_E_TRUNCATED;
    int got = __estarter_api_response(out, out_len - 1);
    if (got < 0) return got;
    out[got] = '\0';
    return got < len ? ESTARTER_E_TRUNCATED : got;
}

/* system.heartbeat: an app whose manifest has a healthCheck calls this at least every
 * heartbeatSeconds, or it is ended (exit reason unresponsive). Returns estarter_call's
 * value (the response's length, or a negative ESTARTER_E_* error). */
static inline int estarter_heartbeat(void) {
    char out[128];
    return estarter_call("system.heartbeat", NULL, out, (int)sizeof out);
}

#endif /* ESTARTER_H */
