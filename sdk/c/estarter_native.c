/* estarter_native.c: the estarter wire protocol for native C apps. See estarter_native.h.
 *
 * libc only. Every read and write is checked (EINTR retried, short writes resumed,
 * end of file reported); every buffer is fixed-size and every copy is bounded.
 */
#define _POSIX_C_SOURCE 200809L
#include "estarter_native.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define HEADER_MAX 8192 /* as the host's DEFAULT_MAX_HEADER */
#define METHOD_MAX 128
#define ID_MAX 64

static int g_init_rc = 1; /* 1: not yet tried */
static int g_in = -1, g_out = -1;
static long g_next_id = 1;
static int g_busy, g_shutdown;
static estarter_handler g_handler;
static void *g_ctx;

static char g_msg[ESTARTER_RECV_MAX + 1];       /* the last message received */
static char g_req[ESTARTER_REQUEST_MAX + 1];    /* the message being sent */
static unsigned char g_rd[4096];                /* buffered reader of g_in */
static size_t g_rd_pos, g_rd_len;

/* ---- the channel ---------------------------------------------------------------- */

int estarter_init(void) {
    if (g_init_rc != 1) return g_init_rc;
    const char *mode = getenv("ESTARTER_MODE");
    if (mode == NULL || strcmp(mode, "hosted") != 0) return g_init_rc = ESTARTER_E_NOT_HOSTED;
    fflush(stdout);
    g_in = fcntl(0, F_DUPFD_CLOEXEC, 3);
    g_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (g_in < 0 || g_out < 0) return g_init_rc = ESTARTER_E_IO;
    /* stdout -> stderr (the app's log); stdin -> /dev/null (children cannot eat frames) */
    if (dup2(2, 1) < 0) return g_init_rc = ESTARTER_E_IO;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) {
        if (null != 0 && dup2(null, 0) < 0) {
            close(null);
            return g_init_rc = ESTARTER_E_IO;
        }
        if (null != 0) close(null);
    }
    return g_init_rc = 0;
}

