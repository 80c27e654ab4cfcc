"""avjax: JAX/Flax audio-visual generative models (SpecVQGAN, Sound2Sight, MCAV)."""
