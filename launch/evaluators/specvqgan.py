"""FID / MKL / ISC of a SpecVQGAN transformer run on a data split (spec A7).

  python launch/evaluate.py --workdir W --split test --melception M [--num_samples 10]
      [--batch_size 16] [--max_clips N] [--data_dir D] [--seed 0]

For every clip of the split, `num_samples` spectrograms are sampled from its visual features
(batched: `batch_size` clips x `num_samples` samples per jitted call) and decoded with the
run's codebook. A Melception classifier (`--melception`: an avjax melception workdir, e.g.
`configs/melception_vggsound.py`, or the official `melception-21-05-10T09-28-40.pt` with
`train_means_stds_melspec_10s_22050hz.txt` beside it) scores reals (the split's log-mels,
centre crop 848) and fakes:
  FID  on the '2048' pool features, all fakes vs all reals;
  MKL  on 'logits': each fake against the real clip of its video (keys = clip ids), mean of
       KL(p_real || p_fake) over the fakes;
  ISC  on the fakes' 'logits_unbiased' (10 splits; only with >= 10 fakes).
`--melception` is required: an untrained Melception makes the numbers meaningless, so there is
no default (tests train a `:tiny` one for a few steps). Writes W/eval/<split>.json and .md
with the totals and a per-class table (FID where a class has >= 2 clips, MKL, and how often a
fake is classified as its real clip's class).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from absl import logging

from avjax.errors import UserError

MEL_STATS_FILE = "train_means_stds_melspec_10s_22050hz.txt"


def load_scorer(path: str | None, batch_size: int = 64):
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


def _clips(config, split: str, max_clips: int | None):
    """(spec source, feature spec, feature paths per clip or None) of the split."""
    from data_pipelines import codes_inputs, spec_folders
    from data_pipelines import features as F

    d = config.data
    data_dir = codes_inputs.resolve_data_dir(config)
    src = spec_folders.open_spec_source(data_dir, split, d.layout, labels_csv=d.get("labels_csv"))
    n = len(src) if max_clips is None else min(max_clips, len(src))
    spec = F.FeatureSpec.from_config(config)
    paths = None
    if spec.kind != "none":
        paths = [F.clip_feature_paths(p, spec.kind) for p in src.paths[:n]]
        codes_inputs._check_feature_files(paths, split)
    return src, n, spec, paths, data_dir


def _per_class(labels, class_names, real, fake, num_samples) -> list[dict]:
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


def _markdown(result: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    lines = [
        f"# SpecVQGAN evaluation: {result['workdir']} ({result['split']})",
        "",
        f"{result['clips']} clips x {result['num_samples']} samples, Melception "
        f"`{result['melception']}`, seed {result['seed']}, "
        f"top_k {result['sampling']['top_k']}, top_p {result['sampling']['top_p']}, "
        f"temperature {result['sampling']['temperature']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| FID (2048) | {fmt(result['fid'])} |",
        f"| MKL (logits) | {fmt(result['mkl'])} |",
        f"| ISC (logits_unbiased) | {fmt(result['isc_mean'])} ± {fmt(result['isc_std'])} |",
        "",
        "| class | clips | samples | FID | MKL | fake classified as real's class |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["per_class"]:
        lines.append(
            f"| {r['class']} | {r['clips']} | {r['samples']} | {fmt(r['fid'])} | "
            f"{fmt(r['mkl'])} | {r['same_class']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run(config, workdir, FLAGS) -> pathlib.Path:
    """Samples, scores and writes W/eval/<split>.{json,md}; returns the json path."""
    from tqdm import tqdm

    from avjax.metrics.fid import frechet_distance
    from avjax.metrics.isc import inception_score
    from avjax.metrics.mkl import mkl
    from avjax.models.specvqgan.video2sound import Video2Sound
    from data_pipelines import features as F
    from data_pipelines import pipeline

    workdir = pathlib.Path(workdir)
    split = FLAGS.split
    num_samples = FLAGS.num_samples or 10
    batch = FLAGS.batch_size or 8
    if not FLAGS.melception:
        load_scorer(None)  # the missing-flag error, before reading anything
    try:
        src, n, spec, paths, data_dir = _clips(config, split, FLAGS.max_clips)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    for i in tqdm(range(n), desc="checking spectrograms", unit="clip", leave=False):
        src[i]  # a bad *_mel.npy stops here, naming the file, before any sampling
    # One Melception call per batch: its reals and fakes together, one compiled shape.
    scorer = load_scorer(FLAGS.melception, batch_size=batch * (num_samples + 1))
    names = ("2048", "logits", "logits_unbiased")
    try:
        v2s = Video2Sound.from_workdir(workdir)
    except (OSError, ValueError) as e:
        raise UserError(f"--workdir: {e}") from None
    s = config.get("sampling", {})
    kw = dict(
        temperature=s.get("temperature", 1.0), top_k=s.get("top_k", 0), top_p=s.get("top_p", 1.0)
    )
    num_classes = config.model.get("num_classes", 0)
    rng = jax.random.PRNGKey(FLAGS.seed)
    real = {"2048": [], "logits": []}
    fake = {"2048": [], "logits": [], "logits_unbiased": []}
    t0 = time.perf_counter()
    for lo in tqdm(range(0, n, batch), desc=f"sampling {split}", unit="batch"):
        idx = list(range(lo, min(lo + batch, n)))
        reals = np.stack([pipeline.center_crop(src[i]["mel"], 848) for i in idx])
        if paths is None:
            feats = np.stack(
                [F.random_features(spec, np.random.default_rng([FLAGS.seed, 1, i])) for i in idx]
            )
        else:
            feats = np.stack([F.load_clip_features(paths[i], spec) for i in idx])
        labels = src.labels[idx] if num_classes else None
        pad = batch - len(idx)  # one compiled shape for every batch
        if pad:
            feats = np.concatenate([feats, np.zeros((pad, *feats.shape[1:]), feats.dtype)])
            if labels is not None:
                labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        codes = v2s.sample_codes(
            feats if spec.dim else None,  # feat_dim 0: a class-only model
            jax.random.fold_in(rng, lo),
            num_samples=num_samples,
            labels=labels,
            **kw,
        )
        mels = np.asarray(v2s.decode(np.asarray(codes)[: len(idx) * num_samples]))
        if mels.shape[-1] < 848:
            raise UserError(
                f"the run's codebook decodes {mels.shape[-1]} mel frames; Melception "
                "scores 10-s spectrograms (848 frames): evaluate a codebook trained on 80x848"
            )
        got = scorer.features(np.concatenate([reals, mels[..., :848]]), names)
        for k in real:
            real[k].append(got[k][: len(idx)])
        for k in fake:
            fake[k].append(got[k][len(idx) :])
    seconds = time.perf_counter() - t0
    real = {k: np.concatenate(v) for k, v in real.items()}
    fake = {k: np.concatenate(v) for k, v in fake.items()}
    ids = list(src.ids[:n])
    fake_keys = [i for i in ids for _ in range(num_samples)]
    isc = (None, None)
    if len(fake["logits_unbiased"]) >= 10:
        isc = tuple(float(v) for v in inception_score(fake["logits_unbiased"]))
    result = {
        "workdir": str(workdir),
        "split": split,
        "data_dir": str(data_dir),
        "clips": n,
        "num_samples": num_samples,
        "melception": str(FLAGS.melception),
        "seed": FLAGS.seed,
        "sampling": kw,
        "fid": float(frechet_distance(real["2048"], fake["2048"])),
        "mkl": float(mkl(real["logits"], fake["logits"], ids, fake_keys)),
        "isc_mean": isc[0],
        "isc_std": isc[1],
        "seconds": round(seconds, 1),
        "per_class": _per_class(src.labels[:n], src.class_names, real, fake, num_samples),
    }
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.json"
    path.write_text(json.dumps(result, indent=2))
    (out / f"{split}.md").write_text(_markdown(result))
    logging.info(
        "FID %.3f  MKL %.3f  (%d clips x %d samples)", result["fid"], result["mkl"], n, num_samples
    )
    return path
