/*
 * sframe_vectors.c: the RFC 9605 SFrame test vectors through the C ABI (include/sotto.h).
 *
 * Reads one vector per line on stdin, fields separated by spaces:
 *
 *   suite kid ctr base_key metadata plaintext ciphertext
 *
 * suite, kid and ctr in decimal, the rest in hex ("-" for an empty field); lines starting
 * with '#' are skipped. For each vector it checks that
 *   - sotto_sframe_encrypt gives the ciphertext byte for byte (after asking for the size),
 *   - sotto_sframe_decrypt gives the plaintext back,
 *   - a receiver context decrypts it once and refuses the replay,
 *   - one flipped byte of the frame, or of the metadata, is refused with SOTTO_ERR_AUTH.
 * Prints a summary and exits non-zero on any mismatch (or when no vector was read).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sotto.h"

#define MAX_BYTES 4096
#define MAX_LINE (5 * 2 * MAX_BYTES + 128)

struct bytes {
    uint8_t data[MAX_BYTES];
    size_t len;
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s, struct bytes *out)
{
    out->len = 0;
    if (strcmp(s, "-") == 0)
        return 1;
    size_t n = strlen(s);
    if (n % 2 != 0 || n / 2 > MAX_BYTES)
        return 0;
    for (size_t i = 0; i < n; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out->data[out->len++] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

static void print_hex(const char *label, const uint8_t *b, size_t n)
{
    fprintf(stderr, "  %s: ", label);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%02x", b[i]);
    fprintf(stderr, "\n");
}

struct vector {
    unsigned suite;
    uint64_t kid, ctr;
    struct bytes key, metadata, pt, ct;
};

/* Runs every check on one vector; prints what failed and returns 0 then. */
static int check(int line, const struct vector *v)
{
    static uint8_t out[MAX_BYTES + 64], tampered[MAX_BYTES];
    const uint16_t suite = (uint16_t)v->suite;
    size_t out_len = 0;
    int ok = 1;

    /* Size query: a zero-capacity buffer reports the size needed. */
    uint8_t none[1];
    sotto_status rc = sotto_sframe_encrypt(suite, v->key.data, v->key.len, v->kid, v->ctr,
                                           v->metadata.data, v->metadata.len, v->pt.data,
                                           v->pt.len, none, 0, &out_len);
    if (rc != SOTTO_ERR_BUFFER_TOO_SMALL || out_len < v->ct.len ||
        out_len > v->pt.len + sotto_sframe_overhead(suite)) {
        fprintf(stderr, "line %d: size query: status %d, size %zu (ciphertext %zu)\n", line,
                (int)rc, out_len, v->ct.len);
        ok = 0;
    }

    rc = sotto_sframe_encrypt(suite, v->key.data, v->key.len, v->kid, v->ctr, v->metadata.data,
                              v->metadata.len, v->pt.data, v->pt.len, out, sizeof out,
                              &out_len);
    if (rc != SOTTO_OK) {
        fprintf(stderr, "line %d: encrypt: status %d: %s\n", line, (int)rc, sotto_last_error());
        ok = 0;
    } else if (out_len != v->ct.len || memcmp(out, v->ct.data, out_len) != 0) {
        fprintf(stderr, "line %d: encrypt: wrong frame\n", line);
        print_hex("expected", v->ct.data, v->ct.len);
        print_hex("got     ", out, out_len);
        ok = 0;
    }

    rc = sotto_sframe_decrypt(suite, v->key.data, v->key.len, v->metadata.data, v->metadata.len,
                              v->ct.data, v->ct.len, out, sizeof out, &out_len);
    if (rc != SOTTO_OK) {
        fprintf(stderr, "line %d: decrypt: status %d: %s\n", line, (int)rc, sotto_last_error());
        ok = 0;
    } else if (out_len != v->pt.len || memcmp(out, v->pt.data, out_len) != 0) {
        fprintf(stderr, "line %d: decrypt: wrong plaintext\n", line);
        print_hex("expected", v->pt.data, v->pt.len);
        print_hex("got     ", out, out_len);
        ok = 0;
    }

    /* A receiver context: the frame decrypts once, its replay is refused. */
    sotto_sframe_receiver *rx = NULL;
    rc = sotto_sframe_receiver_new(suite, &rx);
    if (rc == SOTTO_OK)
        rc = sotto_sframe_receiver_add_key(rx, v->kid, v->key.data, v->key.len);
    if (rc != SOTTO_OK) {
        fprintf(stderr, "line %d: receiver: status %d: %s\n", line, (int)rc, sotto_last_error());
        ok = 0;
    } else {
        rc = sotto_sframe_receiver_decrypt(rx, v->metadata.data, v->metadata.len, v->ct.data,
                                           v->ct.len, out, sizeof out, &out_len);
        if (rc != SOTTO_OK || out_len != v->pt.len || memcmp(out, v->pt.data, out_len) != 0) {
            fprintf(stderr, "line %d: receiver decrypt: status %d: %s\n", line, (int)rc,
                    sotto_last_error());
            ok = 0;
        }
        rc = sotto_sframe_receiver_decrypt(rx, v->metadata.data, v->metadata.len, v->ct.data,
                                           v->ct.len, out, sizeof out, &out_len);
        if (rc != SOTTO_ERR_AUTH) {
            fprintf(stderr, "line %d: replay: status %d, expected SOTTO_ERR_AUTH\n", line,
                    (int)rc);
            ok = 0;
        }
    }
    sotto_sframe_receiver_free(rx);

    /* One flipped bit in the frame's last byte (the tag) must fail authentication. */
    memcpy(tampered, v->ct.data, v->ct.len);
    tampered[v->ct.len - 1] ^= 0x01;
    rc = sotto_sframe_decrypt(suite, v->key.data, v->key.len, v->metadata.data, v->metadata.len,
                              tampered, v->ct.len, out, sizeof out, &out_len);
    if (rc != SOTTO_ERR_AUTH) {
        fprintf(stderr, "line %d: tampered frame: status %d, expected SOTTO_ERR_AUTH\n", line,
                (int)rc);
        ok = 0;
    }
    /* So must other metadata (it is authenticated with the header). */
    if (v->metadata.len > 0) {
        memcpy(tampered, v->metadata.data, v->metadata.len);
        tampered[0] ^= 0x01;
        rc = sotto_sframe_decrypt(suite, v->key.data, v->key.len, tampered, v->metadata.len,
                                  v->ct.data, v->ct.len, out, sizeof out, &out_len);
        if (rc != SOTTO_ERR_AUTH) {
            fprintf(stderr, "line %d: tampered metadata: status %d, expected SOTTO_ERR_AUTH\n",
                    line, (int)rc);
            ok = 0;
        }
    }
    return ok;
}