static int write_all(const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(g_out, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return ESTARTER_E_IO;
        }
        if (w == 0) return ESTARTER_E_IO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Sends g_req[0..len) as one frame. */
static int send_frame(size_t len) {
    char head[40];
    int h = snprintf(head, sizeof head, "Content-Length: %zu\r\n\r\n", len);
    if (h < 0 || (size_t)h >= sizeof head) return ESTARTER_E_IO;
    int rc = write_all(head, (size_t)h);
    return rc ? rc : write_all(g_req, len);
}

/* Waits up to timeout_ms for input: 1 ready, 0 timeout, <0 error. */
static int wait_input(int timeout_ms) {
    if (g_rd_pos < g_rd_len) return 1;
    struct pollfd p = {.fd = g_in, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return ESTARTER_E_IO;
        return r > 0;
    }
}

/* One byte of input into *c: 0, or ESTARTER_E_IO at end of file or on an error. */
static int read_byte(unsigned char *c) {
    if (g_rd_pos == g_rd_len) {
        ssize_t r;
        do r = read(g_in, g_rd, sizeof g_rd); while (r < 0 && errno == EINTR);
        if (r <= 0) return ESTARTER_E_IO;
        g_rd_pos = 0;
        g_rd_len = (size_t)r;
    }
    *c = g_rd[g_rd_pos++];
    return 0;
}

/* n bytes of input; the first `keep` of them into dst, the rest dropped. */
static int read_body(char *dst, size_t n, size_t keep) {
    for (size_t i = 0; i < n;) {
        if (g_rd_pos == g_rd_len) {
            unsigned char c;
            int rc = read_byte(&c); /* refills the buffer */
            if (rc) return rc;
            if (i < keep) dst[i] = (char)c;
            i++;
            continue;
        }
        size_t take = g_rd_len - g_rd_pos;
        if (take > n - i) take = n - i;
        if (i < keep) memcpy(dst + i, g_rd + g_rd_pos, take < keep - i ? take : keep - i);
        g_rd_pos += take;
        i += take;
    }
    return 0;
}

/* The body length a header block announces (Content-Length, any case, exactly once). */
static long parse_header(char *hdr, size_t len) {
    long length = -1;
    size_t start = 0;
    while (start < len) {
        size_t end = start;
        while (end < len && !(hdr[end] == '\r' && end + 1 < len && hdr[end + 1] == '\n')) end++;
        char *line = hdr + start;
        size_t n = end - start;
        char *colon = memchr(line, ':', n);
        if (colon == NULL || colon == line) return ESTARTER_E_PROTOCOL;
        size_t name_len = (size_t)(colon - line);
        for (size_t i = 0; i < name_len; i++)
            if (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' || line[i] == '\n')
                return ESTARTER_E_PROTOCOL;
        if (name_len == 14 && strncasecmp(line, "content-length", 14) == 0) {
            if (length >= 0) return ESTARTER_E_PROTOCOL;
            char *v = colon + 1, *v_end = line + n;
            while (v < v_end && (*v == ' ' || *v == '\t')) v++;
            while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t')) v_end--;
            if (v == v_end || v_end - v > 12) return ESTARTER_E_PROTOCOL;
            long value = 0;
            for (char *d = v; d < v_end; d++) {
                if (*d < '0' || *d > '9') return ESTARTER_E_PROTOCOL;
                value = value * 10 + (*d - '0');
            }
            length = value;
        }
        start = end + 2;
    }
    return length < 0 ? ESTARTER_E_PROTOCOL : length;
}

/* Reads one frame into g_msg (NUL-terminated). *len: the bytes kept; *whole: the
 * body's real size (above ESTARTER_RECV_MAX when it was cut). */
static int read_frame(size_t *len, size_t *whole) {
    char hdr[HEADER_MAX + 4];
    size_t h = 0;
    for (;;) {
        unsigned char c;
        int rc = read_byte(&c);
        if (rc) return rc;
        if (h >= sizeof hdr) return ESTARTER_E_PROTOCOL;
        hdr[h++] = (char)c;
        if (h >= 4 && memcmp(hdr + h - 4, "\r\n\r\n", 4) == 0) break;
    }
    long n = parse_header(hdr, h - 4);
    if (n < 0) return (int)n;
    size_t keep = (size_t)n > ESTARTER_RECV_MAX ? ESTARTER_RECV_MAX : (size_t)n;
    int rc = read_body(g_msg, (size_t)n, keep);
    if (rc) return rc;
    g_msg[keep] = '\0';
    *len = keep;
    *whole = (size_t)n;
    return 0;
}

/* ---- JSON ---------------------------------------------------------------------- */

static size_t skip_ws(const char *s, size_t i, size_t n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* The index just after the string starting at s[i] == '"', or n if unterminated. */
static size_t skip_string(const char *s, size_t i, size_t n) {
    for (i++; i < n; i++) {
        if (s[i] == '\\') i++;
        else if (s[i] == '"') return i + 1;
    }
    return n;
}

/* The index just after the value starting at s[i] (no recursion: depth is counted). */
static size_t skip_value(const char *s, size_t i, size_t n) {
    if (i >= n) return n;
    if (s[i] == '"') return skip_string(s, i, n);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < n) {
            char c = s[i];
            if (c == '"') { i = skip_string(s, i, n); continue; }
            if (c == '{' || c == '[') depth++;
            else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            i++;
        }
        return n;
    }
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t'
           && s[i] != '\r' && s[i] != '\n')
        i++;
    return i;
}

int estarter_json_get(const char *json, size_t len, const char *key, const char **value,
                      size_t *value_len) {
    if (json == NULL || key == NULL || value == NULL || value_len == NULL) return -1;
    size_t klen = strlen(key), i = skip_ws(json, 0, len);
    if (i >= len || json[i] != '{') return -1;
    i = skip_ws(json, i + 1, len);
    while (i < len && json[i] == '"') {
        size_t k_end = skip_string(json, i, len);
        if (k_end >= len) return -1;
        int match = k_end - i - 2 == klen && memcmp(json + i + 1, key, klen) == 0;
        i = skip_ws(json, k_end, len);
        if (i >= len || json[i] != ':') return -1;
        i = skip_ws(json, i + 1, len);
        size_t v_end = skip_value(json, i, len);
        if (v_end == i || v_end > len) return -1;
        if (match) {
            *value = json + i;
            *value_len = v_end - i;
            return 0;
        }
        i = skip_ws(json, v_end, len);
        if (i < len && json[i] == ',') i = skip_ws(json, i + 1, len);
        else break;
    }
    return -1;
}

