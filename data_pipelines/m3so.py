"""M3SO / M3SO-NB: one MNIST digit moving in a 48x48 box, with its sound (Sound2Sight, ECCV 2020).

The rules of the official generator (`M3SO_Gen_Code/multimodal_moving_mnist_with_block.py`,
docs/sound2sight.md 2), vectorised over clips with numpy:

* canvas 48x48, one 28x28 digit, top-left corner `p` (coordinate 0 = horizontal / column)
  uniform in [0, 20]^2, speed in {2, ..., 6} px/frame, direction uniform in (-pi, pi);
* per frame t: draw the digit at `int(p)` (truncation, PIL-paste clipping); `q = p + v`; on each
  axis where `q < -2` or `q > 22` negate that velocity component (wall bounce); with the block
  present, if a corner of the digit box at `q` lies inside the block, multiply `v` by the
  official `get_bounce_dir` signs (block bounce); then `p += v`;
* the audio of frame t (440 samples at 4400 Hz, 10 fps) is the symbol's two-tone chord with
  amplitude `|p_{t+1}| / |(20, 20)|`, i.e. it uses the position and bounces of the move t -> t+1:
  **the sound leads the image by one frame**, as in the official code. The symbol is the digit,
  11 on a wall bounce alone, 12 on a block bounce alone, the digit when both happen;
* M3SO (`block=True`): a 32x32 white block is drawn from frame `block_start_frame + 1` on; its
  top-left corner is drawn uniformly in [12, 16)^2 (truncated to int) with the official 10,000-try
  rejection search against the digit box.

Geometry note (checked, not a choice): on a 48x48 canvas a 32x32 block in [12, 16)^2 + 32 always
overlaps the 28x28 box of a digit whose corner stays in [-2, 22]^2 (on each axis the intervals
overlap and the shorter one has an end inside the longer one), so the official search *always*
exhausts its 10,000 tries and keeps the last draw (the block lands on the digit), and from then on
the box test reports a block bounce on nearly every move: the digit rattles under the block, and a
block sign flip can undo a wall bounce, letting the digit drift off the canvas. Both modes
reproduce this (no principled fix exists without changing the published geometry);
`positions`, `wall_bounce` and `block_bounce` expose it.

Fixed by default, official behaviour with `official=True` (docs/sound2sight.md 2 "other bugs"):

* tone: default a zero-centred float `A (sin 2 pi f1 i/440 + sin 2 pi f2 i/440) / 2`; official
  `int16(int(32767 + A chord 32767))` with numpy's wrap-around (the positive half wraps);
* frequencies (cycles per frame; x10 = Hz): default F1 = 30, 50, 70, 90 and F2 = 120, 150, 180,
  210 (below Nyquist = 220, whole cycles per frame, each on its own bin of the n_fft=44 STFT);
  official F1 = 16, 32, 64, 128 and F2 = 256, 512, 1024, 2048 (F2 above Nyquist: aliased);
  digit d uses (F1[d // 4], F2[d % 4]) in both, as do symbols 11 and 12;
* test digits: default t10k images with t10k labels; official t10k images with *train* labels;
* split pools: default train = MNIST train[:50000], val = train[50000:], test = t10k; official
  train and val both draw from all 60,000 train digits;
* block start: default `block_start_frame=40` (block from frame index 41, the paper's "frame
  42", after the 30 seen frames); official 10 (the script's default: from frame index 11).

Both modes support M3SO-NB (`block=False`), which the official script cannot produce.

Audio features (docs/sound2sight.md 1.11, inferred): per frame, a centred STFT of its 440
samples, n_fft 44,
hop 22, periodic Hann window, zero padding -> 23 frequency rows x 21 time columns; scaled as
`log1p(|X|) / log1p(11)` (11 = |X| of a full-scale sine on a bin centre: sum(hann)/2), so a
sine of amplitude 1 maps to 1 and silence to 0. The waveform is in full scale 1 (official mode:
the wrapped int16 / 32768).

Determinism: clip i of split s is generated from `np.random.default_rng([seed, s, i])` alone,
so it does not depend on how many clips are generated or in which chunks.

Digits: MNIST IDX files (`*-idx3-ubyte[.gz]`) from `mnist_dir`, parsed here; without one,
scikit-learn's bundled 8x8 digits (1,797) upscaled bilinearly to 20x20 and padded to 28x28
(MNIST's 20x20 box in a 28x28 frame), split 1197 / 300 / 300 (official mode: 1497 train+val,
300 test).
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
from collections.abc import Iterator

import numpy as np

__all__ = [
    "FPS",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "DigitPools",
    "M3soConfig",
    "audio_features",
    "generate",
    "iter_chunks",
    "load_digits",
    "read_idx",
    "tone_table",
]

SAMPLE_RATE = 4400
FPS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 440
CANVAS = 48
DIGIT = 28
BLOCK = DIGIT + 4  # 32
LIM = CANVAS - DIGIT  # 20
N_FFT, HOP = 44, 22
AUDIO_SHAPE = (N_FFT // 2 + 1, 1 + SAMPLES_PER_FRAME // HOP)  # (23, 21)
WALL_SYMBOL, BLOCK_SYMBOL = 11, 12
SPLITS = {"train": 0, "val": 1, "test": 2}

OFFICIAL_F1 = (16, 32, 64, 128)
OFFICIAL_F2 = (256, 512, 1024, 2048)
FIXED_F1 = (30, 50, 70, 90)
FIXED_F2 = (120, 150, 180, 210)
_OFFICIAL_PI2 = 6.283185306  # dtmf.PI2
_SCALE = 32767.0
_FEATURE_NORM = np.log1p(N_FFT / 4)  # |X| of a full-scale on-bin sine is sum(hann)/2 = 11


@dataclasses.dataclass(frozen=True)
class M3soConfig:
    """What to generate.

    Attributes:
      block: M3SO (True, with the block) or M3SO-NB (False).
      num_frames: frames per clip; None = 30 for M3SO-NB (5 seen + 25), 70 for M3SO (30 + 40).
      block_start_frame: the block is drawn from frame index `block_start_frame + 1` on;
        None = 40 (paper: appears at frame 42, 1-based), or 10 with `official`.
      official: reproduce the official generator's bugs (see the module doc).
    """

    block: bool = False
    num_frames: int | None = None
    block_start_frame: int | None = None
    official: bool = False

    @property
    def frames(self) -> int:
        return self.num_frames or (70 if self.block else 30)

    @property
    def block_start(self) -> int:
        if self.block_start_frame is not None:
            return self.block_start_frame
        return 10 if self.official else 40

    def validate(self):
        if self.frames < 2:
            raise ValueError(f"num_frames={self.frames} must be at least 2")
        if self.block and not 0 <= self.block_start < self.frames - 1:
            raise ValueError(
                f"block_start_frame={self.block_start} must lie in [0, num_frames - 1 = "
                f"{self.frames - 1}) so the block appears inside the clip"
            )


# ----------------------------------------------------------------------------- digits


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """Reads an IDX file (`.gz` or raw): uint8 images [N, 28, 28] or labels [N]."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: {len(data) - offset} data bytes, header says {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _find_idx(mnist_dir: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (mnist_dir / name).is_file():
            return mnist_dir / name
    raise FileNotFoundError(f"--mnist_dir {mnist_dir}: no {stem}[.gz]")


