/* The Sluice plugin ABI, version 1 (see docs/plugins.md).
 *
 * A plugin is a shared library exporting
 *     const SluicePluginV1 *sluice_plugin_entry(void);
 * which returns a vtable that lives as long as the library. Every text crossing
 * the boundary is UTF-8, passed as a pointer and a length (no NUL terminator);
 * structured data is JSON. Callbacks may be called concurrently from several
 * threads and must not unwind (no C++ exceptions, no Rust panics) across it. */
#ifndef SLUICE_PLUGIN_H
#define SLUICE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define SLUICE_PLUGIN_ABI_VERSION 1u

#define SLUICE_OK 0
#define SLUICE_ERROR 1

#define SLUICE_CAP_NOTIFIER (1u << 0)
#define SLUICE_CAP_DETECTOR (1u << 1)
#define SLUICE_CAP_POLICY (1u << 2)
#define SLUICE_CAP_AUDIT_SINK (1u << 3)

/* A buffer the plugin allocates for the host; the host returns it with free_buf. */
typedef struct SluiceBuf {
    uint8_t *ptr;
    size_t len;
} SluiceBuf;

typedef int32_t (*SluiceCallFn)(void *handle, const uint8_t *input, size_t input_len, SluiceBuf *output);

typedef struct SluicePluginV1 {
    uint32_t abi_version;  /* SLUICE_PLUGIN_ABI_VERSION; always the first field */
    uint32_t capabilities; /* SLUICE_CAP_* */
    const char *name;      /* static, NUL-terminated */
    /* config: the [[plugins]] config table as a JSON object. On SLUICE_OK, *handle
     * is passed to every later call; otherwise *error may hold a message. */
    int32_t (*init)(const uint8_t *config, size_t config_len, void **handle, SluiceBuf *error);
    void (*destroy)(void *handle);
    void (*free_buf)(uint8_t *ptr, size_t len);
    /* input: one value; output: JSON [{"start":N,"end":N,"label":"name"}, ...] byte spans. */
    SluiceCallFn detect;
    /* input: {"session":{...},"command_id":N,"command":{...}};
     * output: {"action":"allow"} or {"action":"deny","message":"..."}. */
    SluiceCallFn decide;
    /* input: {"event":"requested"|"decided","request":{...}}; output ignored. */
    SluiceCallFn notify;
    /* input: {"session_id":"...","event":{...}}; output ignored. */
    SluiceCallFn audit;
} SluicePluginV1;

const SluicePluginV1 *sluice_plugin_entry(void);

#endif
