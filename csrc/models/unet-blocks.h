/*
 * unet-blocks.h - UNet2DConditionModel in parts, so that ControlNetModel (its encoder, a
 * trained copy) is built from the same code: the config check, the time embedding with the
 * class and addition embeddings, the down blocks, the mid block and the up blocks.
 * unet.c joins them into the UNet; a ControlNet adds its hint embedding and zero convs.
 */
#ifndef SD_UNET_BLOCKS_H
#define SD_UNET_BLOCKS_H

#include "blocks.h"

/* conv_in's output and every down-block output: 1 + per level layers (<= 64) + 1. */
#define UNET_MAX_SKIPS (1 + SD_MAX_LEVELS * 65)

/* One down or up block: ResNets, each followed by a transformer in cross-attention blocks,
 * then a downsampler / upsampler conv. */
typedef struct {
    int32_t n_resnets;
    resnet_w *resnets;
    transformer_w *attentions; /* NULL for blocks without attention */
    sd_conv_w sampler;         /* downsampler / upsampler conv; w NULL for the last block */
} unet_block_w;

/* time_embedding, and the class_embedding / add_embedding added to it. */
typedef struct {
    int64_t dim; /* 4 * block_out_channels[0] */
    sd_linear_w time1, time2;
    sd_linear_w add1, add2;         /* add_embedding (TEXT_TIME) */
    sd_linear_w class1, class2;     /* class_embedding (TIMESTEP) */
    const sd_tensor_t *class_table; /* class_embedding (TABLE) */
} unet_embed_w;

/* The down blocks and the mid block. */
typedef struct {
    unet_block_w down[SD_MAX_LEVELS];
    resnet_w mid_resnets[2];
    transformer_w mid_attention;
    bool has_mid_attention;
} unet_encoder_w;

/* Records a BAD_MODEL error on L and returns false unless c is a config the builders take. */
bool unet_config_check(loader_t *L, const sd_unet_config_t *c);

void ld_unet_embed(loader_t *L, unet_embed_w *e, const sd_unet_config_t *c);
void ld_unet_encoder(loader_t *L, unet_encoder_w *e, const sd_unet_config_t *c, int64_t temb_dim);
void free_unet_encoder(unet_encoder_w *e);
/* up[i] works at level levels - 1 - i. */
void ld_unet_decoder(loader_t *L, unet_block_w *up, const sd_unet_config_t *c, int64_t temb_dim);
void free_unet_block(unet_block_w *b);

/* The skips' (C, H, W) for latents of (h, w), in the order the down blocks make them;
 * returns their count. */
int unet_skip_shapes(const sd_unet_config_t *c, int64_t h, int64_t w,
                     int64_t shapes[UNET_MAX_SKIPS][3]);

/* Checks the embedding inputs against c for a batch of b (op names the caller in errors):
 * text_embeds (B, P) and time_ids (B, N) f32 exactly when addition_embed_type is
 * TEXT_TIME, class labels exactly when there is a class embedding (I32 for TABLE, F32 for
 * TIMESTEP). */
sd_status_t unet_check_embed_inputs(sd_ctx_t *ctx, const char *op, const sd_unet_config_t *c,
                                    const sd_tensor_t *text_embeds, const sd_tensor_t *time_ids,
                                    const sd_tensor_t *class_labels, int64_t b);

/* TABLE class embeddings: gathers the rows of the (B) I32 labels into a new (B, dim) scratch
 * tensor of the activation dtype (*rows; the caller frees it with sd_scratch_free) before a
 * forward runs, since staged graph inputs are float tensors. */
sd_status_t unet_class_rows(sd_ctx_t *ctx, const unet_embed_w *e, const sd_tensor_t *labels,
                            sd_tensor_t **rows, sd_tensor_t *rows2d);

/* The inputs of g_unet_temb: t (B) f32; text_embeds (B, P) in the activation dtype and
 * time_ids (B, N) f32 (TEXT_TIME); class_emb the gathered rows (B, dim) (TABLE) or the
 * labels (B) f32 (TIMESTEP). */
typedef struct {
    const sd_tensor_t *t, *text_embeds, *time_ids, *class_emb;
} unet_embed_in_t;

/* SiLU(time embedding + class embedding + addition embedding): the ResNets only ever see
 * SiLU(emb). New (B, dim). */
sd_tensor_t *g_unet_temb(build_t *g, const unet_embed_w *e, const sd_unet_config_t *c, int64_t b,
                         const unet_embed_in_t *in);

/* The down blocks on h, conv_in's output, which becomes skips[0]; every block output is
 * appended to skips (the caller frees them all). Returns the number of skips; the last is
 * the mid block's input. */
int g_unet_down(build_t *g, const unet_encoder_w *e, const sd_unet_config_t *c, sd_tensor_t *h,
                const sd_tensor_t *temb, const sd_tensor_t *cond, sd_tensor_t **skips);
/* The mid block on x. New tensor. */
sd_tensor_t *g_unet_mid(build_t *g, const unet_encoder_w *e, const sd_unet_config_t *c,
                        const sd_tensor_t *x, const sd_tensor_t *temb, const sd_tensor_t *cond);
/* The up blocks from h (the mid block's output, freed), consuming the n_skips skips from
 * the last (each freed). New tensor at the resolution of skips[0]. */
sd_tensor_t *g_unet_up(build_t *g, const unet_block_w *up, const sd_unet_config_t *c,
                       sd_tensor_t *h, sd_tensor_t **skips, int n_skips, const sd_tensor_t *temb,
                       const sd_tensor_t *cond);

#endif /* SD_UNET_BLOCKS_H */
