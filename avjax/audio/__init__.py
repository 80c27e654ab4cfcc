"""Audio ops: SpecVQGAN log-mel spectrograms, their inverse, waveform I/O."""
