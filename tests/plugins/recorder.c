/* An audit sink and approval notifier plugin in C: appends every event it is
 * given, one JSON document per line, to the file named in its config
 * (config: {"file": "/path/events.jsonl"}). */
#include "sluice_plugin.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t init(const uint8_t *config, size_t len, void **handle, SluiceBuf *error) {
    (void)error;
    char text[1024];
    if (len >= sizeof text) return SLUICE_ERROR;
    memcpy(text, config, len);
    text[len] = 0;
    const char *key = strstr(text, "\"file\":\"");
    if (!key) return SLUICE_ERROR;
    key += strlen("\"file\":\"");
    const char *end = strchr(key, '"');
    if (!end || end == key) return SLUICE_ERROR;
    char *path = calloc(1, (size_t)(end - key) + 1);
    if (!path) return SLUICE_ERROR;
    memcpy(path, key, (size_t)(end - key));
    *handle = path;
    return SLUICE_OK;
}

static void destroy(void *handle) { free(handle); }

static void free_buf(uint8_t *ptr, size_t len) {
    (void)len;
    free(ptr);
}

static int32_t record(void *handle, const uint8_t *in, size_t len, SluiceBuf *out) {
    (void)out;
    FILE *f = fopen((const char *)handle, "a");
    if (!f) return SLUICE_ERROR;
    int ok = fwrite(in, 1, len, f) == len && fputc('\n', f) != EOF;
    return fclose(f) == 0 && ok ? SLUICE_OK : SLUICE_ERROR;
}

static const SluicePluginV1 VTABLE = {
    .abi_version = SLUICE_PLUGIN_ABI_VERSION,
    .capabilities = SLUICE_CAP_AUDIT_SINK | SLUICE_CAP_NOTIFIER,
    .name = "recorder",
    .init = init,
    .destroy = destroy,
    .free_buf = free_buf,
    .notify = record,
    .audit = record,
};

const SluicePluginV1 *sluice_plugin_entry(void) { return &VTABLE; }
