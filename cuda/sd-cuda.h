/*
 * sd-cuda.h - hooks of the CUDA backend outside the backend interface, for the CUDA tests
 * and benchmarks (C callable, internal: not exported from libsd-cuda).
 */
#ifndef SD_CUDA_H
#define SD_CUDA_H

#include "sd-internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The context's cudaStream_t (as void *, so C callers need no CUDA header), or NULL when
 * ctx is not a CUDA context. Benchmarks record their events on it. */
void *sd_cuda_ctx_stream(sd_ctx_t *ctx);

/* Starts capturing the context's stream into a CUDA graph (cudaStreamCaptureModeGlobal:
 * any synchronising or otherwise capture-unsafe call made by an op fails the capture). */
sd_status_t sd_cuda_capture_begin(sd_ctx_t *ctx);

/* Ends the capture, instantiates the graph, launches it `replays` times on the context's
 * stream and waits for it; the graph is freed. */
sd_status_t sd_cuda_capture_end_and_replay(sd_ctx_t *ctx, int replays);

#ifdef __cplusplus
}
#endif

#endif /* SD_CUDA_H */
