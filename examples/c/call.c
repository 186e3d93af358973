/*
 * call.c: one side of a sotto call from C, through the C ABI (include/sotto.h).
 *
 * It joins a room on a signaling server, sends a sine tone that it produces itself through
 * the custom audio callback (48 kHz mono f32), prints every event as one line, prints the
 * safety code, waits for the call to end after --duration seconds, prints the stats JSON and
 * exits 0 only if the call connected and ended cleanly.
 *
 *   call --server ws://127.0.0.1:8080/ws --room demo [--name NAME] [--identity PATH]
 *        [--tone HZ] [--duration SECS] [--bind ADDR] [--output WAV]
 *
 * Without --output, what the peer says goes to a write callback that only counts it.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sotto.h"

#define RATE 48000.0
#define TWO_PI 6.283185307179586

/* What the event callback learns; it runs on a library thread, main reads it after the end. */
struct call_state {
    atomic_int connected;
    atomic_int ended;
    atomic_int ended_ok;
    atomic_int has_code;
};

/* The tone the read callback produces; only the library's capture thread touches it. */
struct tone {
    double hz;
    double phase;
};

/* What the write callback hears; only the library's playback thread writes it. */
struct heard {
    atomic_ulong samples;
};

struct audio {
    struct tone tone;
    struct heard heard;
};

static size_t read_tone(void *user_data, float *frame, size_t samples)
{
    struct tone *t = &((struct audio *)user_data)->tone;
    double step = TWO_PI * t->hz / RATE;
    for (size_t i = 0; i < samples; i++) {
        frame[i] = (float)(0.3 * sin(t->phase));
        t->phase += step;
        if (t->phase >= TWO_PI)
            t->phase -= TWO_PI;
    }
    return samples; /* never ends: the call ends by --duration */
}

static void write_heard(void *user_data, const float *frame, size_t samples)
{
    (void)frame;
    struct heard *h = &((struct audio *)user_data)->heard;
    atomic_fetch_add(&h->samples, (unsigned long)samples);
}

/* The string value of "key" in a flat JSON object, copied into out (no escapes expected in
 * the values read here). Skips occurrences of "key" that are values, e.g. "event":"key". */
static int json_string(const char *json, const char *key, char *out, size_t out_cap)
{
    char quoted[64];
    if (snprintf(quoted, sizeof quoted, "\"%s\"", key) >= (int)sizeof quoted)
        return 0;
    for (const char *p = strstr(json, quoted); p; p = strstr(p + 1, quoted)) {
        const char *q = p + strlen(quoted);
        while (*q == ' ')
            q++;
        if (*q != ':')
            continue;
        q++;
        while (*q == ' ')
            q++;
        if (*q != '"')
            return 0;
        q++;
        const char *end = strchr(q, '"');
        if (!end || (size_t)(end - q) >= out_cap)
            return 0;
        memcpy(out, q, (size_t)(end - q));
        out[end - q] = '\0';
        return 1;
    }
    return 0;
}

static void on_event(void *user_data, const char *event_json)
{
    struct call_state *st = user_data;
    char kind[32], value[64];
    printf("event: %s\n", event_json);
    if (!json_string(event_json, "event", kind, sizeof kind)) {
        fflush(stdout);
        return;
    }
    if (strcmp(kind, "state") == 0 && json_string(event_json, "state", value, sizeof value) &&
        strcmp(value, "connected") == 0) {
        atomic_store(&st->connected, 1);
    } else if (strcmp(kind, "safety_code") == 0 &&
               json_string(event_json, "safety_code", value, sizeof value)) {
        printf("safety code: %s\n", value);
        atomic_store(&st->has_code, 1);
    } else if (strcmp(kind, "ended") == 0) {
        atomic_store(&st->ended_ok, strstr(event_json, "\"ok\":true") != NULL);
        atomic_store(&st->ended, 1);
    }
    fflush(stdout);
}

/* Appends s to buf as a JSON string (quotes and escapes). */
static int put_json_string(char *buf, size_t cap, size_t *len, const char *s)
{
    if (*len + 1 >= cap)
        return 0;
    buf[(*len)++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int n;
        if (c == '"' || c == '\\')
            n = snprintf(buf + *len, cap - *len, "\\%c", c);
        else if (c < 0x20)
            n = snprintf(buf + *len, cap - *len, "\\u%04x", c);
        else
            n = snprintf(buf + *len, cap - *len, "%c", c);
        if (n < 0 || (size_t)n >= cap - *len)
            return 0;
        *len += (size_t)n;
    }
    if (*len + 1 >= cap)
        return 0;
    buf[(*len)++] = '"';
    buf[*len] = '\0';
    return 1;
}