@dataclasses.dataclass
class DigitPools:
    """Per split: uint8 digits [N, 28, 28] and their int labels [N]; `source` for the record."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str


def load_digits(mnist_dir: str | pathlib.Path | None = None, official: bool = False) -> DigitPools:
    """Digit pools for train / val / test (see the module doc for the split rules)."""
    if mnist_dir is not None:
        d = pathlib.Path(mnist_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"--mnist_dir: {d} is not a directory")
        tr_x = read_idx(_find_idx(d, "train-images-idx3-ubyte"))
        tr_y = read_idx(_find_idx(d, "train-labels-idx1-ubyte"))
        te_x = read_idx(_find_idx(d, "t10k-images-idx3-ubyte"))
        te_y = read_idx(_find_idx(d, "t10k-labels-idx1-ubyte"))
        if tr_x.shape[1:] != (DIGIT, DIGIT) or len(tr_x) != len(tr_y):
            raise ValueError(f"{d}: train images {tr_x.shape} / labels {tr_y.shape} mismatch")
        if te_x.shape[1:] != (DIGIT, DIGIT) or len(te_x) != len(te_y):
            raise ValueError(f"{d}: t10k images {te_x.shape} / labels {te_y.shape} mismatch")
        source = f"mnist:{d.resolve()}"
        n_val = 10000
    else:
        from PIL import Image
        from sklearn.datasets import load_digits as sk_digits

        sk = sk_digits()
        small = (sk.images * (255.0 / 16.0)).astype(np.float32)
        up = np.stack(
            [
                np.asarray(Image.fromarray(im, mode="F").resize((20, 20), Image.BILINEAR))
                for im in small
            ]
        )
        big = np.pad(np.clip(np.rint(up), 0, 255).astype(np.uint8), ((0, 0), (4, 4), (4, 4)))
        tr_x, tr_y = big[:1497], sk.target[:1497].astype(np.uint8)
        te_x, te_y = big[1497:], sk.target[1497:].astype(np.uint8)
        source = "sklearn_digits"
        n_val = 300
    if official:
        # Official bug: the test split pairs t10k images with the first train labels.
        images = {"train": tr_x, "val": tr_x, "test": te_x}
        labels = {"train": tr_y, "val": tr_y, "test": tr_y[: len(te_x)]}
    else:
        images = {"train": tr_x[:-n_val], "val": tr_x[-n_val:], "test": te_x}
        labels = {"train": tr_y[:-n_val], "val": tr_y[-n_val:], "test": te_y}
    labels = {k: v.astype(np.int32) for k, v in labels.items()}
    return DigitPools(images, labels, source)


# ----------------------------------------------------------------------------- audio


def tone_table(official: bool = False) -> np.ndarray:
    """[13, 440] float64 chords `(sin 2 pi f1 p + sin 2 pi f2 p) / 2`, p = i/440, per symbol."""
    f1s, f2s = (OFFICIAL_F1, OFFICIAL_F2) if official else (FIXED_F1, FIXED_F2)
    two_pi = _OFFICIAL_PI2 if official else 2 * np.pi
    p = np.arange(SAMPLES_PER_FRAME) / SAMPLES_PER_FRAME
    sym = np.arange(13)
    f1 = np.asarray(f1s)[sym // 4][:, None]
    f2 = np.asarray(f2s)[sym % 4][:, None]
    return (np.sin(p * f1 * two_pi) + np.sin(p * f2 * two_pi)) / 2


def symbol_frequencies_hz(symbol: int, official: bool = False) -> tuple[float, float]:
    """The two nominal frequencies (Hz, before any aliasing) of a symbol (digit, 11, 12)."""
    f1s, f2s = (OFFICIAL_F1, OFFICIAL_F2) if official else (FIXED_F1, FIXED_F2)
    return float(f1s[symbol // 4] * FPS), float(f2s[symbol % 4] * FPS)


def _waveform(symbols: np.ndarray, amp: np.ndarray, official: bool) -> np.ndarray:
    """symbols, amp [N, T] -> waveform [N, T * 440] float32 in full scale 1."""
    chords = tone_table(official)[symbols] * amp[..., None]  # [N, T, 440]
    if official:
        # dtmf: int(32767 + A * chord * 32767), stored into int16 by numpy's unsafe cast.
        wrapped = np.trunc(_SCALE + chords * _SCALE).astype(np.int64).astype(np.int16)
        wave = wrapped.astype(np.float32) / np.float32(32768.0)
    else:
        wave = chords.astype(np.float32)
    return wave.reshape(wave.shape[0], -1)


def audio_features(
    wave: np.ndarray, samples_per_frame: int = SAMPLES_PER_FRAME, n_fft: int = N_FFT, hop: int = HOP
) -> np.ndarray:
    """Per-frame STFT patches: [..., T * S] -> [..., T, n_fft // 2 + 1, 1 + S // hop] float32.

    Each frame's S samples on their own: centred (n_fft // 2 zeros each side), periodic Hann,
    |rfft|, scaled `log1p(|X|) / log1p(sum(hann) / 2)` (a full-scale on-bin sine -> 1).
    Defaults give M3SO's 23 x 21; `video_frames` uses 800 samples, n_fft 88, hop 50 -> 45 x 17.
    """
    wave = np.asarray(wave, np.float32)
    if wave.shape[-1] % samples_per_frame:
        raise ValueError(
            f"waveform length {wave.shape[-1]} is not a multiple of {samples_per_frame} samples"
        )
    frames = wave.reshape(*wave.shape[:-1], -1, samples_per_frame)
    pad = [(0, 0)] * (frames.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    padded = np.pad(frames, pad)
    num = 1 + samples_per_frame // hop
    idx = np.arange(num)[:, None] * hop + np.arange(n_fft)[None, :]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    segs = padded[..., idx] * window  # [..., T, num, n_fft]
    mag = np.abs(np.fft.rfft(segs, axis=-1))  # [..., T, num, bins]
    norm = np.log1p(window.sum() / 2)
    return (np.log1p(mag) / norm).astype(np.float32).swapaxes(-1, -2)


# ----------------------------------------------------------------------------- physics


def _corner_inside(blk: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """blk [N, 4] (x0, y0, x1, y1), corners [N, 4, 2] -> [N, 4] inclusive containment."""
    x, y = corners[..., 0], corners[..., 1]
    return (
        (x >= blk[:, None, 0])
        & (x <= blk[:, None, 2])
        & (y >= blk[:, None, 1])
        & (y <= blk[:, None, 3])
    )


def _box_corners(p: np.ndarray, size: float) -> np.ndarray:
    """Top-left p [..., 2] -> corners [..., 4, 2] in `cycle_coords` order (tl, tr, br, bl)."""
    off = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    return p[..., None, :] + off


def _bounce_signs(blk: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """The official `get_bounce_dir`, vectorised: velocity sign multipliers [N, 2].

    As in the official code, the segment used is the digit's *top-left* corner from `prev` to
    `nxt` (its `intersect == True` index is always 0), faces are the block edges in cycle order
    and a face counts when both line parameters are positive; exactly one face hit on edge 0 or
    2 (horizontal) flips vy, on edge 1 or 3 flips vx; otherwise both flip.
    """
    b = _box_corners(blk[:, :2].astype(np.float64), BLOCK)  # [N, 4, 2]
    p12 = prev - nxt  # [N, 2]
    hits = []
    for t in range(4):
        face = b[:, t] - b[:, (t + 1) % 4]  # [N, 2]
        rhs = nxt - b[:, (t + 1) % 4]
        # Solve [p12, -face] @ (a, c) = rhs by Cramer's rule.
        m00, m10 = p12[:, 0], p12[:, 1]
        m01, m11 = -face[:, 0], -face[:, 1]
        det = m00 * m11 - m01 * m10
        safe = np.where(det == 0, 1.0, det)
        a = (rhs[:, 0] * m11 - m01 * rhs[:, 1]) / safe
        c = (m00 * rhs[:, 1] - rhs[:, 0] * m10) / safe
        hits.append((det != 0) & (a > 0) & (c > 0))
    hits = np.stack(hits, -1)  # [N, 4]
    one = hits.sum(-1) == 1
    horiz = hits[:, 0] | hits[:, 2]
    sx = np.where(one & horiz, 1.0, -1.0)
    sy = np.where(one & ~horiz, 1.0, -1.0)
    return np.stack([sx, sy], -1)


def _place_blocks(rngs, positions: np.ndarray, tries: int = 10000) -> np.ndarray:
    """Official `get_block_position` for each clip: int top-left [N, 2].

    Candidates `(u * 4 + 12, v * 4 + 12)`, u, v ~ U[0, 1), are rejected while a corner of the
    digit box is inside the candidate block; after `tries` rejections the last one is kept.
    """
    region = 0.75 * CANVAS - BLOCK  # 4
    out = np.zeros((len(rngs), 2), np.int64)
    for n, rng in enumerate(rngs):
        cand = rng.random((tries, 2)) * region + CANVAS / 4  # [tries, 2]
        blk = np.concatenate([cand, cand + BLOCK], -1)
        corners = np.broadcast_to(_box_corners(positions[n], DIGIT), (tries, 4, 2))
        bad = _corner_inside(blk, corners).any(-1)
        ok = np.flatnonzero(~bad)
        out[n] = cand[ok[0] if len(ok) else tries - 1].astype(np.int64)
    return out


def _paste(digits: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """digits [N, 28, 28] uint8 pasted at int top-left pos [N, T, 2] (x, y) -> [N, T, 48, 48]."""
    r = np.arange(CANVAS)
    rows = r[None, None, :] - pos[..., 1:2]  # [N, T, 48] digit row for each canvas row
    cols = r[None, None, :] - pos[..., 0:1]
    rv = (rows >= 0) & (rows < DIGIT)
    cv = (cols >= 0) & (cols < DIGIT)
    rows, cols = np.clip(rows, 0, DIGIT - 1), np.clip(cols, 0, DIGIT - 1)
    n = np.arange(len(digits))[:, None, None, None]
    out = digits[n, rows[..., :, None], cols[..., None, :]]
    return np.where(rv[..., :, None] & cv[..., None, :], out, 0).astype(np.uint8)


def generate(
    pools: DigitPools,
    split: str,
    indices: np.ndarray | range,
    *,
    seed: int = 0,
    config: M3soConfig = M3soConfig(),
) -> dict[str, np.ndarray]:
    """Generates clips `indices` of `split`, vectorised over clips.

    Returns (N = len(indices), T = config.frames):
      frames uint8 [N, T, 48, 48, 1]; audio float32 [N, T, 23, 21]; waveform float32 [N, T*440];
      block int32 [N, 4] (x, y, size, present; x = column); block_start int32 [N] (first frame
      index with the block, -1 without); label int32 [N]; digit_index int32 [N] (index into the
      split's pool); positions float32 [N, T + 1, 2] (top-left (x, y) before each frame's move:
      frame t is drawn at int(positions[t]); audio t uses positions[t + 1]); wall_bounce,
      block_bounce uint8 [N, T] (bounce on the move t -> t + 1, heard in audio frame t);
      amplitude float32 [N, T].
    """
    config.validate()
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {sorted(SPLITS)}")
    indices = np.asarray(indices, np.int64)
    n, T = len(indices), config.frames
    pool_x, pool_y = pools.images[split], pools.labels[split]
    rngs = [np.random.default_rng([seed, SPLITS[split], int(i)]) for i in indices]
    digit_index = np.array([rng.integers(len(pool_x)) for rng in rngs], np.int64)
    direction = np.array([rng.uniform(-np.pi, np.pi) for rng in rngs])
    speed = np.array([rng.integers(2, 7) for rng in rngs], np.float64)
    p = np.stack([rng.uniform(0, 1, 2) * LIM for rng in rngs]) if n else np.zeros((0, 2))
    v = np.stack([speed * np.cos(direction), speed * np.sin(direction)], -1)

    positions = np.zeros((n, T + 1, 2))
    wall = np.zeros((n, T), bool)
    blockb = np.zeros((n, T), bool)
    blk = np.zeros((n, 4), np.int64)
    block_on = False
    first_block = config.block_start + 1
    for t in range(T):
        if config.block and t == first_block:
            bp = _place_blocks(rngs, p)
            blk = np.concatenate([bp, bp + BLOCK], -1)
            block_on = True
        positions[:, t] = p
        nxt = p + v
        hit = (nxt < -2) | (nxt > LIM + 2)
        v = np.where(hit, -v, v)
        wall[:, t] = hit.any(-1)
        if block_on:
            inside = _corner_inside(blk, _box_corners(nxt, DIGIT)).any(-1)
            signs = _bounce_signs(blk, p, nxt)
            v = np.where(inside[:, None], v * signs, v)
            blockb[:, t] = inside
        p = p + v
    positions[:, T] = p
    amp = np.linalg.norm(positions[:, 1:], axis=-1) / np.sqrt(2.0 * LIM**2)

    labels = pool_y[digit_index]
    symbols = np.broadcast_to(labels[:, None], (n, T)).copy()
    symbols[wall & ~blockb] = WALL_SYMBOL
    symbols[blockb & ~wall] = BLOCK_SYMBOL
    wave = _waveform(symbols, amp, config.official)

    frames = _paste(pool_x[digit_index], positions[:, :T].astype(np.int64))
    if config.block:
        r = np.arange(CANVAS)
        in_x = (r[None, :] >= blk[:, 0:1]) & (r[None, :] < blk[:, 0:1] + BLOCK)
        in_y = (r[None, :] >= blk[:, 1:2]) & (r[None, :] < blk[:, 1:2] + BLOCK)
        mask = in_y[:, :, None] & in_x[:, None, :]  # [N, 48(rows), 48(cols)]
        frames[:, first_block:][np.broadcast_to(mask[:, None], frames[:, first_block:].shape)] = 255
    block = np.zeros((n, 4), np.int32)
    if config.block:
        block[:] = np.stack([blk[:, 0], blk[:, 1], np.full(n, BLOCK), np.ones(n)], -1)
    return {
        "frames": frames[..., None],
        "audio": audio_features(wave),
        "waveform": wave,
        "block": block,
        "block_start": np.full(n, first_block if config.block else -1, np.int32),
        "label": labels.astype(np.int32),
        "digit_index": digit_index.astype(np.int32),
        "positions": positions.astype(np.float32),
        "wall_bounce": wall.astype(np.uint8),
        "block_bounce": blockb.astype(np.uint8),
        "amplitude": amp.astype(np.float32),
    }


def iter_chunks(
    pools: DigitPools,
    split: str,
    num: int,
    *,
    seed: int = 0,
    config: M3soConfig = M3soConfig(),
    chunk: int = 128,
) -> Iterator[dict[str, np.ndarray]]:
    """`generate` over clips 0..num-1 of `split` in chunks of `chunk` clips (bounded memory)."""
    for start in range(0, num, chunk):
        yield generate(
            pools, split, range(start, min(num, start + chunk)), seed=seed, config=config
        )
