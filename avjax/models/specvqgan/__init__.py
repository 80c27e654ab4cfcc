"""SpecVQGAN: spectrogram VQGAN, patch discriminator, spectrogram classifiers."""
