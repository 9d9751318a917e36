"""Training: codecs, latent store, dynamics, the `worldsim train` pipeline (inference lives in worldsim.model)."""
