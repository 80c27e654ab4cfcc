"""Sound2Sight evaluation: N prior samples per test clip, per-frame SSIM / PSNR tables.

For every clip of `--split` (first n_past + n_eval frames), N futures are sampled from the
learned prior (one jitted function per batch: `lax.map` over chunks of samples, `vmap`
inside a chunk, `lax.scan` over time) and scored per predicted frame:
* best of N: the maximum over samples, taken independently per frame and per metric, as
  Sound2Sight's `make_gifs` (`np.amax(..., axis=1)`);
* mean of N: the average over samples, as MCAV re-ran Sound2Sight;
* copy last frame: the last seen frame repeated, a baseline in the same table.
SSIM twice, labelled: "as the papers computed it" (scikit-image 0.15 defaults, data_range
2.0, which inflates it) and "correct" (data_range 1.0); PSNR with data_range 1.
Frame numbers are 1-based absolute indices as in the papers' tables (M3SO-NB: frames
6, 15, 25 with 5 seen frames).

Block-localisation IoU (M3SO, `config.eval.block_iou`), in the last predicted frame,
defined here (the paper gives no formula): the true block mask is the block's box (from
the clip's `block` = (x, y, size, present), x horizontal); the predicted mask is the
predicted pixels above 0.5. Pixels of the ground-truth digit outside the box are left out
of both sets, so drawing the digit right is neither rewarded nor penalised, while bright
pixels anywhere else count as a wrongly placed block. Clips without a block are skipped.
Writes W/eval/<split>.json and <split>.md.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from avjax.errors import UserError
from avjax.metrics import image_quality as iq
from avjax.train.tasks.sound2sight import Sound2SightTask, frames01

METRICS = ("ssim_paper", "ssim", "psnr")
LABELS = {
    "ssim_paper": "SSIM (as the papers computed it: data_range 2.0)",
    "ssim": "SSIM (correct: data_range 1.0)",
    "psnr": "PSNR (dB)",
}


def restore_generator(workdir: pathlib.Path) -> tuple[dict, int]:
    """Host `params` and `batch_stats` of the latest checkpoint of a Sound2Sight run."""
    directory = workdir.absolute() / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"--workdir: no checkpoints/ folder in {workdir}: is it an avjax run?")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            raise UserError(f"--workdir: no checkpoint steps in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, int(step)


def block_iou(pred: jax.Array, gt: jax.Array, block: jax.Array) -> jax.Array:
    """IoU of the predicted block in frames [..., H, W, C] vs the box `block` [..., 4] -> [...]."""
    h, w = pred.shape[-3], pred.shape[-2]
    x0, y0, size = block[..., 0], block[..., 1], block[..., 2]
    rows, cols = jnp.arange(h), jnp.arange(w)
    ex = lambda v: v[..., None, None]
    in_row = (rows[:, None] >= ex(y0)) & (rows[:, None] < ex(y0 + size))
    in_col = (cols[None, :] >= ex(x0)) & (cols[None, :] < ex(x0 + size))
    box = in_row & in_col  # [..., H, W]
    pred_on = jnp.max(pred, axis=-1) > 0.5
    digit = (jnp.max(gt, axis=-1) > 0.5) & ~box
    inter = jnp.sum(pred_on & box & ~digit, axis=(-2, -1))
    union = jnp.sum((pred_on | box) & ~digit, axis=(-2, -1))
    return inter / jnp.maximum(union, 1)


def make_batch_metrics(task: Sound2SightTask, num_samples: int, chunk: int, with_iou: bool):
    """Jitted (variables, frames uint8, audio, block, rng) -> per-clip per-frame metrics."""
    chunk = max(1, min(chunk, num_samples))
    num_chunks = math.ceil(num_samples / chunk)
    n_past = task.gen.n_past

    def fn(variables, frames, audio, block, rng):
        state = {
            "params": {"gen": variables["params"]},
            "batch_stats": {"gen": variables["batch_stats"]},
        }
        x = frames01(frames, task.frame_scale)
        gt = x[:, n_past:]

        def score(p):  # [..., B, Tf, H, W, C] -> dict of [..., B, Tf]
            g = jnp.broadcast_to(gt, p.shape)
            out = {
                "ssim_paper": iq.ssim_paper(p, g),
                "ssim": iq.ssim_correct(p, g),
                "psnr": iq.psnr(p, g),
            }
            if with_iou:
                out["block_iou"] = block_iou(p[..., -1, :, :, :], g[..., -1, :, :, :], block)
            return out

        def one_chunk(key):
            return score(task.sample_futures(state, x, audio, key, num_samples=chunk))

        keys = jax.random.split(rng, num_chunks)
        per = jax.lax.map(one_chunk, keys)  # [num_chunks, chunk, B, ...]
        per = jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:])[:num_samples], per)
        copy = jnp.broadcast_to(x[:, n_past - 1 : n_past], gt.shape)
        return {
            "best_of_n": jax.tree.map(lambda v: jnp.max(v, 0), per),
            "mean_of_n": jax.tree.map(lambda v: jnp.mean(v, 0), per),
            "copy_last": score(copy),
        }

    return jax.jit(fn)


def run(config, workdir, FLAGS) -> pathlib.Path:
    """Evaluates the run in `workdir` on `FLAGS.split`; returns the json path."""
    from data_pipelines.inputs import make_inputs

    workdir = pathlib.Path(workdir)
    e = config.eval
    num_samples = FLAGS.num_samples or e.num_samples
    batch_size = FLAGS.batch_size or e.batch_size
    with config.unlocked():
        config.data.eval_split = FLAGS.split
        config.data.global_batch_size = batch_size
    d = config.data
    frames_out = [d.n_past + 1 + k for k in range(d.n_eval)]
    report = [f for f in e.report_frames if f in frames_out]
    if len(report) != len(e.report_frames):
        logging.warning(
            "config.eval.report_frames %s outside the predicted frames %d..%d; showing %s",
            tuple(e.report_frames),
            frames_out[0],
            frames_out[-1],
            report,
        )
    try:  # data problems stop here, before the checkpoint is read or anything compiles
        inputs = make_inputs(config)
    except (OSError, ValueError) as err:
        raise UserError(f"--split={FLAGS.split}: {err}") from None
    if inputs.eval_iter_fn is None:
        raise UserError(f"--split={FLAGS.split!r}: no such split to evaluate")
    task = Sound2SightTask.from_config(config)
    variables, step = restore_generator(workdir)
    variables = jax.tree.map(
        jnp.asarray,
        {"params": variables["params"]["gen"], "batch_stats": variables["batch_stats"]["gen"]},
    )
    with_iou = bool(e.get("block_iou", False))
    metrics_fn = make_batch_metrics(task, num_samples, e.sample_chunk, with_iou)

    sums: dict = {}
    iou_sum: dict = {}
    num_clips = num_iou = 0
    rng = jax.random.PRNGKey(FLAGS.seed)
    for i, batch in enumerate(inputs.eval_iter_fn()):
        mask = np.asarray(batch.get("mask", np.ones(len(batch["frames"]))), np.float64)
        if FLAGS.max_clips is not None:
            mask[max(0, FLAGS.max_clips - i * batch_size) :] = 0
        if mask.sum() == 0:
            break
        out = jax.device_get(
            metrics_fn(
                variables,
                batch["frames"],
                batch["audio"],
                batch["block"],
                jax.random.fold_in(rng, i),
            )
        )
        for mode, vals in out.items():
            for k, v in vals.items():
                v = np.asarray(v, np.float64)
                if k == "block_iou":
                    valid = mask * (np.asarray(batch["block"])[:, 3] > 0)
                    iou_sum[mode] = iou_sum.get(mode, 0.0) + float((v * valid).sum())
                    continue
                sums.setdefault(mode, {}).setdefault(k, 0.0)
                sums[mode][k] = sums[mode][k] + (v * mask[:, None]).sum(0)
        if with_iou:
            num_iou += int((mask * (np.asarray(batch["block"])[:, 3] > 0)).sum())
        num_clips += int(mask.sum())
        logging.info("evaluated %d clips", num_clips)
    if num_clips == 0:
        raise UserError(f"--split={FLAGS.split!r} gave no clips to evaluate")

    curves = {
        mode: {k: [float(x) for x in v / num_clips] for k, v in vals.items()}
        for mode, vals in sums.items()
    }
    result = {
        "split": FLAGS.split,
        "checkpoint_step": step,
        "num_clips": num_clips,
        "num_samples": num_samples,
        "n_past": d.n_past,
        "n_eval": d.n_eval,
        "frames": frames_out,
        "report_frames": report,
        "ssim_paper_note": "scikit-image 0.15 compare_ssim defaults: 7x7 uniform window, "
        "sample covariance, data_range 2.0 (as the papers computed it)",
        "ssim_note": "same window, data_range 1.0 (the frames' range)",
        **curves,
    }
    if with_iou:
        result["block_iou_last_frame"] = {
            mode: (v / num_iou if num_iou else None) for mode, v in iou_sum.items()
        }
        result["block_iou_clips"] = num_iou
    out_dir = workdir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{FLAGS.split}.json"
    json_path.write_text(json.dumps(result, indent=2))
    (out_dir / f"{FLAGS.split}.md").write_text(markdown(result))
    return json_path


ROWS = (
    ("best_of_n", "Sound2Sight, best of {n}"),
    ("mean_of_n", "Sound2Sight, mean of {n}"),
    ("copy_last", "copy last seen frame"),
)


def markdown(r: dict) -> str:
    """Paper-style tables at the report frames, then the full per-frame curves."""
    n = r["num_samples"]
    frames = r["frames"]
    lines = [
        f"# Sound2Sight evaluation: split `{r['split']}`, step {r['checkpoint_step']}",
        "",
        f"{r['num_clips']} clips, {r['n_past']} seen frames, {r['n_eval']} predicted, "
        f"{n} prior samples per clip. Frame numbers are 1-based, as the papers' tables.",
        "",
    ]
    for metric in METRICS:
        cols = r["report_frames"]
        lines += [f"## {LABELS[metric]}", ""]
        lines.append("| method | " + " | ".join(f"Fr {f}" for f in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for mode, name in ROWS:
            vals = [r[mode][metric][frames.index(f)] for f in cols]
            lines.append(f"| {name.format(n=n)} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    if "block_iou_last_frame" in r:
        lines += [
            f"## Block-localisation IoU, last frame ({r['block_iou_clips']} clips with a block)",
            "",
            "| method | IoU |",
            "|---|---|",
        ]
        for mode, name in ROWS:
            v = r["block_iou_last_frame"].get(mode)
            lines.append(f"| {name.format(n=n)} | {'n/a' if v is None else f'{v:.4f}'} |")
        lines.append("")
    lines += ["## Per-frame curves", ""]
    head = "| frame | " + " | ".join(f"{m} {k}" for m, _ in ROWS for k in METRICS) + " |"
    lines += [head, "|---|" + "---|" * (len(ROWS) * len(METRICS))]
    for i, f in enumerate(frames):
        vals = [r[m][k][i] for m, _ in ROWS for k in METRICS]
        lines.append(f"| {f} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"
