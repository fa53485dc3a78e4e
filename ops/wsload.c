/*
 * The C engine of ops/wsload.py: the same websocket load client, in one epoll loop per process.
 *
 * The load generator shares the machine with the servers it measures: every microsecond it spends
 * reading a message is taken from them. This engine reads a delivered message for a fraction of the
 * Python engine's CPU and reports exactly what a Python worker reports (see ops/wsload_c.py, which
 * builds it with the machine's C compiler and drives it).
 *
 * Protocol on stdin (one line each, fields separated by one space):
 *   setup:      MODE FIRST COUNT CONCURRENCY NCONNS NKINDS KIND...
 *   NCONNS x:   KINDINDEX EXPECTED DEFLATE HOST PORT PATH NHELLO HEXFRAME...
 *   then:       "status" (answers one JSON line) or "stop" (closes every connection with 1000, reads
 *               0.3 s more, answers one JSON line whose "blobs" gives the byte lengths of the raw
 *               latency_kept, index_kept and latency_other arrays written right after it, then exits).
 *
 * What it does as a client: an HTTP/1.1 upgrade with a random key (offering permessage-deflate as a
 * browser does when DEFLATE is 1), masked frames out, unmasked frames in. It reads unfragmented text
 * frames, answers pings with pongs and a close with a close. A server that takes the deflate offer,
 * sends a fragment, a binary frame or a reserved bit fails the connection with an error that says so
 * (the Python engine handles those). It does not check Sec-WebSocket-Accept.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_PLAIN, M_HUB, M_SOCKETIO, M_HUBSIO };
enum { S_WAITING, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_DONE };
#define MAX_KINDS 16
#define MAX_TABLE 32
#define CLIENT_PING_S 20.0
#define CONNECT_TIMEOUT_S 60.0
#define READ_ROOM 65536
#define MAX_HEAD 65536
#define STDIN_TAG UINT64_MAX

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd, state, kind, deflate, nhello;
    char *host, *path;
    int port;
    buf_t *hello;
    long expected, last, got;
    buf_t in, out;
    unsigned char *seen;
    double *lat;
    int64_t *idx;
    size_t nlat, caplat;
    int is_ready, failed, closed, close_rcvd, opening;
    char close_code[16];
    double deadline, next_ping;
} client_t;

typedef struct {
    char *key[MAX_TABLE];
    long n[MAX_TABLE];
    int used;
} table_t;

static int mode, nkinds, concurrency, stopping, ep;
static long first, count, nconns, next_open, opening, failed, duplicates, inversions, negotiated;
static long frames, nbytes;
static long got_by_kind[MAX_KINDS], ready_by_kind[MAX_KINDS];
static char *kinds[MAX_KINDS];
static client_t *clients;
static table_t errors;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static void die(const char *why) {
    fprintf(stderr, "wsload-c: %s\n", why);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rand64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("out of memory");
    b->cap = cap;
}

static void append(buf_t *b, const void *data, size_t len) {
    reserve(b, len);
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void count_in(table_t *t, const char *key) {
    for (int i = 0; i < t->used; i++)
        if (strcmp(t->key[i], key) == 0) {
            t->n[i]++;
            return;
        }
    if (t->used == MAX_TABLE) return;
    t->key[t->used] = strdup(key);
    t->n[t->used++] = 1;
}

/* -- connections ------------------------------------------------------------------------------- */

static void watch(client_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - clients)};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl");
}

static void drop(client_t *c) {
    if (c->fd >= 0) {
        close(c->fd); /* leaves the epoll set with it */
        c->fd = -1;
    }
    c->closed = 1;
    c->state = S_DONE;
    if (c->opening) {
        c->opening = 0;
        opening--;
    }
}

/* Before ready: the connection failed (counted once, with why). After: nothing to report. */
static void fail(client_t *c, const char *why) {
    if (!c->is_ready && !c->failed) {
        c->failed = 1;
        failed++;
        count_in(&errors, why);
    }
    drop(c);
}

