# The sampler chain binding (included by _core.pyx).
