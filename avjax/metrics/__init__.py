"""Evaluation metrics: FID/MKL on Melception features, SSIM/PSNR on frames."""