/* The server closed the connection (the first reason given wins). */
static void closed_by_server(client_t *c, const char *code) {
    if (!c->close_code[0]) snprintf(c->close_code, sizeof c->close_code, "%.15s", code);
}

static void lost(client_t *c, const char *why) {
    if (!c->is_ready) {
        char msg[160];
        snprintf(msg, sizeof msg, "connection lost before ready: %s", why);
        fail(c, msg);
        return;
    }
    if (!c->close_rcvd && !stopping) closed_by_server(c, "abnormal");
    drop(c);
}

static void flush_out(client_t *c) {
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            lost(c, strerror(errno));
            return;
        }
        memmove(c->out.p, c->out.p + n, c->out.len - n);
        c->out.len -= n;
    }
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
}

static void send_bytes(client_t *c, const void *data, size_t len) {
    if (c->fd < 0) return;
    if (c->out.len == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                lost(c, strerror(errno));
                return;
            }
            n = 0;
        }
        if ((size_t)n == len) return;
        data = (const char *)data + n;
        len -= n;
        watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
    }
    append(&c->out, data, len);
}

/* One masked frame, as a client sends it. */
static void send_frame(client_t *c, int opcode, const char *payload, size_t len) {
    if (c->fd < 0 || c->state != S_OPEN) return;
    unsigned char head[14];
    size_t h = 0;
    head[h++] = 0x80 | opcode;
    if (len < 126) {
        head[h++] = 0x80 | len;
    } else if (len < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = len >> 8;
        head[h++] = len & 0xFF;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) head[h++] = (len >> (8 * i)) & 0xFF;
    }
    uint32_t mask = (uint32_t)rand64();
    memcpy(head + h, &mask, 4);
    const unsigned char *m = head + h;
    h += 4;
    char stack[512];
    char *body = len <= sizeof stack ? stack : malloc(len);
    if (!body) die("out of memory");
    for (size_t i = 0; i < len; i++) body[i] = payload[i] ^ m[i & 3];
    char frame[14 + 512];
    if (len <= sizeof stack) {
        memcpy(frame, head, h);
        memcpy(frame + h, body, len);
        send_bytes(c, frame, h + len);
    } else {
        send_bytes(c, head, h);
        send_bytes(c, body, len);
        free(body);
    }
}

static void send_text(client_t *c, const char *text) { send_frame(c, 0x1, text, strlen(text)); }

static void set_ready(client_t *c) {
    if (c->is_ready) return;
    c->is_ready = 1;
    ready_by_kind[c->kind]++;
    if (c->opening) {
        c->opening = 0;
        opening--;
    }
    c->next_ping = now_s() + CLIENT_PING_S * (double)(rand64() % 1000) / 1000.0;
}

static void start(client_t *c, double now) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    c->opening = 1;
    opening++;
    c->deadline = now + CONNECT_TIMEOUT_S;
    if (getaddrinfo(c->host, port, &hints, &res) != 0 || !res) {
        fail(c, "OSError: cannot resolve the host");
        return;
    }
    c->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        freeaddrinfo(res);
        fail(c, "OSError: socket");
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(c->fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc < 0 && errno != EINPROGRESS) {
        char msg[160];
        snprintf(msg, sizeof msg, "ConnectionRefusedError: %s", strerror(errno));
        fail(c, msg);
        return;
    }
    c->state = S_CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void send_request(client_t *c) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char raw[18] = {0};
    char key[25];
    for (int i = 0; i < 16; i++) raw[i] = rand64() & 0xFF;
    for (int i = 0, o = 0; i < 18; i += 3) {
        uint32_t v = raw[i] << 16 | raw[i + 1] << 8 | raw[i + 2];
        key[o++] = b64[v >> 18 & 63];
        key[o++] = b64[v >> 12 & 63];
        key[o++] = b64[v >> 6 & 63];
        key[o++] = b64[v & 63];
    }
    key[22] = key[23] = '=';
    key[24] = 0;
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s"
                     "User-Agent: tickstock-wsload-c\r\n\r\n",
                     c->path, c->host, c->port, key,
                     c->deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
    if (n <= 0 || n >= (int)sizeof req) {
        fail(c, "OSError: request too long");
        return;
    }
    c->state = S_HANDSHAKE;
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
    send_bytes(c, req, n);
}

