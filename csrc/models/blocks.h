/*
 * blocks.h - the building blocks written once against the op API (ResNet block, spatial
 * transformer, VAE attention, up/down sampling) and the sticky-error build context they
 * run in, so forward code reads top to bottom.
 */
#ifndef SD_BLOCKS_H
#define SD_BLOCKS_H

#include "model.h"

/* ---------------------------------------------------------------------------------------
 * Build context: the first failure sticks and every later step is skipped, so forward
 * code needs no error branch per op; scratch tensors are freed unconditionally.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    sd_ctx_t *ctx;
    sd_status_t st;
    int32_t act; /* activation dtype */
} build_t;

build_t build_begin(sd_ctx_t *ctx);

/* Scratch activation tensor (NULL after a failure). */
sd_tensor_t *g_new(build_t *g, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
void g_free(build_t *g, sd_tensor_t *t);

/* Runs an op unless the build already failed. */
#define G(g, call)                                                                                 \
    do {                                                                                           \
        if ((g)->st == SD_STATUS_OK) (g)->st = (call);                                             \
    } while (0)

/* An input in the activation dtype: x itself when it already is, else a converted scratch
 * copy (release with g_release_input). */
sd_tensor_t *g_input(build_t *g, const sd_tensor_t *x);
void g_release_input(build_t *g, const sd_tensor_t *x, sd_tensor_t *converted);
/* Copies (converting if needed) a scratch result into a caller's output tensor. */
void g_output(build_t *g, sd_tensor_t *out, const sd_tensor_t *result);

/* Convenience op wrappers. */
void g_conv(build_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_conv_w *c,
            const sd_tensor_t *bias_override, const sd_tensor_t *residual, int32_t stride,
            int32_t pad_top, int32_t pad_bottom, int32_t pad_left, int32_t pad_right);
void g_linear(build_t *g, sd_tensor_t *out, const sd_tensor_t *x, const sd_linear_w *l,
              const sd_tensor_t *residual, int32_t in_layout, int32_t out_layout);

/* ---------------------------------------------------------------------------------------
 * Blocks
 * ------------------------------------------------------------------------------------- */

/* diffusers' ResnetBlock2D (pre-norm, SiLU, time embedding added after conv1). */
typedef struct {
    int64_t c_in, c_out;
    sd_norm_w norm1, norm2;
    sd_conv_w conv1, conv2, shortcut; /* shortcut.w NULL when c_in == c_out */
    sd_linear_w temb; /* temb.w NULL without a time embedding (VAE); temb.b includes conv1's */
} resnet_w;

void ld_resnet(loader_t *L, resnet_w *r, int64_t c_in, int64_t c_out, int64_t temb_dim,
               const char *prefix);
/* Returns a new (B, c_out, H, W) tensor; temb_silu is SiLU(temb) (B, temb_dim) or NULL. */
sd_tensor_t *g_resnet(build_t *g, const resnet_w *r, const sd_tensor_t *x,
                      const sd_tensor_t *temb_silu, int32_t groups, float eps);
/* The same, taking x (a tensor of the build, freed here): with a shortcut conv, the shortcut
 * is computed first and norm1 runs in place on x, so that x, its normalised copy and
 * conv1's output are never live together (at a 1024² VAE decoder's last level: 2 GB
 * instead of 2.5). */
sd_tensor_t *g_resnet_take(build_t *g, const resnet_w *r, sd_tensor_t *x,
                           const sd_tensor_t *temb_silu, int32_t groups, float eps);

/* diffusers' BasicTransformerBlock inside Transformer2DModel. */
typedef struct {
    sd_norm_w norm1, norm2, norm3;
    sd_linear_w q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} tblock_w;

typedef struct {
    int64_t channels, heads, ff_inner;
    int32_t only_cross; /* attn1 attends to the context too (diffusers' only_cross_attention) */
    sd_norm_w norm;
    sd_linear_w proj_in, proj_out;
    int32_t n_blocks;
    tblock_w *blocks;
} transformer_w;

void ld_transformer(loader_t *L, transformer_w *t, int64_t channels, int64_t heads,
                    int64_t context_dim, int32_t n_blocks, int32_t only_cross, const char *prefix);
void free_transformer(transformer_w *t);
/* x (B, C, H, W), context (B, T, context_dim) -> new (B, C, H, W). */
sd_tensor_t *g_transformer(build_t *g, const transformer_w *t, const sd_tensor_t *x,
                           const sd_tensor_t *context, int32_t groups);

/* The VAE's single-head mid-block attention with a residual connection. */
typedef struct {
    int64_t channels;
    sd_norm_w norm;
    sd_linear_w q, k, v, o;
} vae_attn_w;

void ld_vae_attention(loader_t *L, vae_attn_w *a, int64_t channels, const char *prefix);
sd_tensor_t *g_vae_attention(build_t *g, const vae_attn_w *a, const sd_tensor_t *x, int32_t groups,
                             float eps);

/* Nearest resize to (oh, ow) then a 3x3 conv (diffusers' Upsample2D). New tensor. */
sd_tensor_t *g_upsample(build_t *g, const sd_conv_w *conv, const sd_tensor_t *x, int64_t oh,
                        int64_t ow);
/* The same, taking x (a tensor of the build), freed once resized, before the conv. */
sd_tensor_t *g_upsample_take(build_t *g, const sd_conv_w *conv, sd_tensor_t *x, int64_t oh,
                             int64_t ow);

#endif /* SD_BLOCKS_H */