/* Copies a member's raw text into dst (NUL-terminated): 0, or -1 if absent or too long. */
static int member(const char *json, size_t len, const char *key, char *dst, size_t cap) {
    const char *v;
    size_t n;
    if (estarter_json_get(json, len, key, &v, &n) != 0 || n >= cap) return -1;
    memcpy(dst, v, n);
    dst[n] = '\0';
    return 0;
}

static int plain_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= METHOD_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Appends s to g_req at *w as a JSON string body: escapes, and U+FFFD for each byte that
 * is not UTF-8 (the host would refuse the message). Stops at a character boundary
 * when `cap` is reached. */
static void put_escaped(size_t *w, size_t cap, const char *s) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        char tmp[8];
        size_t t = 0, adv = 1;
        unsigned char c = *p;
        if (c == '"' || c == '\\') { tmp[t++] = '\\'; tmp[t++] = (char)c; }
        else if (c == '\n') { tmp[t++] = '\\'; tmp[t++] = 'n'; }
        else if (c == '\t') { tmp[t++] = '\\'; tmp[t++] = 't'; }
        else if (c < 0x20 || c == 0x7f) {
            memcpy(tmp, "\\u00", 4); t = 4;
            tmp[t++] = hex[c >> 4]; tmp[t++] = hex[c & 15];
        } else if (c < 0x80) tmp[t++] = (char)c;
        else {
            size_t need = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            if (c >= 0xf5) need = 0;
            size_t k = 1;
            while (need && k < need && (p[k] & 0xc0) == 0x80) k++;
            /* no overlongs or surrogates: check the second byte's range */
            if (need && k == need) {
                unsigned char d = p[1];
                if ((c == 0xe0 && d < 0xa0) || (c == 0xed && d > 0x9f) ||
                    (c == 0xf0 && d < 0x90) || (c == 0xf4 && d > 0x8f))
                    need = 0;
            }
            if (need && k == need) { memcpy(tmp, p, need); t = need; adv = need; }
            else { memcpy(tmp, "\\ufffd", 6); t = 6; }
        }
        if (*w + t > cap) return;
        memcpy(g_req + *w, tmp, t);
        *w += t;
        p += adv;
    }
}

/* ---- messages ------------------------------------------------------------------- */

/* Answers request `id` (raw JSON) with a result or an error text. */
static int reply(const char *id, const char *result_json, int code, const char *message) {
    int n = result_json
        ? snprintf(g_req, sizeof g_req, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":%s}", id,
                   result_json)
        : snprintf(g_req, sizeof g_req,
                   "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":%d,\"message\":\"%s\"}}",
                   id, code, message);
    if (n < 0 || (size_t)n >= sizeof g_req) return ESTARTER_E_NO_ROOM;
    return send_frame((size_t)n);
}

/* Handles a host message that is not the answer being waited for. */
static int dispatch(size_t len) {
    char method[METHOD_MAX + 2], id[ID_MAX];
    if (member(g_msg, len, "method", method, sizeof method) != 0) return 0; /* a stale answer */
    size_t m = strlen(method);
    if (m < 2 || method[0] != '"' || method[m - 1] != '"') return 0;
    memmove(method, method + 1, m - 2);
    method[m - 2] = '\0';
    int is_request = member(g_msg, len, "id", id, sizeof id) == 0;
    if (!is_request) {
        if (g_handler) {
            g_busy = 1;
            g_handler(g_ctx, method, NULL, g_msg, len);
            g_busy = 0;
        }
        return 0;
    }
    if (strcmp(method, "app.shutdown") != 0)
        return reply(id, NULL, -32601, "method not found");
    if (g_handler == NULL) {
        reply(id, "{}", 0, NULL);
        exit(0);
    }
    g_busy = 1;
    g_handler(g_ctx, method, id, g_msg, len);
    g_busy = 0;
    g_shutdown = 1;
    return reply(id, "{}", 0, NULL);
}

