"""The world model: codecs, dynamics transformer, KV cache, sampler, checkpoints (inference only)."""