static void on_connected(client_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        char msg[160];
        snprintf(msg, sizeof msg, "ConnectionRefusedError: %s", strerror(err));
        fail(c, msg);
        return;
    }
    send_request(c);
}

/* -- messages ---------------------------------------------------------------------------------- */

/* The digits after the first `"name":` (spaces allowed) that has any; -1 if none. */
static const char *find_value(const char *data, size_t len, const char *name, size_t from) {
    size_t nlen = strlen(name);
    const char *end = data + len, *p = data + from;
    while (p < end) {
        const char *hit = memmem(p, end - p, name, nlen);
        if (!hit) return NULL;
        const char *v = hit + nlen;
        while (v < end && isspace((unsigned char)*v)) v++;
        if (v < end && (isdigit((unsigned char)*v) || *v == '"')) return v;
        p = hit + 1;
    }
    return NULL;
}

static void on_event(client_t *c, const char *data, size_t len, double now) {
    const char *end = data + len, *v = find_value(data, len, "\"bench_i\":", 0);
    if (!v || !isdigit((unsigned char)*v)) return;
    long i = 0;
    while (v < end && isdigit((unsigned char)*v)) i = i * 10 + (*v++ - '0');
    i -= first;
    if (i < 0 || i >= count) return;
    if (c->seen[i]) {
        duplicates++;
        return;
    }
    c->seen[i] = 1;
    if (i < c->last) inversions++;
    c->last = i;
    c->got++;
    got_by_kind[c->kind]++;
    const char *t = find_value(data, len, "\"bench_t0\":", v - data);
    if (!t) t = find_value(data, len, "\"bench_t0\":", 0);
    if (!t || !isdigit((unsigned char)*t)) return;
    char num[40];
    size_t k = 0;
    while (t < end && k < sizeof num - 1 && (isdigit((unsigned char)*t) || *t == '.')) num[k++] = *t++;
    num[k] = 0;
    if (c->nlat == c->caplat) {
        c->caplat = c->caplat ? c->caplat * 2 : 64;
        c->lat = realloc(c->lat, c->caplat * sizeof *c->lat);
        c->idx = realloc(c->idx, c->caplat * sizeof *c->idx);
        if (!c->lat || !c->idx) die("out of memory");
    }
    c->lat[c->nlat] = (now - strtod(num, NULL)) * 1000.0;
    c->idx[c->nlat++] = i;
}

static int starts(const char *data, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(data, prefix, n) == 0;
}

/* The string value of `"name": "..."` into out (empty if none). */
static void string_value(const char *data, size_t len, const char *name, char *out, size_t size) {
    out[0] = 0;
    const char *v = find_value(data, len, name, 0), *end = data + len;
    if (!v || *v != '"') return;
    size_t k = 0;
    for (v++; v < end && *v != '"' && k < size - 1; v++)
        out[k++] = (isalnum((unsigned char)*v) || *v == '_' || *v == '-' || *v == '.') ? *v : '?';
    out[k] = 0;
}

