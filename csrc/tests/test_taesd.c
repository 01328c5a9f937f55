/*
 * The TAESD decoder's last level in row bands (taesd.c, g_last_level_bands) against the same
 * decoder over the whole image, which it runs where the backend cannot copy row bands: a
 * random decoder of 32 channels (so its convolutions take the Winograd path, whose tile grid
 * differs between a band and the image), three levels with two Blocks on the last, decoding
 * a 40x36 latent into 160x144 images, i.e. bands of 64, 64 and 32 rows with their halos.
 */
#include "harness.h"

#include "sd-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CH = 32, LEVELS = 3, LAT = 4, OUT = 3, B = 2, LH = 40, LW = 36, F = 4, MAX_W = 64 };
static const int32_t BLOCKS[LEVELS] = {1, 1, 2};

typedef struct {
    sd_weight_t w[MAX_W];
    char names[MAX_W][80];
    float *data[MAX_W];
    int n;
} table_t;

static void add(table_t *t, const char *name, int64_t cout, int64_t cin, bool bias) {
    int64_t n = cout * cin * 9;
    for (int k = 0; k < (bias ? 2 : 1); k++) {
        float *d = malloc((size_t)n * sizeof *d);
        rng_fill(d, n, -0.15f, 0.15f);
        snprintf(t->names[t->n], sizeof t->names[t->n], "%s.%s", name, k ? "bias" : "weight");
        t->data[t->n] = d;
        t->w[t->n] = k ? (sd_weight_t){t->names[t->n], SD_DTYPE_F32, 1, {cout}, d}
                       : (sd_weight_t){t->names[t->n], SD_DTYPE_F32, 4, {cout, cin, 3, 3}, d};
        t->n++;
        n = cout;
    }
}

/* diffusers' decoder.layers indices: conv, ReLU, then per level its Blocks, an Upsample and
 * a conv without bias (the last level: the output conv, with bias). */
static void make_decoder(table_t *t) {
    char name[48];
    add(t, "decoder.layers.0", CH, LAT, true);
    int idx = 2;
    for (int i = 0; i < LEVELS; i++) {
        for (int j = 0; j < BLOCKS[i]; j++, idx++)
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "decoder.layers.%d.conv.%d", idx, 2 * k);
                add(t, name, CH, CH, true);
            }
        const bool last = i == LEVELS - 1;
        if (!last) idx++;
        snprintf(name, sizeof name, "decoder.layers.%d", idx++);
        add(t, name, last ? OUT : CH, CH, last);
    }
}

static float *decode(sd_ctx_t *ctx, sd_model_t *m, const float *z) {
    const int64_t zs[4] = {B, LAT, LH, LW}, os[4] = {B, OUT, LH * F, LW * F};
    sd_tensor_t *zt = make_tensor(ctx, SD_DTYPE_F32, 4, zs, z, NULL);
    sd_tensor_t *out = make_empty(ctx, 4, os);
    CHECK_STATUS(sd_taesd_decode(ctx, m, zt, out), SD_STATUS_OK);
    float *got = fetch(ctx, out);
    sd_tensor_free(ctx, zt), sd_tensor_free(ctx, out);
    return got;
}

int main(void) {
    sd_ctx_params_t p;
    sd_ctx_params_default(&p);
    p.n_threads = 2;
    sd_ctx_t *ctx = NULL;
    char err[256];
    if (sd_ctx_init(&p, &ctx, err, sizeof err) != SD_STATUS_OK) {
        fprintf(stderr, "sd_ctx_init: %s\n", err);
        return 2;
    }
    rng_seed(7);
    table_t t = {0};
    make_decoder(&t);
    sd_taesd_config_t c;
    sd_taesd_config_default(&c);
    c.latent_channels = LAT, c.out_channels = OUT, c.encoder_levels = 0, c.decoder_levels = LEVELS;
    for (int i = 0; i < LEVELS; i++) c.decoder_channels[i] = CH, c.decoder_blocks[i] = BLOCKS[i];
    sd_model_t *m = NULL;
    CHECK_STATUS(sd_taesd_load(ctx, &c, t.w, t.n, &m), SD_STATUS_OK);
    const int64_t nz = B * LAT * LH * LW, no = B * OUT * LH * F * LW * F;
    float *z = malloc((size_t)nz * sizeof *z);
    rng_fill(z, nz, -2.0f, 2.0f);
    if (m != NULL) {
        CHECK(sd_ctx_copies_rows(ctx), "the CPU backend copies row bands");
        float *bands = decode(ctx, m, z);
        /* The same context without copy_rows decodes the whole image at once. */
        sd_backend_t *be = sd_ctx_backend_ptr(ctx);
        const sd_backend_ops_t *ops = be->ops;
        sd_backend_ops_t whole_ops = *ops;
        whole_ops.copy_rows = NULL;
        be->ops = &whole_ops;
        CHECK(!sd_ctx_copies_rows(ctx), "copy_rows removed");
        float *whole = decode(ctx, m, z);
        be->ops = ops;
        compare_floats("taesd decode 160x144: bands against the whole image", bands, whole, no,
                       1e-5, 1e-6);
        free(bands), free(whole);
        sd_model_free(ctx, m);
    }
    free(z);
    for (int i = 0; i < t.n; i++) free(t.data[i]);
    sd_ctx_free(ctx);
    return test_summary("test_taesd");
}
