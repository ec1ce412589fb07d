/* estarter_native.h: the estarter wire protocol for native C apps (runtime "native").
 *
 * A hosted native app speaks JSON-RPC 2.0 to its host over stdin/stdout, each
 * message framed as "Content-Length: N\r\n\r\n" + N bytes of UTF-8 JSON (DESIGN.md,
 * "Wire protocol of hosted native apps"). No hello is needed: the first request
 * may be sent at once. Link estarter_native.c with the app (libc only):
 *
 *     cc -O2 -o app app.c estarter_native.c
 *
 * The names match estarter.h (the wasm ABI), so one app.c builds for both runtimes:
 * estarter_call writes the response JSON ({"jsonrpc","id","result"} or
 * {..., "error": {"code", "message", "data"?}}) into `out`, NUL-terminated.
 *
 * estarter_init (called by the first function below if the app did not) moves the
 * protocol off fds 0 and 1: stdout then goes to stderr (the app's log), so printf
 * cannot corrupt a frame, and stdin reads /dev/null. Call it first in main.
 *
 * Every buffer is bounded: a request above ESTARTER_REQUEST_MAX or a received message
 * above ESTARTER_RECV_MAX is refused (the oversized message is read and dropped, its
 * first bytes kept). Not thread-safe: call from one thread.
 */
#ifndef ESTARTER_NATIVE_H
#define ESTARTER_NATIVE_H

#include <stddef.h>

#define ESTARTER_DEBUG 0
#define ESTARTER_INFO 1
#define ESTARTER_WARNING 2
#define ESTARTER_ERROR 3

/* Negative results (the first five as in estarter.h). */
#define ESTARTER_E_BOUNDS (-1)      /* a NULL pointer or a negative length */
#define ESTARTER_E_TOO_LARGE (-2)   /* a message over ESTARTER_REQUEST_MAX / _RECV_MAX */
#define ESTARTER_E_NOT_JSON (-3)    /* method not a plain name, params not an object/array */
#define ESTARTER_E_NO_ROOM (-4)     /* the request did not fit the request buffer */
#define ESTARTER_E_TRUNCATED (-5)   /* out was too small; out holds a prefix */
#define ESTARTER_E_IO (-6)          /* reading or writing the channel failed, or it closed */
#define ESTARTER_E_PROTOCOL (-7)    /* the host sent a malformed frame */
#define ESTARTER_E_NOT_HOSTED (-8)  /* ESTARTER_MODE is not "hosted" */
#define ESTARTER_E_REENTRANT (-9)   /* called from inside a message handler */

#ifndef ESTARTER_REQUEST_MAX
#define ESTARTER_REQUEST_MAX 65536   /* bytes of one outgoing message body */
#endif
#ifndef ESTARTER_RECV_MAX
#define ESTARTER_RECV_MAX 1048576    /* bytes of one incoming message body */
#endif

/* Takes the protocol channel (see above). Returns 0, or ESTARTER_E_NOT_HOSTED /
 * ESTARTER_E_IO. Safe to call more than once. */
int estarter_init(void);

/* One line to the app's log (a "log" notification); the message is JSON-escaped
 * here and cut at ESTARTER_REQUEST_MAX. Returns 0 or a negative error. */
int estarter_log(int level, const char *message);

/* Calls `method` (a plain name like "system.ping") with `params_json` (a JSON
 * object or array text, or NULL for {}) and waits for the answer, dispatching host
 * messages that come first (see estarter_on_message). Writes the response message,
 * NUL-terminated, into out and returns its length, or a negative error. */
int estarter_call(const char *method, const char *params_json, char *out, int out_len);

/* Sends a notification (no answer). Returns 0 or a negative error. */
int estarter_notify(const char *method, const char *params_json);

/* Host-to-app messages: notifications ipc.message / system.event and the request
 * app.shutdown {graceSeconds}. `id` is NULL for a notification. A handler runs
 * inside estarter_call / estarter_poll and must not call them itself. Without a
 * handler, app.shutdown is answered and the app exits 0; with one, it is answered
 * after the handler returns and estarter_shutdown_requested() turns 1. Other
 * requests are answered "method not found". */
typedef void (*estarter_handler)(void *ctx, const char *method, const char *id,
                                 const char *message, size_t len);
void estarter_on_message(estarter_handler handler, void *ctx);
int estarter_shutdown_requested(void);

/* Waits up to timeout_ms (-1: forever) for one host message and dispatches it.
 * Returns 1 if one was handled, 0 on timeout, or a negative error (ESTARTER_E_IO
 * when the host closed the channel). */
int estarter_poll(int timeout_ms);

/* Finds `key` among the top-level members of the JSON object `json` (len bytes)
 * and sets *value / *value_len to its raw JSON text. Returns 0, or -1 if absent or
 * the text is not an object. Strings keep their quotes and escapes. */
int estarter_json_get(const char *json, size_t len, const char *key, const char **value,
                      size_t *value_len);

#endif /* ESTARTER_NATIVE_H */