static void on_hubsio(client_t *c, const char *data, size_t len, double now) {
    char code[64];
    if (starts(data, len, "42[\"pattern_alert\"")) {
        on_event(c, data, len, now);
    } else if (len == 1 && data[0] == '2') {
        send_text(c, "3");
    } else if (starts(data, len, "42[\"connection_confirmed\"")) {
        for (int h = 1; h < c->nhello; h++) send_frame(c, 0x1, c->hello[h].p, c->hello[h].len);
        if (c->nhello < 2) set_ready(c);
    } else if (starts(data, len, "42[\"subscribed\"")) {
        set_ready(c);
    } else if (starts(data, len, "42[\"error\"")) {
        string_value(data, len, "\"code\":", code, sizeof code);
        count_in(&errors, code[0] ? code : "?");
        if (!c->is_ready) fail(c, "error event");
    } else if (starts(data, len, "42[\"closing\"")) {
        if (!stopping) {
            const char *v = find_value(data, len, "\"code\":", 0);
            size_t k = 0;
            while (v && v + k < data + len && k < 15 && isdigit((unsigned char)v[k])) k++;
            snprintf(code, sizeof code, "%.*s", (int)k, v ? v : "");
            closed_by_server(c, k ? code : "?");
        }
    } else if (len >= 1 && data[0] == '0') {
        if (c->nhello)
            send_frame(c, 0x1, c->hello[0].p, c->hello[0].len);
        else
            send_text(c, "40");
    } else if (starts(data, len, "44")) {
        fail(c, "namespace refused");
    }
}

static void on_text(client_t *c, const char *data, size_t len, double now) {
    frames++;
    if (mode == M_HUBSIO) {
        on_hubsio(c, data, len, now);
        return;
    }
    if (mode == M_SOCKETIO) {
        if (starts(data, len, "42"))
            on_event(c, data, len, now);
        else if (len == 1 && data[0] == '2')
            send_text(c, "3");
        else if (starts(data, len, "40"))
            set_ready(c);
        else if (len >= 1 && data[0] == '0')
            send_text(c, "40");
        else if (starts(data, len, "44"))
            fail(c, "namespace refused");
        return;
    }
    const char *v = find_value(data, len, "\"bench_i\":", 0);
    if (v && isdigit((unsigned char)*v)) {
        on_event(c, data, len, now);
        return;
    }
    if (mode != M_HUB) return;
    char op[32], code[64];
    string_value(data, len, "\"op\":", op, sizeof op);
    if (strcmp(op, "welcome") == 0) {
        for (int h = 0; h < c->nhello; h++) send_frame(c, 0x1, c->hello[h].p, c->hello[h].len);
        if (!c->nhello) set_ready(c);
    } else if (strcmp(op, "subscribed") == 0) {
        set_ready(c);
    } else if (strcmp(op, "ping") == 0) {
        send_text(c, "{\"op\":\"pong\"}");
    } else if (strcmp(op, "error") == 0) {
        string_value(data, len, "\"code\":", code, sizeof code);
        count_in(&errors, code[0] ? code : "?");
        if (!c->is_ready) fail(c, "error frame");
    }
}

static void on_close_frame(client_t *c, const unsigned char *payload, size_t len) {
    char code[16];
    snprintf(code, sizeof code, "%d", len >= 2 ? payload[0] << 8 | payload[1] : 1005);
    c->close_rcvd = 1;
    if (!stopping) closed_by_server(c, code);
    if (len >= 2)
        send_frame(c, 0x8, (const char *)payload, 2);
    else
        send_frame(c, 0x8, "", 0);
    if (!c->is_ready) {
        fail(c, "closed before ready");
        return;
    }
    drop(c);
}

/* The complete frames in c->in. */
static void read_frames(client_t *c, double now) {
    unsigned char *buf = (unsigned char *)c->in.p;
    size_t n = c->in.len, pos = 0;
    while (c->state == S_OPEN && n - pos >= 2) {
        unsigned b0 = buf[pos], b1 = buf[pos + 1], op = b0 & 0x0F;
        if ((b0 & 0xF0) != 0x80 || (b1 & 0x80) || (op != 0x1 && op != 0x8 && op != 0x9 && op != 0xA)) {
            count_in(&errors, "a frame the c engine does not read (fragment, binary, reserved bit, mask)");
            lost(c, "unsupported frame");
            return;
        }
        uint64_t length = b1 & 0x7F;
        size_t head = 2;
        if (length == 126) {
            if (n - pos < 4) break;
            length = (uint64_t)buf[pos + 2] << 8 | buf[pos + 3];
            head = 4;
        } else if (length == 127) {
            if (n - pos < 10) break;
            length = 0;
            for (int i = 0; i < 8; i++) length = length << 8 | buf[pos + 2 + i];
            head = 10;
        }
        if (length > (1u << 22)) {
            count_in(&errors, "a frame over 4 MiB");
            lost(c, "frame too big");
            return;
        }
        if (n - pos < head + length) break;
        const unsigned char *payload = buf + pos + head;
        pos += head + length;
        if (op == 0x1)
            on_text(c, (const char *)payload, length, now);
        else if (op == 0x9)
            send_frame(c, 0xA, (const char *)payload, length);
        else if (op == 0x8)
            on_close_frame(c, payload, length);
    }
    if (c->fd < 0) return;
    memmove(c->in.p, c->in.p + pos, n - pos);
    c->in.len = n - pos;
}

