/* dist.c — the final draw: one token by its softmax probability. */
#include "janlib_sampling.h"

#define DIST_STREAM 1

typedef struct {
    jl_sampler base;
    uint64_t seed;
    jl_rng rng;
} dist_sampler;

static jl_status dist_apply(jl_sampler *self, jl_candidates *c) {
    return jl_candidates_draw(c, &((dist_sampler *)self)->rng);
}

static void dist_reset(jl_sampler *self) {
    dist_sampler *d = (dist_sampler *)self;
    jl_rng_seed(&d->rng, d->seed, DIST_STREAM);
}

static const jl_sampler_iface dist_iface = {
    .name = "dist",
    .size = sizeof(dist_sampler),
    .apply = dist_apply,
    .reset = dist_reset,
};

jl_sampler *jl_sampler_dist_new(uint64_t seed) {
    dist_sampler *d = (dist_sampler *)jl_sampler_new(&dist_iface);
    if (d) {
        d->seed = seed;
        dist_reset(&d->base);
    }
    return (jl_sampler *)d;
}
