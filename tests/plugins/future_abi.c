/* A plugin built for an ABI version this gateway does not speak. */
#include "sluice_plugin.h"

static const SluicePluginV1 VTABLE = {
    .abi_version = 2,
    .capabilities = SLUICE_CAP_DETECTOR,
    .name = "future",
};

const SluicePluginV1 *sluice_plugin_entry(void) { return &VTABLE; }