static void on_head(client_t *c) {
    char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
    if (!end) {
        if (c->in.len > MAX_HEAD) fail(c, "handshake: response head too long");
        return;
    }
    size_t head = end + 4 - c->in.p;
    int status = 0;
    if (sscanf(c->in.p, "HTTP/1.1 %d", &status) != 1 || status != 101) {
        char msg[80];
        snprintf(msg, sizeof msg, "handshake: server rejected WebSocket connection: HTTP %d", status);
        fail(c, msg);
        return;
    }
    for (char *p = c->in.p; p < end; p++)
        if ((*p == '\n') && strncasecmp(p + 1, "sec-websocket-extensions:", 25) == 0) {
            negotiated++;
            fail(c, "handshake: the server took the deflate offer (the c engine does not inflate)");
            return;
        }
    memmove(c->in.p, c->in.p + head, c->in.len - head);
    c->in.len -= head;
    c->state = S_OPEN;
    if (mode == M_PLAIN) set_ready(c);
}

static void on_readable(client_t *c, double now) {
    reserve(&c->in, READ_ROOM);
    ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (r == 0) {
        lost(c, "closed");
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) lost(c, strerror(errno));
        return;
    }
    nbytes += r;
    c->in.len += r;
    if (c->state == S_HANDSHAKE) on_head(c);
    if (c->state == S_OPEN) read_frames(c, now);
}

/* -- the driver's side ------------------------------------------------------------------------- */

static void out(const char *text, size_t len) {
    while (len) {
        ssize_t n = write(1, text, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("stdout");
        }
        text += n;
        len -= n;
    }
}

static int is_kept(const client_t *c) { return c->is_ready && !c->close_code[0]; }

static void status_fields(buf_t *j) {
    long ready = 0, got = 0, closed = 0, by_server = 0, missing = 0;
    for (long k = 0; k < nconns; k++) {
        client_t *c = &clients[k];
        ready += c->is_ready;
        got += c->got;
        closed += c->closed;
        by_server += c->close_code[0] != 0;
        if (is_kept(c)) missing += c->expected - c->got;
    }
    char s[512];
    int n = snprintf(s, sizeof s,
                     "\"ready\":%ld,\"failed\":%ld,\"got\":%ld,\"closed\":%ld,\"closed_by_server\":%ld,"
                     "\"missing\":%ld",
                     ready, failed, got, closed, by_server, missing);
    append(j, s, n);
}

static void json_table(buf_t *j, const char *name, const table_t *t) {
    char s[256];
    append(j, ",\"", 2);
    append(j, name, strlen(name));
    append(j, "\":{", 3);
    for (int i = 0; i < t->used; i++) {
        int n = snprintf(s, sizeof s, "%s\"", i ? "," : "");
        append(j, s, n);
        for (const char *p = t->key[i]; *p; p++) append(j, (*p == '"' || *p == '\\' || *p < 32) ? "?" : p, 1);
        n = snprintf(s, sizeof s, "\":%ld", t->n[i]);
        append(j, s, n);
    }
    append(j, "}", 1);
}