int main(void)
{
    static char buf[MAX_LINE];
    static char key[MAX_LINE], md[MAX_LINE], pt[MAX_LINE], ct[MAX_LINE];
    static struct vector v;
    int line = 0, passed = 0, failed = 0;

    printf("libsotto %s\n", sotto_version());
    while (fgets(buf, sizeof buf, stdin)) {
        line++;
        if (buf[0] == '#' || buf[0] == '\n')
            continue;
        uint64_t suite = 0;
        if (sscanf(buf, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %s %s %s %s", &suite, &v.kid,
                   &v.ctr, key, md, pt, ct) != 7 ||
            suite > 0xffff || !parse_hex(key, &v.key) || !parse_hex(md, &v.metadata) ||
            !parse_hex(pt, &v.pt) || !parse_hex(ct, &v.ct) || v.ct.len <= v.pt.len) {
            fprintf(stderr, "line %d: malformed vector\n", line);
            failed++;
            continue;
        }
        v.suite = (unsigned)suite;
        if (check(line, &v)) {
            passed++;
            printf("suite %u kid %" PRIu64 " ctr %" PRIu64 ": ok\n", v.suite, v.kid, v.ctr);
        } else {
            failed++;
            printf("suite %u kid %" PRIu64 " ctr %" PRIu64 ": FAILED\n", v.suite, v.kid, v.ctr);
        }
    }
    printf("sframe vectors: %d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
