"""Audio-generation evaluation: FID / MKL / ISC of sampled spectrograms (SpecVQGAN).

For every clip, `num_samples` spectrograms are sampled from its visual features (batched:
`batch_size` clips x `num_samples` samples per jitted call) and decoded with the run's
codebook. A Melception classifier (an avjax melception run, e.g.
`configs/melception_vggsound.py`, or the official `melception-21-05-10T09-28-40.pt` with
`train_means_stds_melspec_10s_22050hz.txt` beside it) scores reals (the split's log-mels,
centre crop 848) and fakes, as the official `evaluate.py` (docs/specvqgan.md):
  FID  on the '2048' pool features, all fakes vs all reals;
  MKL  on 'logits': each fake against the real clip of its video (keys = clip ids), mean of
       KL(p_real || p_fake) over the fakes;
  ISC  on the fakes' 'logits_unbiased' (10 splits; only with >= 10 fakes).
An untrained Melception makes the numbers meaningless, so there is no default scorer (tests
initialise a `:tiny` one). The result has the totals and a per-class table (FID where a
class has >= 2 clips, MKL, and how often a fake is classified as its real clip's class).
KID (`avjax.metrics.kid`) needs the same features and is not in the table yet.

The evaluator gets its parts from the caller: the generator (`Video2Sound`, or anything with
its `sample_codes` / `decode`), the scorer (`load_scorer`) and the clips (`AudioClips`,
which `launch/evaluate.py` builds with `data_pipelines`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging

from avjax import multihost
from avjax.errors import UserError
from avjax.evals import tables

MEL_STATS_FILE = "train_means_stds_melspec_10s_22050hz.txt"
DEFAULT_NUM_SAMPLES = 10
DEFAULT_BATCH_SIZE = 8
WINDOW_FRAMES = 848  # a 10-s spectrogram, the paper's window (860 frames centre-cropped)
LOOP_FIELDS = ("melception", "num_samples", "batch_size", "max_clips", "seed")


def load_scorer(path: str | None, batch_size: int = 64):
    """The Melception scorer of an avjax melception run or official checkpoint `path`."""
    from avjax.metrics.melception_scorer import MelceptionScorer

    if not path:
        raise UserError(
            "--melception is required: FID and MKL are computed on a trained Melception "
            "(a random one makes them meaningless). Pass an avjax melception run (python "
            "launch/train.py --config configs/melception_vggsound.py) or the official "
            f"melception-21-05-10T09-28-40.pt with {MEL_STATS_FILE} in the same folder"
        )
    p = pathlib.Path(path)
    stats = None
    if p.is_file():
        stats = p.parent / MEL_STATS_FILE
        if not stats.is_file():
            raise UserError(
                f"--melception: {p} is an official Melception checkpoint; put the official "
                f"{MEL_STATS_FILE} (specvqgan/modules/losses/vggishish/data/) next to it: "
                f"{stats} not found"
            )
    try:
        return MelceptionScorer.from_path(p, mel_stats=stats, batch_size=batch_size)
    except (OSError, ValueError) as e:
        raise UserError(f"--melception: {e}") from None


@dataclasses.dataclass(frozen=True)
class AudioClips:
    """The clips of a split as the evaluator reads them (the caller opens the dataset).

    Attributes:
      ids: clip ids; MKL pairs every fake with the real clip of its id.
      labels: int [N] class of each clip (-1: unlabelled).
      class_names: names of the class ids.
      mel: i -> the real log-mel of clip i, [80, 848] in [0, 1].
      features: i -> the visual features of clip i, [Tc, D] (D 0: a class-only model).
      data_dir: where the clips are (recorded in the result).
    """

    ids: Sequence[str]
    labels: np.ndarray
    class_names: Sequence[str]
    mel: Callable[[int], np.ndarray]
    features: Callable[[int], np.ndarray]
    data_dir: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def per_class(labels, class_names, real, fake, num_samples) -> list[dict]:
    """Per-class FID (>= 2 clips), MKL and agreement of fakes with their real clip's class."""
    from avjax.metrics.fid import frechet_distance
    from avjax.metrics.mkl import kl_real_fake

    rows = []
    kl = kl_real_fake(np.repeat(real["logits"], num_samples, 0), fake["logits"])
    agree = np.repeat(real["logits"].argmax(-1), num_samples) == fake["logits"].argmax(-1)
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        fsel = np.repeat(sel, num_samples)
        name = class_names[c] if 0 <= c < len(class_names) else ("unlabelled" if c < 0 else str(c))
        fid = None
        if sel.sum() >= 2:
            fid = frechet_distance(real["2048"][sel], fake["2048"][fsel])
        rows.append(
            {
                "class": name,
                "clips": int(sel.sum()),
                "samples": int(fsel.sum()),
                "fid": fid,
                "mkl": float(kl[fsel].mean()),
                "same_class": float(agree[fsel].mean()),
            }
        )
    return rows