static void json_kinds(buf_t *j, const char *name, const long *n) {
    char s[256];
    int k = snprintf(s, sizeof s, ",\"%s\":{", name), any = 0;
    append(j, s, k);
    for (int i = 0; i < nkinds; i++) {
        if (!n[i]) continue;
        k = snprintf(s, sizeof s, "%s\"%s\":%ld", any++ ? "," : "", kinds[i], n[i]);
        append(j, s, k);
    }
    append(j, "}", 1);
}

static void answer_status(void) {
    buf_t j = {0};
    append(&j, "{", 1);
    status_fields(&j);
    append(&j, "}\n", 2);
    out(j.p, j.len);
    free(j.p);
}

static void answer_final(void) {
    buf_t j = {0}, lk = {0}, ik = {0}, lo = {0};
    long kept = 0, closed_ready = 0, expected_kept = 0, delivered_kept = 0, expected_closed = 0,
         delivered_closed = 0;
    table_t codes = {0};
    for (long k = 0; k < nconns; k++) {
        client_t *c = &clients[k];
        if (c->close_code[0]) count_in(&codes, c->close_code);
        if (is_kept(c)) {
            kept++;
            expected_kept += c->expected;
            delivered_kept += c->got;
            append(&lk, c->lat, c->nlat * sizeof *c->lat);
            append(&ik, c->idx, c->nlat * sizeof *c->idx);
        } else {
            if (c->is_ready) {
                closed_ready++;
                expected_closed += c->expected;
                delivered_closed += c->got;
            }
            append(&lo, c->lat, c->nlat * sizeof *c->lat);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    char s[1024];
    append(&j, "{", 1);
    status_fields(&j);
    int n = snprintf(s, sizeof s,
                     ",\"kept\":%ld,\"closed_ready\":%ld,\"expected_kept\":%ld,\"delivered_kept\":%ld,"
                     "\"expected_closed\":%ld,\"delivered_closed\":%ld,\"duplicates\":%ld,\"inversions\":%ld,"
                     "\"negotiated\":%ld,\"frames\":%ld,\"bytes\":%ld,\"cpu_s\":%.3f,\"blobs\":[%zu,%zu,%zu]",
                     kept, closed_ready, expected_kept, delivered_kept, expected_closed, delivered_closed,
                     duplicates, inversions, negotiated, frames, nbytes, cpu, lk.len, ik.len, lo.len);
    append(&j, s, n);
    json_kinds(&j, "got_by_kind", got_by_kind);
    json_kinds(&j, "ready_by_kind", ready_by_kind);
    json_table(&j, "errors", &errors);
    json_table(&j, "closes", &codes);
    append(&j, "}\n", 2);
    out(j.p, j.len);
    if (lk.len) out(lk.p, lk.len);
    if (ik.len) out(ik.p, ik.len);
    if (lo.len) out(lo.p, lo.len);
}

static char *next_field(char **line) {
    char *f = strsep(line, " \n");
    if (!f) die("a setup line is short");
    return f;
}

static void setup(FILE *in) {
    char *line = NULL, *p;
    size_t cap = 0;
    if (getline(&line, &cap, in) < 0) die("no setup line");
    p = line;
    char *m = next_field(&p);
    mode = !strcmp(m, "plain") ? M_PLAIN : !strcmp(m, "hub") ? M_HUB : !strcmp(m, "socketio") ? M_SOCKETIO
         : !strcmp(m, "hubsio") ? M_HUBSIO : -1;
    if (mode < 0) die("unknown mode");
    first = atol(next_field(&p));
    count = atol(next_field(&p));
    concurrency = atoi(next_field(&p));
    nconns = atol(next_field(&p));
    nkinds = atoi(next_field(&p));
    if (nkinds < 1 || nkinds > MAX_KINDS || concurrency < 1 || count < 0 || nconns < 0) die("bad setup");
    for (int k = 0; k < nkinds; k++) kinds[k] = strdup(next_field(&p));
    clients = calloc(nconns ? nconns : 1, sizeof *clients);
    for (long k = 0; k < nconns; k++) {
        client_t *c = &clients[k];
        if (getline(&line, &cap, in) < 0) die("a connection line is missing");
        p = line;
        c->fd = -1;
        c->last = -1;
        c->kind = atoi(next_field(&p));
        if (c->kind < 0 || c->kind >= nkinds) die("bad kind");
        c->expected = atol(next_field(&p));
        c->deflate = atoi(next_field(&p));
        c->host = strdup(next_field(&p));
        c->port = atoi(next_field(&p));
        c->path = strdup(next_field(&p));
        c->nhello = atoi(next_field(&p));
        c->hello = calloc(c->nhello ? c->nhello : 1, sizeof *c->hello);
        for (int h = 0; h < c->nhello; h++) {
            char *hex = next_field(&p);
            size_t len = strlen(hex) / 2;
            reserve(&c->hello[h], len + 1);
            for (size_t i = 0; i < len; i++) {
                unsigned v;
                sscanf(hex + 2 * i, "%2x", &v);
                c->hello[h].p[i] = (char)v;
            }
            c->hello[h].len = len;
        }
        c->seen = calloc(count ? count : 1, 1);
    }
    free(line);
}

static int handle_command(char *pending, size_t *plen) {
    ssize_t r = read(0, pending + *plen, 4096 - *plen - 1);
    if (r <= 0) return 1; /* the driver went away: stop */
    *plen += r;
    char *nl;
    while ((nl = memchr(pending, '\n', *plen))) {
        *nl = 0;
        int stop = strcmp(pending, "stop") == 0;
        if (strcmp(pending, "status") == 0) answer_status();
        size_t used = nl + 1 - pending;
        memmove(pending, nl + 1, *plen - used);
        *plen -= used;
        if (stop) return 1;
    }
    return 0;
}

/* One turn of the loop: waits up to timeout_ms; answers the driver when listen is set, and then
 * returns 1 once it said "stop" or went away. */
static int turn(int timeout_ms, int listen) {
    static char pending[4096];
    static size_t plen;
    struct epoll_event events[512];
    int n = epoll_wait(ep, events, 512, timeout_ms), stop = 0;
    double now = now_s();
    for (int e = 0; e < n; e++) {
        if (events[e].data.u64 == STDIN_TAG) {
            if (listen) stop |= handle_command(pending, &plen);
            continue;
        }
        client_t *c = &clients[events[e].data.u64];
        if (c->fd < 0) continue;
        if (c->state == S_CONNECTING) {
            on_connected(c);
            continue;
        }
        if (events[e].events & EPOLLOUT) flush_out(c);
        if (c->fd >= 0 && events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, now);
    }
    return stop;
}

int main(void) {
    setvbuf(stdin, NULL, _IONBF, 0);
    rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(now_s() * 1e6);
    setup(stdin);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) < 0) die("epoll");
    double last_tick = 0;
    for (;;) {
        while (next_open < nconns && opening < concurrency) start(&clients[next_open++], now_s());
        int stop = turn(100, 1);
        double now = now_s();
        if (stop) break;
        if (now - last_tick >= 0.1) {
            last_tick = now;
            for (long k = 0; k < nconns; k++) {
                client_t *c = &clients[k];
                if (c->opening && now > c->deadline) fail(c, "TimeoutError: ");
                else if (mode == M_HUB && c->is_ready && c->fd >= 0 && now >= c->next_ping) {
                    send_text(c, "{\"op\":\"ping\",\"ts\":0}");
                    c->next_ping = now + CLIENT_PING_S;
                }
            }
        }
    }
    stopping = 1;
    for (long k = 0; k < nconns; k++) {
        client_t *c = &clients[k];
        if (c->fd >= 0 && c->state == S_OPEN) send_frame(c, 0x8, "\x03\xe8", 2);
    }
    double until = now_s() + 0.3;
    epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL); /* the driver waits for the answer now */
    while (now_s() < until) turn(50, 0);
    for (long k = 0; k < nconns; k++)
        if (clients[k].fd >= 0) close(clients[k].fd);
    answer_final();
    return 0;
}
