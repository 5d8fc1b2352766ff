/* rng.c — xoshiro256** seeded through splitmix64 (Blackman & Vigna), one stream per sampler. */
#include "janlib_sampling.h"

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void jl_rng_seed(jl_rng *rng, uint64_t seed, uint64_t stream) {
    /* distinct streams so that, unlike llama.cpp, xtc's coin and dist's draw are not the same number */
    uint64_t state = seed ^ (stream * 0xd1b54a32d192ed03ULL);
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&state);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t jl_rng_next(jl_rng *rng) {
    uint64_t *s = rng->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double jl_rng_uniform(jl_rng *rng) { return (double)(jl_rng_next(rng) >> 11) * 0x1.0p-53; }