def _centre_crop(x: np.ndarray, frames: int) -> np.ndarray:
    """[..., T] -> [..., frames], the middle `frames` of T."""
    start = (x.shape[-1] - frames) // 2
    return x[..., start : start + frames]


def reconstructed_clips(generator, batches, max_clips: int) -> AudioClips:
    """The clips of the trainer's eval batches, their reals decoded from their true codes.

    Args:
      generator: a `Video2Sound` (its `decode`).
      batches: {"codes": [B, rows * W], "feats": [B, Tc, D] (feature models), "label": [B],
        "mask": [B] (0: padding)} as the transformer's eval split gives them.
      max_clips: stop after this many real clips.
    """
    codes, feats, labels = [], [], []
    for batch in batches:
        keep = np.asarray(batch.get("mask", np.ones(len(batch["codes"])))) > 0
        codes.append(np.asarray(batch["codes"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
        if "feats" in batch:
            feats.append(np.asarray(batch["feats"], np.float32)[keep])
        if sum(map(len, codes)) >= max_clips:
            break
    if not codes or not sum(map(len, codes)):
        raise ValueError("the eval split produced no clips for the audio-generation evaluator")
    codes = np.concatenate(codes)[:max_clips]
    n = len(codes)
    reals = np.concatenate(
        [generator.decode(codes[lo : lo + 16]) for lo in range(0, n, 16)]
    )  # codebook reconstructions, [N, 80, T]
    feats = np.concatenate(feats)[:n] if feats else np.zeros((n, 0, 0), np.float32)
    return AudioClips(
        ids=[str(i) for i in range(n)],
        labels=np.concatenate(labels)[:n],
        class_names=[],
        mel=lambda i: reals[i],
        features=lambda i: feats[i],
    )


class AudioGenerationEvaluator:
    """Samples spectrograms per clip and scores them with Melception (module docstring).

    Args:
      generator: `Video2Sound` (or anything with its `sample_codes(feats, rng, num_samples=,
        labels=, temperature=, top_k=, top_p=)` and `decode(codes) -> mel01`).
      scorer: a `MelceptionScorer` (`load_scorer`), called once per batch on its reals and
        fakes together: give it batch_size * (num_samples + 1) as its batch size.
      num_samples: samples per clip; batch_size: clips per jitted sampling call.
      seed: sampling seed (batch starting at clip i uses `fold_in(PRNGKey(seed), i)`).
      sampling: temperature / top_k / top_p.
      class_conditioned: pass the clips' labels (a model with `num_classes`).
      melception: the scorer's name in the result.
    """

    def __init__(
        self,
        generator,
        scorer,
        *,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        sampling: dict | None = None,
        class_conditioned: bool = False,
        melception: str = "",
    ):
        self.generator, self.scorer = generator, scorer
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        s = sampling or {}
        self.sampling = dict(
            temperature=s.get("temperature", 1.0),
            top_k=s.get("top_k", 0),
            top_p=s.get("top_p", 1.0),
        )
        self.class_conditioned, self.melception = class_conditioned, melception

    @classmethod
    def from_config(cls, config, generator, scorer, **kwargs) -> AudioGenerationEvaluator:
        """Sampling settings and class conditioning from a transformer run's config."""
        return cls(
            generator,
            scorer,
            sampling=config.sampling.to_dict(),
            class_conditioned=bool(config.model.num_classes),
            **{k: v for k, v in kwargs.items() if v is not None},
        )

    @classmethod
    def in_loop(cls, config, section, task) -> Callable:
        """The transformer trainer's hook: fn(state, eval batches, step) -> scalars.

        `config.evals.<name>` sets `melception` (required: a Melception run or official
        checkpoint, as `load_scorer`), and optionally `num_samples` (default 2),
        `batch_size` (clips per sampling call, default the eval batch), `max_clips`
        (default 64) and `seed`. The eval batches carry codes, not spectrograms, so the
        reals here are the codebook's reconstructions of each clip's true codes: the
        numbers measure the transformer against what its codebook can express (its
        ceiling), a cheap proxy for `launch/evaluate.py`, which scores against the real
        spectrograms as the paper does.
        """
        from avjax.models.specvqgan.video2sound import Video2Sound

        unknown = sorted(set(section) - {"type", "every", *LOOP_FIELDS})
        if unknown:
            raise UserError(
                f"config.evals: unknown field(s) {unknown} for the audio-generation "
                f"evaluator; it takes {sorted(LOOP_FIELDS)}"
            )
        codec = task.codec()
        if codec is None:
            raise UserError(
                "config.evals: the audio-generation evaluator decodes samples with the "
                "codebook: set config.codebook.workdir to a codebook run"
            )
        batch_size = section.get("batch_size", config.data.global_batch_size)
        num_samples = section.get("num_samples", 2)
        try:
            scorer = load_scorer(section.get("melception"), batch_size * (num_samples + 1))
        except UserError as e:
            raise UserError(f"config.evals.melception: {e}") from None
        frames = codec.crop_frames
        if frames < scorer.crop_frames:
            raise UserError(
                f"config.evals.melception: the Melception scores {scorer.crop_frames} mel "
                f"frames; the codebook ({config.codebook.workdir}) decodes {frames}"
            )
        max_clips = section.get("max_clips", 64)
        ev = cls.from_config(
            config,
            None,
            scorer,
            num_samples=num_samples,
            batch_size=batch_size,
            seed=section.get("seed", 0),
            melception=str(section.get("melception")),
        )
        split = config.data.eval_split or "eval"

        def run(state, batches, step):
            # Every process gathers the params and clips and samples on its own devices
            # (the same keys: the same scalars everywhere).
            params = multihost.to_host(state["params"])
            if ev.generator is None:  # built once: its jitted decode compiles once
                ev.generator = Video2Sound.from_parts(config, task.model, params, codec)
            ev.generator.params = params
            batches = (multihost.to_host(b) for b in batches)
            clips = reconstructed_clips(ev.generator, batches, max_clips)
            return ev.scalars(ev.evaluate(clips, split=split, workdir=f"step {step}"))

        return run

    @staticmethod
    def scalars(result: dict) -> dict[str, float]:
        """The totals worth a TensorBoard curve."""
        out = {"fid": result["fid"], "mkl": result["mkl"]}
        if result["isc_mean"] is not None:
            out["isc"] = result["isc_mean"]
        return out

    def evaluate(self, clips: AudioClips, *, split: str, workdir: str | pathlib.Path) -> dict:
        """Samples, scores and returns the JSON-ready result (totals and `per_class`)."""
        from tqdm import tqdm

        from avjax.metrics.fid import frechet_distance
        from avjax.metrics.isc import inception_score
        from avjax.metrics.mkl import mkl

        n, num_samples, batch = len(clips), self.num_samples, self.batch_size
        names = ("2048", "logits", "logits_unbiased")
        rng = jax.random.PRNGKey(self.seed)
        real = {"2048": [], "logits": []}
        fake = {"2048": [], "logits": [], "logits_unbiased": []}
        t0 = time.perf_counter()
        for lo in tqdm(range(0, n, batch), desc=f"sampling {split}", unit="batch"):
            idx = list(range(lo, min(lo + batch, n)))
            reals = np.stack([clips.mel(i) for i in idx])
            feats = np.stack([clips.features(i) for i in idx])
            labels = np.asarray(clips.labels)[idx] if self.class_conditioned else None
            pad = batch - len(idx)  # one compiled shape for every batch
            if pad:
                feats = np.concatenate([feats, np.zeros((pad, *feats.shape[1:]), feats.dtype)])
                if labels is not None:
                    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
            codes = self.generator.sample_codes(
                feats if feats.shape[-1] else None,  # feat_dim 0: a class-only model
                jax.random.fold_in(rng, lo),
                num_samples=num_samples,
                labels=labels,
                **self.sampling,
            )
            mels = np.asarray(self.generator.decode(np.asarray(codes)[: len(idx) * num_samples]))
            frames = self.scorer.crop_frames
            if mels.shape[-1] < frames:
                raise UserError(
                    f"the run's codebook decodes {mels.shape[-1]} mel frames; the Melception "
                    f"scores {frames} (10-s spectrograms: 848): evaluate a codebook trained on "
                    f"80x{frames}"
                )
            both = [_centre_crop(reals, frames), _centre_crop(mels, frames)]
            got = self.scorer.features(np.concatenate(both), names)
            for k in real:
                real[k].append(got[k][: len(idx)])
            for k in fake:
                fake[k].append(got[k][len(idx) :])
        seconds = time.perf_counter() - t0
        real = {k: np.concatenate(v) for k, v in real.items()}
        fake = {k: np.concatenate(v) for k, v in fake.items()}
        ids = list(clips.ids[:n])
        fake_keys = [i for i in ids for _ in range(num_samples)]
        isc = (None, None)
        if len(fake["logits_unbiased"]) >= 10:
            isc = tuple(float(v) for v in inception_score(fake["logits_unbiased"]))
        labels = np.asarray(clips.labels)[:n]
        result = {
            "workdir": str(workdir),
            "split": split,
            "data_dir": str(clips.data_dir),
            "clips": n,
            "num_samples": num_samples,
            "melception": str(self.melception),
            "seed": self.seed,
            "sampling": self.sampling,
            "fid": float(frechet_distance(real["2048"], fake["2048"])),
            "mkl": float(mkl(real["logits"], fake["logits"], ids, fake_keys)),
            "isc_mean": isc[0],
            "isc_std": isc[1],
            "seconds": round(seconds, 1),
            "per_class": per_class(labels, clips.class_names, real, fake, num_samples),
        }
        logging.info(
            "FID %.3f  MKL %.3f  (%d clips x %d samples)",
            result["fid"],
            result["mkl"],
            n,
            num_samples,
        )
        return result

    @staticmethod
    def markdown(result: dict) -> str:
        """The totals, then the per-class table."""
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        s = result["sampling"]
        lines = [
            f"# SpecVQGAN evaluation: {result['workdir']} ({result['split']})",
            "",
            f"{result['clips']} clips x {result['num_samples']} samples, Melception "
            f"`{result['melception']}`, seed {result['seed']}, "
            f"top_k {s['top_k']}, top_p {s['top_p']}, temperature {s['temperature']}.",
            "",
        ]
        totals = [
            ["FID (2048)", fmt(result["fid"])],
            ["MKL (logits)", fmt(result["mkl"])],
            ["ISC (logits_unbiased)", f"{fmt(result['isc_mean'])} ± {fmt(result['isc_std'])}"],
        ]
        lines += tables.table(["metric", "value"], totals, align=["---", "---"])
        lines.append("")
        rows = [
            [
                r["class"],
                str(r["clips"]),
                str(r["samples"]),
                fmt(r["fid"]),
                fmt(r["mkl"]),
                f"{r['same_class']:.2f}",
            ]
            for r in result["per_class"]
        ]
        head = ["class", "clips", "samples", "FID", "MKL", "fake classified as real's class"]
        lines += tables.table(head, rows, align=["---"] + ["---:"] * 5)
        return "\n".join(lines) + "\n"
