/* Stand-ins for a broken runtime library, so the Go binding's load checks can be tested:
 *   STUB_BAD_ABI   sd_abi_version() reports another ABI
 *   STUB_BAD_SIZE  the ABI matches but a params struct has another size
 *   STUB_NO_SYMS   ABI and sizes match but the other functions are missing */
#include "sd.h"

uint32_t sd_abi_version(void) {
#ifdef STUB_BAD_ABI
    return SD_ABI_VERSION + 1000;
#else
    return SD_ABI_VERSION;
#endif
}

size_t sd_sizeof_ctx_params(void) {
#ifdef STUB_BAD_SIZE
    return sizeof(sd_ctx_params_t) + 8;
#else
    return sizeof(sd_ctx_params_t);
#endif
}

size_t sd_sizeof_memory_stats(void) {
    return sizeof(sd_memory_stats_t);
}
size_t sd_sizeof_conv2d_params(void) {
    return sizeof(sd_conv2d_params_t);
}
size_t sd_sizeof_linear_params(void) {
    return sizeof(sd_linear_params_t);
}
size_t sd_sizeof_attention_params(void) {
    return sizeof(sd_attention_params_t);
}
size_t sd_sizeof_timestep_embedding_params(void) {
    return sizeof(sd_timestep_embedding_params_t);
}
size_t sd_sizeof_weight(void) {
    return sizeof(sd_weight_t);
}
size_t sd_sizeof_clip_config(void) {
    return sizeof(sd_clip_config_t);
}
size_t sd_sizeof_unet_config(void) {
    return sizeof(sd_unet_config_t);
}
size_t sd_sizeof_vae_config(void) {
    return sizeof(sd_vae_config_t);
}
size_t sd_sizeof_unet_inputs(void) {
    return sizeof(sd_unet_inputs_t);
}
size_t sd_sizeof_controlnet_config(void) {
    return sizeof(sd_controlnet_config_t);
}
size_t sd_sizeof_controlnet_inputs(void) {
    return sizeof(sd_controlnet_inputs_t);
}
size_t sd_sizeof_taesd_config(void) {
    return sizeof(sd_taesd_config_t);
}
size_t sd_sizeof_esrgan_config(void) {
    return sizeof(sd_esrgan_config_t);
}
