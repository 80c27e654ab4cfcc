"""Inception score on Melception 'logits_unbiased' (SpecVQGAN `isc.py`)."""

from __future__ import annotations

import numpy as np
import scipy.special


def inception_score(logits, splits: int = 10, seed: int = 2020, shuffle: bool = True):
    """Mean and std over `splits` chunks of exp(mean_i KL(p_i || mean_j p_j)).

    Args:
      logits: [N, C] ('logits_unbiased' in SpecVQGAN), used in float64.
      splits: number of chunks; rows are shuffled first with `RandomState(seed)`.
    Returns:
      (mean, std) as floats.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got {logits.shape}")
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"inception_score: {n} samples cannot be split into {splits} chunks")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    logits = logits.astype(np.float64)
    log_p = scipy.special.log_softmax(logits, axis=1)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        kl = np.sum(p[lo:hi] * (log_p[lo:hi] - np.log(q)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
