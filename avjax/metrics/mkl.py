"""Mean KL divergence between class posteriors of real and generated audio (SpecVQGAN `kl.py`).

Each generated sample is compared with the real clip of the same video: both Melception 'logits'
are softmaxed and the metric is `sum_i KL(p_real_i || p_fake_i) / N_fake`, with the official
`+1e-6` inside the log of the fake probabilities (`F.kl_div(log(p_fake + 1e-6), p_real, 'sum')`).
Several fake samples per video are grouped by a video key (`video_key`) and the real logits are
replicated once per sample.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import scipy.special

EPS = 1e-6


def video_key(path, dataset: str = "vggsound", classes: Sequence[str] | None = None) -> str:
    """The shared key of a real or fake file, as the official `path_to_sharedkey`.

    VGGSound: the stem without `_mel`, cut at `_sample_` (`vid_mel_sample_3.npy` -> `vid`).
    VAS: the class name (a `cls_<i>` folder is mapped through the sorted `classes`) joined with
    that stem, e.g. `.../cls_2/video_00001_mel_sample_0.npy` -> `dog_video_00001`.
    """
    path = str(path)
    if dataset.lower() == "vggsound":
        return pathlib.Path(path).stem.replace("_mel", "").split("_sample_")[0]
    if dataset.lower() == "vas":
        if classes is None:
            raise ValueError("video_key: dataset='vas' needs the list of class names")
        for i, c in enumerate(sorted(classes)):
            path = path.replace(f"cls_{i}", c).replace("melspec_10s_22050hz/", "")
        p = pathlib.Path(path)
        return p.parent.stem + "_" + p.stem.replace("_mel", "").split("_sample_")[0]
    raise ValueError(f"video_key: unknown dataset {dataset!r} (expected 'vggsound' or 'vas')")


def kl_real_fake(logits_real, logits_fake) -> np.ndarray:
    """Per-row KL(softmax(real) || softmax(fake)) with +1e-6 in the fake log, [N, C] -> [N]."""
    p_real = scipy.special.softmax(np.asarray(logits_real, np.float64), axis=-1)
    p_fake = scipy.special.softmax(np.asarray(logits_fake, np.float64), axis=-1)
    return np.sum(scipy.special.xlogy(p_real, p_real) - p_real * np.log(p_fake + EPS), axis=-1)


def pair_by_key(logits_real, logits_fake, real_keys, fake_keys):
    """Replicates real rows once per fake sample of the same key.

    Returns (real [K, C], fake [K, C]) ordered by the real keys, fakes in input order within a
    key. As in the official code, fakes whose key has no real clip are left out, a real clip
    with no fakes contributes nothing, and a repeated real key keeps its last row.
    """
    logits_real, logits_fake = np.asarray(logits_real), np.asarray(logits_fake)
    if len(real_keys) != len(logits_real) or len(fake_keys) != len(logits_fake):
        raise ValueError(
            f"keys and logits differ in length: real {len(real_keys)} vs {len(logits_real)}, "
            f"fake {len(fake_keys)} vs {len(logits_fake)}"
        )
    real_by_key = {k: i for i, k in enumerate(real_keys)}
    fakes_by_key: dict[str, list[int]] = {}
    for i, k in enumerate(fake_keys):
        fakes_by_key.setdefault(k, []).append(i)
    real_idx, fake_idx = [], []
    for k, ri in real_by_key.items():
        fi = fakes_by_key.get(k, [])
        fake_idx.extend(fi)
        real_idx.extend([ri] * len(fi))
    if not fake_idx:
        raise ValueError("MKL: no generated sample shares a video key with a real clip")
    return logits_real[real_idx], logits_fake[fake_idx]


def mkl(logits_real, logits_fake, real_keys=None, fake_keys=None) -> float:
    """Mean over fake samples of KL(p_real || p_fake) on Melception 'logits'.

    Args:
      logits_real: [R, C] logits of the real clips.
      logits_fake: [F, C] logits of the generated samples, or [R, S, C] with S samples per real.
      real_keys, fake_keys: video keys (e.g. from `video_key`) of the rows; when omitted, fakes are
        matched to reals by position ([R, C] one-to-one, or [R, S, C]).
    Returns:
      `sum KL / N_fake` as a float.
    """
    logits_real, logits_fake = np.asarray(logits_real), np.asarray(logits_fake)
    if logits_real.ndim != 2:
        raise ValueError(f"logits_real must be [R, C], got {logits_real.shape}")
    if (real_keys is None) != (fake_keys is None):
        raise ValueError("give both real_keys and fake_keys, or neither")
    if real_keys is not None:
        real, fake = pair_by_key(logits_real, logits_fake, list(real_keys), list(fake_keys))
    elif logits_fake.ndim == 3 and logits_fake.shape[0] == logits_real.shape[0]:
        s = logits_fake.shape[1]
        real, fake = (
            np.repeat(logits_real, s, axis=0),
            logits_fake.reshape(-1, logits_fake.shape[-1]),
        )
    elif logits_fake.shape == logits_real.shape:
        real, fake = logits_real, logits_fake
    else:
        raise ValueError(
            f"without keys logits_fake must be [R, C] or [R, S, C] for logits_real "
            f"{logits_real.shape}, got {logits_fake.shape}"
        )
    if real.shape[-1] != fake.shape[-1]:
        raise ValueError(f"class counts differ: real {real.shape[-1]} vs fake {fake.shape[-1]}")
    return float(np.sum(kl_real_fake(real, fake)) / len(fake))
