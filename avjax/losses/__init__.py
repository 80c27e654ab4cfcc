"""Losses: GAN terms, adaptive weight, LPAPS."""
