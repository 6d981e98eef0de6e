/* A detector and policy plugin that misbehaves on cue: for input containing
 * "fault" it returns an error status, "garbage" a non-JSON answer, "outside" a
 * span beyond the value. Anything else is fine (nothing found / allow). */
#include "sluice_plugin.h"
#include <stdlib.h>
#include <string.h>

static int32_t init(const uint8_t *config, size_t len, void **handle, SluiceBuf *error) {
    (void)config, (void)len, (void)error;
    *handle = NULL;
    return SLUICE_OK;
}

static void destroy(void *handle) { (void)handle; }

static void free_buf(uint8_t *ptr, size_t len) {
    (void)len;
    free(ptr);
}

static int has(const uint8_t *in, size_t len, const char *word) {
    size_t n = strlen(word);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(in + i, word, n) == 0) return 1;
    return 0;
}

static int32_t reply(SluiceBuf *out, const char *text) {
    size_t n = strlen(text);
    out->ptr = malloc(n);
    if (!out->ptr) return SLUICE_ERROR;
    memcpy(out->ptr, text, n);
    out->len = n;
    return SLUICE_OK;
}

static int32_t misbehave(const uint8_t *in, size_t len, SluiceBuf *out, const char *fine) {
    if (has(in, len, "fault")) {
        reply(out, "the backend is down");
        return SLUICE_ERROR;
    }
    if (has(in, len, "garbage")) return reply(out, "{not json");
    if (has(in, len, "outside")) return reply(out, "[{\"start\":0,\"end\":100000}]");
    return reply(out, fine);
}

static int32_t detect(void *h, const uint8_t *in, size_t len, SluiceBuf *out) {
    (void)h;
    return misbehave(in, len, out, "[]");
}

static int32_t decide(void *h, const uint8_t *in, size_t len, SluiceBuf *out) {
    (void)h;
    return misbehave(in, len, out, "{\"action\":\"allow\"}");
}

static const SluicePluginV1 VTABLE = {
    .abi_version = SLUICE_PLUGIN_ABI_VERSION,
    .capabilities = SLUICE_CAP_DETECTOR | SLUICE_CAP_POLICY,
    .name = "faulty",
    .init = init,
    .destroy = destroy,
    .free_buf = free_buf,
    .detect = detect,
    .decide = decide,
};

const SluicePluginV1 *sluice_plugin_entry(void) { return &VTABLE; }