/* Appends `"key":"value"` (with a leading comma unless first). */
static int put_pair(char *buf, size_t cap, size_t *len, const char *key, const char *value)
{
    if (*len > 1 && *len + 1 < cap)
        buf[(*len)++] = ',';
    return put_json_string(buf, cap, len, key) && *len + 1 < cap &&
           (buf[(*len)++] = ':', put_json_string(buf, cap, len, value));
}

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s --server WS-URL --room NAME [--name NAME] [--identity PATH]\n"
            "          [--tone HZ] [--duration SECS] [--bind ADDR] [--output WAV]\n",
            prog);
}

int main(int argc, char **argv)
{
    const char *server = NULL, *room = NULL, *name = "c-example", *identity = NULL;
    const char *bind = NULL, *output = NULL;
    double hz = 440.0, duration = 5.0;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) {
            usage(argv[0]);
            return 2;
        }
        const char *val = argv[++i];
        if (strcmp(opt, "--server") == 0)
            server = val;
        else if (strcmp(opt, "--room") == 0)
            room = val;
        else if (strcmp(opt, "--name") == 0)
            name = val;
        else if (strcmp(opt, "--identity") == 0)
            identity = val;
        else if (strcmp(opt, "--bind") == 0)
            bind = val;
        else if (strcmp(opt, "--output") == 0)
            output = val;
        else if (strcmp(opt, "--tone") == 0)
            hz = atof(val);
        else if (strcmp(opt, "--duration") == 0)
            duration = atof(val);
        else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!server || !room || !(hz >= 20.0 && hz <= 20000.0) ||
        !(duration > 0.0 && duration <= 3600.0)) {
        usage(argv[0]);
        return 2;
    }

    /* The config: the long flag names of `sotto call` as keys. */
    char config[4096] = "{";
    size_t len = 1;
    int ok = put_pair(config, sizeof config, &len, "server", server) &&
             put_pair(config, sizeof config, &len, "room", room) &&
             put_pair(config, sizeof config, &len, "name", name) &&
             (!identity || put_pair(config, sizeof config, &len, "identity", identity)) &&
             (!bind || put_pair(config, sizeof config, &len, "bind", bind)) &&
             (!output || put_pair(config, sizeof config, &len, "output", output));
    int n = ok ? snprintf(config + len, sizeof config - len, ",\"duration\":%g}", duration) : -1;
    if (n < 0 || (size_t)n >= sizeof config - len) {
        fprintf(stderr, "arguments too long\n");
        return 2;
    }
    printf("libsotto %s; config %s\n", sotto_version(), config);

    struct call_state st = {0};
    struct audio audio = {.tone = {.hz = hz, .phase = 0.0}};
    atomic_init(&audio.heard.samples, 0);
    sotto_audio_io io = {
        .read = read_tone,
        .write = output ? NULL : write_heard,
        .user_data = &audio,
    };
    sotto_call *call = NULL;
    sotto_status rc = sotto_call_start_with_audio(config, &io, on_event, &st, &call);
    if (rc != SOTTO_OK) {
        fprintf(stderr, "sotto_call_start_with_audio: status %d: %s\n", (int)rc,
                sotto_last_error());
        return 1;
    }

    /* The library hangs up after `duration`; allow generous time for joining and setup. */
    uint32_t timeout_ms = (uint32_t)(duration * 1000.0) + 60000;
    rc = sotto_call_wait(call, timeout_ms);
    int exit_code = 0;
    if (rc != SOTTO_OK) {
        fprintf(stderr, "sotto_call_wait: status %d: %s\n", (int)rc, sotto_last_error());
        sotto_call_hang_up(call);
        exit_code = 1;
    }

    /* Ask for the size first (a 1-byte buffer is always too small), then fetch. */
    char probe[1];
    size_t stats_len = 0;
    rc = sotto_call_stats_json(call, probe, sizeof probe, &stats_len);
    if (rc == SOTTO_ERR_BUFFER_TOO_SMALL) {
        char *stats = malloc(stats_len + 1);
        if (stats && sotto_call_stats_json(call, stats, stats_len + 1, &stats_len) == SOTTO_OK) {
            printf("stats: %s\n", stats);
        } else {
            fprintf(stderr, "sotto_call_stats_json: %s\n", sotto_last_error());
            exit_code = 1;
        }
        free(stats);
    } else {
        fprintf(stderr, "sotto_call_stats_json (size): status %d: %s\n", (int)rc,
                sotto_last_error());
        exit_code = 1;
    }
    sotto_call_free(call);

    if (!output)
        printf("heard %lu samples from the peer\n", atomic_load(&audio.heard.samples));
    if (!atomic_load(&st.connected) || !atomic_load(&st.has_code)) {
        fprintf(stderr, "the call never connected\n");
        exit_code = 1;
    }
    if (!atomic_load(&st.ended) || !atomic_load(&st.ended_ok)) {
        fprintf(stderr, "the call did not end cleanly\n");
        exit_code = 1;
    }
    printf("exit %d\n", exit_code);
    return exit_code;
}
