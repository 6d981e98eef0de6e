/* A policy hook plugin in C: denies any command whose request mentions the
 * configured word (config: {"deny_word": "payroll"}), as a ticket system
 * would until a ticket is open. Other commands go on to the rules. */
#include "sluice_plugin.h"
#include <stdlib.h>
#include <string.h>

static char word[64];

static int32_t init(const uint8_t *config, size_t len, void **handle, SluiceBuf *error) {
    (void)error;
    char text[512];
    if (len >= sizeof text) return SLUICE_ERROR;
    memcpy(text, config, len);
    text[len] = 0;
    const char *key = strstr(text, "\"deny_word\":\"");
    if (!key) return SLUICE_ERROR;
    key += strlen("\"deny_word\":\"");
    const char *end = strchr(key, '"');
    if (!end || end == key || (size_t)(end - key) >= sizeof word) return SLUICE_ERROR;
    memcpy(word, key, (size_t)(end - key));
    *handle = NULL;
    return SLUICE_OK;
}

static void destroy(void *handle) { (void)handle; }

static void free_buf(uint8_t *ptr, size_t len) {
    (void)len;
    free(ptr);
}

static int32_t reply(SluiceBuf *out, const char *json) {
    size_t n = strlen(json);
    out->ptr = malloc(n);
    if (!out->ptr) return SLUICE_ERROR;
    memcpy(out->ptr, json, n);
    out->len = n;
    return SLUICE_OK;
}

static int32_t decide(void *handle, const uint8_t *in, size_t len, SluiceBuf *out) {
    (void)handle;
    size_t n = strlen(word);
    for (size_t i = 0; i + n <= len; i++) {
        if (memcmp(in + i, word, n) == 0)
            return reply(out, "{\"action\":\"deny\",\"message\":\"open a ticket before touching payroll\"}");
    }
    return reply(out, "{\"action\":\"allow\"}");
}

static const SluicePluginV1 VTABLE = {
    .abi_version = SLUICE_PLUGIN_ABI_VERSION,
    .capabilities = SLUICE_CAP_POLICY,
    .name = "tickets",
    .init = init,
    .destroy = destroy,
    .free_buf = free_buf,
    .decide = decide,
};

const SluicePluginV1 *sluice_plugin_entry(void) { return &VTABLE; }
