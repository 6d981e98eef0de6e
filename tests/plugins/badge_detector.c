/* A masking detector plugin in C: finds badge numbers, PREFIX followed by six
 * digits (config: {"prefix": "EMP-"}), and reports them as "badge" spans. */
#include "sluice_plugin.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char prefix[32];
    size_t prefix_len;
} Detector;

static int32_t fail(SluiceBuf *out, const char *message) {
    size_t n = strlen(message);
    out->ptr = malloc(n);
    if (out->ptr) {
        memcpy(out->ptr, message, n);
        out->len = n;
    }
    return SLUICE_ERROR;
}

/* Reads "prefix": "VALUE" from the config object (a test plugin, not a JSON parser). */
static int32_t init(const uint8_t *config, size_t len, void **handle, SluiceBuf *error) {
    char text[512];
    if (len >= sizeof text) return fail(error, "config too large");
    memcpy(text, config, len);
    text[len] = 0;
    const char *key = strstr(text, "\"prefix\":\"");
    if (!key) return fail(error, "config needs \"prefix\" (a string)");
    key += strlen("\"prefix\":\"");
    const char *end = strchr(key, '"');
    if (!end || end == key || (size_t)(end - key) >= sizeof(((Detector *)0)->prefix))
        return fail(error, "\"prefix\" must be 1-31 characters");
    Detector *d = calloc(1, sizeof *d);
    if (!d) return fail(error, "out of memory");
    memcpy(d->prefix, key, (size_t)(end - key));
    d->prefix_len = (size_t)(end - key);
    *handle = d;
    return SLUICE_OK;
}

static void destroy(void *handle) { free(handle); }

static void free_buf(uint8_t *ptr, size_t len) {
    (void)len;
    free(ptr);
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static int32_t detect(void *handle, const uint8_t *in, size_t len, SluiceBuf *out) {
    const Detector *d = handle;
    size_t cap = 64, used = 0;
    char *json = malloc(cap);
    if (!json) return SLUICE_ERROR;
    used += (size_t)sprintf(json, "[");
    for (size_t i = 0; i + d->prefix_len + 6 <= len; i++) {
        if (memcmp(in + i, d->prefix, d->prefix_len) != 0) continue;
        size_t j = i + d->prefix_len, k = 0;
        while (k < 6 && is_digit(in[j + k])) k++;
        if (k < 6 || (j + 6 < len && is_digit(in[j + 6]))) continue;
        if (used + 80 > cap) {
            cap = cap * 2 + 80;
            char *grown = realloc(json, cap);
            if (!grown) {
                free(json);
                return SLUICE_ERROR;
            }
            json = grown;
        }
        used += (size_t)sprintf(json + used, "%s{\"start\":%zu,\"end\":%zu,\"label\":\"badge\"}",
                                used > 1 ? "," : "", i, j + 6);
        i = j + 5;
    }
    json[used++] = ']';
    out->ptr = (uint8_t *)json;
    out->len = used;
    return SLUICE_OK;
}

static const SluicePluginV1 VTABLE = {
    .abi_version = SLUICE_PLUGIN_ABI_VERSION,
    .capabilities = SLUICE_CAP_DETECTOR,
    .name = "badge",
    .init = init,
    .destroy = destroy,
    .free_buf = free_buf,
    .detect = detect,
};

const SluicePluginV1 *sluice_plugin_entry(void) { return &VTABLE; }