/* Builds {"jsonrpc":"2.0",[id,]"method":M,"params":P} in g_req; returns its length. */
static int build(const char *method, const char *params_json, long id) {
    if (method == NULL) return ESTARTER_E_BOUNDS;
    if (!plain_name(method)) return ESTARTER_E_NOT_JSON;
    const char *params = params_json ? params_json : "{}";
    size_t i = 0;
    while (params[i] == ' ' || params[i] == '\t' || params[i] == '\r' || params[i] == '\n') i++;
    if (params[i] != '{' && params[i] != '[') return ESTARTER_E_NOT_JSON;
    char ids[32] = "";
    if (id > 0) snprintf(ids, sizeof ids, "\"id\":%ld,", id);
    size_t plen = strlen(params);
    int head = snprintf(g_req, sizeof g_req, "{\"jsonrpc\":\"2.0\",%s\"method\":\"%s\",\"params\":",
                        ids, method);
    if (head < 0 || (size_t)head + plen + 1 > ESTARTER_REQUEST_MAX) return ESTARTER_E_NO_ROOM;
    memcpy(g_req + head, params, plen);
    g_req[head + plen] = '}';
    return head + (int)plen + 1;
}

static int ready(void) {
    if (g_busy) return ESTARTER_E_REENTRANT;
    return estarter_init();
}

int estarter_notify(const char *method, const char *params_json) {
    int rc = ready();
    if (rc) return rc;
    int n = build(method, params_json, 0);
    return n < 0 ? n : send_frame((size_t)n);
}

int estarter_log(int level, const char *message) {
    static const char *const names[] = {"debug", "info", "warning", "error"};
    int rc = ready();
    if (rc) return rc;
    if (message == NULL) return ESTARTER_E_BOUNDS;
    const char *name = level >= 0 && level <= 3 ? names[level] : "info";
    int head = snprintf(g_req, sizeof g_req,
                        "{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"level\":\"%s\","
                        "\"message\":\"", name);
    if (head < 0) return ESTARTER_E_IO;
    size_t w = (size_t)head;
    put_escaped(&w, ESTARTER_REQUEST_MAX - 3, message);
    memcpy(g_req + w, "\"}}", 3);
    return send_frame(w + 3);
}

int estarter_call(const char *method, const char *params_json, char *out, int out_len) {
    int rc = ready();
    if (rc) return rc;
    if (out == NULL || out_len <= 0) return ESTARTER_E_BOUNDS;
    long id = g_next_id++;
    int n = build(method, params_json, id);
    if (n < 0) return n;
    if ((rc = send_frame((size_t)n)) != 0) return rc;
    char want[32], got[ID_MAX];
    snprintf(want, sizeof want, "%ld", id);
    for (;;) {
        size_t len, whole;
        const char *v;
        size_t vn;
        if ((rc = read_frame(&len, &whole)) != 0) return rc;
        int has_method = estarter_json_get(g_msg, len, "method", &v, &vn) == 0;
        /* The host writes "id" after "result": in a cut message it may be lost. One
         * call is outstanding at a time, so a cut message without "method" is ours. */
        int ours = !has_method && (whole > len || (member(g_msg, len, "id", got, sizeof got) == 0
                                                   && strcmp(got, want) == 0));
        if (!ours) {
            if (whole == len && (rc = dispatch(len)) != 0) return rc;
            continue;
        }
        size_t copy = len < (size_t)out_len - 1 ? len : (size_t)out_len - 1;
        memcpy(out, g_msg, copy);
        out[copy] = '\0';
        if (whole > len) return ESTARTER_E_TOO_LARGE;
        return copy < len ? ESTARTER_E_TRUNCATED : (int)copy;
    }
}

void estarter_on_message(estarter_handler handler, void *ctx) {
    g_handler = handler;
    g_ctx = ctx;
}

int estarter_shutdown_requested(void) { return g_shutdown; }

int estarter_poll(int timeout_ms) {
    int rc = ready();
    if (rc) return rc;
    if ((rc = wait_input(timeout_ms)) <= 0) return rc;
    size_t len, whole;
    if ((rc = read_frame(&len, &whole)) != 0) return rc;
    if (whole == len && (rc = dispatch(len)) != 0) return rc;
    return 1;
}
