"""Video-prediction evaluation: N sampled futures per clip, per-frame SSIM / PSNR tables.

For every clip (first n_past + n_eval frames), N futures are sampled (one jitted function
per batch: `lax.map` over chunks of samples, the sampler vectorised inside a chunk) and
scored per predicted frame, with two reducers over the samples and baselines beside them:
* best of N: the maximum over samples (the minimum for a lower-is-better metric), taken
  independently per frame and per metric, as Sound2Sight's `make_gifs`
  (`np.amax(..., axis=1)`);
* mean of N: the average over samples, as MCAV re-ran Sound2Sight;
* copy last frame: the last seen frame repeated, a baseline in the same table.
SSIM twice, labelled: "as the papers computed it" (scikit-image 0.15 defaults, data_range
2.0, which inflates it) and "correct" (data_range 1.0); PSNR with data_range 1
(docs/sound2sight.md). `extra_metrics` adds per-frame metrics (MCAV's AEPE, say) to every
table. Frame numbers are 1-based absolute indices as in the papers' tables (M3SO-NB:
frames 6, 15, 25 with 5 seen frames). With `block_iou` (M3SO), the block-localisation IoU
of the last predicted frame (`avjax.metrics.block_iou`) over the clips that have a block.

The evaluator gets what it needs from its caller: the sampler (a model's
`sample_futures`), the state it reads and the batches. `launch/evaluate.py` restores a run
with `avjax.runs.load_run` and reads the split with `data_pipelines`; the trainer runs it
every `config.evals.<name>.every` steps on its eval split (`avjax.evals.loop_evaluators`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from avjax import multihost
from avjax.errors import UserError
from avjax.evals import tables
from avjax.images import frames01
from avjax.metrics import image_quality as iq
from avjax.metrics.block_iou import block_iou
from avjax.video import flow as flow_lib

# sample_fn(state, frames [B, T, H, W, C] in [0, 1], audio [B, T, ...], rng, num_samples=S)
#   -> futures [S, B, T - n_past, H, W, C], or a dict with them as "frames" and other
#   per-frame predictions (MCAV: "flow" [S, B, T - n_past, H, W, 2]) for `extra_metrics`.
#   Keyword-only parameters of the sampler are filled from the batch by name (MCAV's
#   `flow`: the seen frames' ground-truth flows).
SampleFn = Callable[..., jax.Array | Mapping[str, jax.Array]]

# config.task -> the model's name in the tables.
METHODS = {"sound2sight": "Sound2Sight", "mcav": "MCAV"}


@dataclasses.dataclass(frozen=True)
class Metric:
    """A per-frame metric: fn(pred, true, batch) -> [..., B, Tf] from frames [..., B, Tf, H, W, C].

    `batch` holds the batch's arrays (frames, audio, block, flow, ...) as the jitted function
    sees them, plus the sampler's other predictions as `pred_<name>` (e.g. `pred_flow`
    [..., B, Tf, H, W, 2]; zeros for the baselines: copying the last frame predicts no
    motion), for metrics that need more than the frames (MCAV's AEPE). `higher_is_better`
    picks the best-of-N reducer (max or min); `label` heads its table.
    """

    fn: Callable[[jax.Array, jax.Array, dict], jax.Array]
    higher_is_better: bool = True
    label: str | None = None


METRICS = {
    "ssim_paper": Metric(
        lambda p, g, b: iq.ssim_paper(p, g),
        label="SSIM (as the papers computed it: data_range 2.0)",
    ),
    "ssim": Metric(lambda p, g, b: iq.ssim_correct(p, g), label="SSIM (correct: data_range 1.0)"),
    "psnr": Metric(lambda p, g, b: iq.psnr(p, g), label="PSNR (dB)"),
}


def aepe_metric(n_past: int) -> Metric:
    """AEPE (px) of the predicted flows ("pred_flow") against the batch's "flow" [B, T, ...];
    NaN for a model that predicts no flow."""

    def fn(p, g, batch):
        if "pred_flow" not in batch:
            return jnp.full(p.shape[:-3], jnp.nan)
        return flow_lib.aepe(batch["pred_flow"], batch["flow"][:, n_past:], per_frame=True)

    return Metric(fn, higher_is_better=False, label="AEPE of the predicted flow (px)")


def copy_last(x: jax.Array, n_past: int) -> jax.Array:
    """The copy-last-frame baseline: clips [B, T, ...] -> the last seen frame, T - n_past times."""
    return jnp.broadcast_to(
        x[:, n_past - 1 : n_past], (x.shape[0], x.shape[1] - n_past, *x.shape[2:])
    )


BASELINES = {"copy_last": copy_last}
# Table rows: reducers over the N samples, then the baselines.
ROWS = (
    ("best_of_n", "{method}, best of {n}"),
    ("mean_of_n", "{method}, mean of {n}"),
    ("copy_last", "copy last seen frame"),
)


# What `config.evals.<name>` may set for this evaluator (besides `type` and `every`).
LOOP_FIELDS = ("num_samples", "sample_chunk", "max_clips", "seed")


def _as_metric(name: str, m) -> Metric:
    m = m if isinstance(m, Metric) else Metric(m)
    return m if m.label else dataclasses.replace(m, label=name)


def make_batch_metrics(
    sample_fn: SampleFn,
    *,
    n_past: int,
    frame_scale: str,
    num_samples: int,
    chunk: int,
    with_iou: bool,
    metrics: Mapping[str, Metric] = METRICS,
):
    """Jitted (state, batch arrays, rng) -> {row: {metric: per-clip per-frame [B, Tf]}}.

    `batch` needs "frames" (uint8 [B, T, H, W, C]), "audio" and, `with_iou`, "block"; the
    rows are "best_of_n", "mean_of_n" and the `BASELINES`; "block_iou" is [B] (last frame).
    """
    chunk = max(1, min(chunk, num_samples))
    num_chunks = math.ceil(num_samples / chunk)
    wanted = [
        name
        for name, p in inspect.signature(sample_fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]

    def fn(state, batch, rng):
        x = frames01(batch["frames"], frame_scale)
        gt = x[:, n_past:]
        missing = [k for k in wanted if k not in batch]
        if missing:
            raise UserError(f"the sampler needs {missing} in the eval batches")
        from_batch = {k: batch[k] for k in wanted}

        def sample(key, n):  # -> frames [n, B, Tf, H, W, C], {name: [n, B, Tf, ...]}
            out = sample_fn(state, x, batch["audio"], key, num_samples=n, **from_batch)
            if isinstance(out, Mapping):
                return out["frames"], {k: v for k, v in out.items() if k != "frames"}
            return out, {}

        def score(p, aux):  # [..., B, Tf, H, W, C] -> dict of [..., B, Tf]
            g = jnp.broadcast_to(gt, p.shape)
            seen = {**batch, **{f"pred_{k}": v for k, v in aux.items()}}
            out = {name: m.fn(p, g, seen) for name, m in metrics.items()}
            if with_iou:
                out["block_iou"] = block_iou(
                    p[..., -1, :, :, :], g[..., -1, :, :, :], batch["block"]
                )
            return out

        def one_chunk(key):
            return score(*sample(key, chunk))

        # The baselines' other predictions: zeros shaped as one sample's.
        shapes = jax.eval_shape(lambda k: sample(k, 1)[1], rng)
        no_aux = jax.tree.map(lambda v: jnp.zeros(v.shape[1:], v.dtype), shapes)

        keys = jax.random.split(rng, num_chunks)
        per = jax.lax.map(one_chunk, keys)  # [num_chunks, chunk, B, ...]
        per = jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:])[:num_samples], per)
        better = {k: m.higher_is_better for k, m in metrics.items()} | {"block_iou": True}
        return {
            "best_of_n": {k: (jnp.max if better[k] else jnp.min)(v, 0) for k, v in per.items()},
            "mean_of_n": jax.tree.map(lambda v: jnp.mean(v, 0), per),
            **{name: score(base(x, n_past), no_aux) for name, base in BASELINES.items()},
        }

    return jax.jit(fn)


def _at_frames(curve, frames, cols) -> list[str]:
    """A per-frame curve at the report frames, then its mean over every predicted frame."""
    return [f"{curve[frames.index(f)]:.4f}" for f in cols] + [f"{np.mean(curve):.4f}"]


def compare_markdown(results: Mapping[str, dict]) -> str:
    """Several runs' results on the same clips, side by side (`launch/evaluate.py --compare`).

    Args:
      results: {run name: `VideoPredictionEvaluator.evaluate` result}; the first one's report
        frames head the tables. Every run must have scored the same clips from the same seen
        frames (checked on the copy-last baseline, which depends on the clips alone). Runs
        may predict different numbers of frames (MCAV's paper config 20, Sound2Sight's 25):
        the tables and their means cover the frames every run predicted.

    Every metric of any run gets a table (its "labels" head them); runs without it show "-".

    A run with one sample per clip (a deterministic model) has one row; a stochastic run
    has its best-of-N and mean-of-N rows (MCAV's tables use mean of N).
    """
    first_name, first = next(iter(results.items()))
    labels = {k: v for r in results.values() for k, v in r["labels"].items()}
    frames = min((r["frames"] for r in results.values()), key=len)  # common to every run
    k = len(frames)
    cols = [f for f in first["report_frames"] if f in frames] or [frames[-1]]
    for run, r in results.items():
        same = r["frames"][:k] == frames and r["num_clips"] == first["num_clips"]
        if not same or not np.allclose(
            r["copy_last"]["psnr"][:k], first["copy_last"]["psnr"][:k], rtol=1e-5, atol=1e-5
        ):
            raise UserError(
                f"{run} was not scored on the same clips and frames as {first_name} "
                f"({r['num_clips']} clips, frames {r['frames'][0]}..{r['frames'][-1]} vs "
                f"{first['num_clips']}, {first['frames'][0]}..{first['frames'][-1]})"
            )
    at = lambda curve: _at_frames(curve[:k], frames, cols)
    longer = sorted({len(r["frames"]) for r in results.values()} - {k})
    lines = [
        f"# Comparison on split `{first['split']}`: {', '.join(results)}",
        "",
        f"{first['num_clips']} clips, {first['n_past']} seen frames, {k} predicted; the same "
        "clips for every run. Frame numbers are 1-based."
        + (
            f" Runs that predict more ({', '.join(map(str, longer))} frames) are scored here "
            f"on their first {k}."
            if longer
            else ""
        ),
        "",
    ]
    for metric, label in labels.items():
        rows = []
        for run, r in results.items():
            n = r["num_samples"]
            modes = (
                [("mean_of_n", "")] if n == 1 else [("best_of_n", "best"), ("mean_of_n", "mean")]
            )
            for mode, how in modes:
                title = f"{r['method']} `{run}`" + (f", {how} of {n}" if how else "")
                curve = r[mode].get(metric)
                rows.append(
                    [
                        title,
                        *(at(curve) if curve else ["-"] * (len(cols) + 1)),
                    ]
                )
        base = first["copy_last"].get(metric)
        if base:
            rows.append(["copy last seen frame", *at(base)])
        lines += [f"## {label}", ""]
        lines += tables.table(["method", *(f"Fr {f}" for f in cols), "mean"], rows)
        lines.append("")
    return "\n".join(lines) + "\n"


class VideoPredictionEvaluator:
    """Samples N futures per clip and tabulates per-frame metrics (module docstring).

    Args:
      sample_fn: the model's sampler (`SampleFn`), e.g. `Sound2SightTask.sample_futures`.
      n_past: seen frames; n_eval: predicted frames scored (clips are n_past + n_eval long).
      frame_scale: how uint8 frames become [0, 1] (`avjax.images.frames01`).
      num_samples: N, futures per clip; sample_chunk: samples vectorised at once (memory).
      block_iou: also the block-localisation IoU of the last frame (M3SO).
      report_frames: 1-based frames of the paper-style tables (others dropped, warned).
      extra_metrics: name -> `Metric` or fn(pred, true, batch) -> per-frame values.
      method: the model's name in the tables.
    """

    def __init__(
        self,
        sample_fn: SampleFn,
        *,
        n_past: int,
        n_eval: int,
        frame_scale: str = "per_frame_max",
        num_samples: int = 100,
        sample_chunk: int = 10,
        block_iou: bool = False,
        report_frames: Iterable[int] = (),
        extra_metrics: Mapping[str, Metric | Callable] | None = None,
        method: str = METHODS["sound2sight"],
    ):
        self.n_past, self.n_eval, self.num_samples = n_past, n_eval, num_samples
        self.with_iou, self.method = bool(block_iou), method
        extra = {k: _as_metric(k, m) for k, m in (extra_metrics or {}).items()}
        clash = sorted(set(extra) & (set(METRICS) | {"block_iou"}))
        if clash:
            raise ValueError(f"extra_metrics {clash} would replace built-in metrics")
        self.metrics = {**METRICS, **extra}
        self.frames = [n_past + 1 + k for k in range(n_eval)]
        report_frames = tuple(report_frames)
        self.report_frames = [f for f in report_frames if f in self.frames]
        if len(self.report_frames) != len(report_frames):
            logging.warning(
                "config.eval.report_frames %s outside the predicted frames %d..%d; showing %s",
                report_frames,
                self.frames[0],
                self.frames[-1],
                self.report_frames,
            )
        self._fn = make_batch_metrics(
            sample_fn,
            n_past=n_past,
            frame_scale=frame_scale,
            num_samples=num_samples,
            chunk=sample_chunk,
            with_iou=self.with_iou,
            metrics=self.metrics,
        )

    @classmethod
    def from_config(cls, config, sample_fn: SampleFn, **overrides) -> VideoPredictionEvaluator:
        """From a run's `config.eval` and `config.data` (`configs/sound2sight_*.py`).

        `overrides` (keyword arguments of the constructor; None keeps the config's) win.
        """
        e, d = config.eval, config.data
        kw = dict(
            n_past=d.n_past,
            n_eval=d.n_eval,
            frame_scale=d.frame_scale,
            num_samples=e.num_samples,
            sample_chunk=e.sample_chunk,
            block_iou=bool(e.get("block_iou", False)),
            report_frames=tuple(e.report_frames),
            method=METHODS.get(config.task, config.task),
        )
        if d.get("flow"):  # the clips carry ground-truth flow: score the predicted one
            kw["extra_metrics"] = {"aepe": aepe_metric(d.n_past)}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(sample_fn, **kw)

    @classmethod
    def in_loop(cls, config, section, task) -> Callable:
        """The trainer's hook: fn(state, eval batches, step) -> scalars (`loop_evaluators`).

        `section` (`config.evals.<name>`) may set `num_samples`, `sample_chunk`,
        `max_clips` and `seed`; the rest comes from `config.eval` / `config.data`.
        """
        unknown = sorted(set(section) - {"type", "every", *LOOP_FIELDS})
        if unknown:
            raise UserError(
                f"config.evals: unknown field(s) {unknown} for the video-prediction evaluator; "
                f"it takes {sorted(LOOP_FIELDS)}"
            )
        ev = cls.from_config(
            config,
            task.sample_futures,
            num_samples=section.get("num_samples"),
            sample_chunk=section.get("sample_chunk"),
        )
        rng = jax.random.PRNGKey(section.get("seed", 0))
        split = config.data.eval_split or "eval"

        def run(state, batches, step):
            result = ev.evaluate(
                state, batches, rng=rng, split=split, step=step, max_clips=section.get("max_clips")
            )
            return ev.scalars(result)

        return run

    def evaluate(
        self,
        state,
        batches: Iterable[dict],
        *,
        rng: jax.Array,
        split: str,
        step: int,
        max_clips: int | None = None,
    ) -> dict:
        """Scores every clip of `batches` (or the first `max_clips`); returns the result dict.

        Args:
          state: what `sample_fn` reads (a train state, or its generator part).
          batches: {"frames": uint8 [B, T, H, W, C], "audio", "block" (with `block_iou`),
            "mask" (optional, [B]: 1 real clip, 0 padding)}; T = n_past + n_eval. Host
            arrays, or global `jax.Array`s of a multi-process run: then every process calls
            this (the per-clip results are gathered to every host) and gets the same result.
          rng: sampling key (batch i uses `fold_in(rng, i)`).
          split, step: recorded in the result (the data split, the checkpoint step).
          max_clips: stop after this many clips.

        Returns:
          JSON-ready dict: per-frame curves per row ("best_of_n", "mean_of_n", baselines)
          and metric, the frames, counts; "block_iou_last_frame" with `block_iou`.
        """
        sums: dict = {}
        iou_sum: dict = {}
        num_clips = num_iou = seen = 0
        for i, batch in enumerate(batches):
            size = len(batch["frames"])
            mask = np.asarray(multihost.to_host(batch.get("mask", np.ones(size))), np.float64)
            if max_clips is not None:
                mask[max(0, max_clips - seen) :] = 0
            seen += size
            if mask.sum() == 0:
                break
            arrays = {k: v for k, v in batch.items() if k != "mask"}
            out = multihost.to_host(self._fn(state, arrays, jax.random.fold_in(rng, i)))
            has_block = multihost.to_host(batch["block"])[:, 3] > 0 if self.with_iou else None
            for mode, vals in out.items():
                for k, v in vals.items():
                    v = np.asarray(v, np.float64)
                    if k == "block_iou":
                        valid = mask * has_block
                        iou_sum[mode] = iou_sum.get(mode, 0.0) + float((v * valid).sum())
                        continue
                    sums.setdefault(mode, {}).setdefault(k, 0.0)
                    sums[mode][k] = sums[mode][k] + (v * mask[:, None]).sum(0)
            if self.with_iou:
                num_iou += int((mask * has_block).sum())
            num_clips += int(mask.sum())
            logging.info("evaluated %d clips", num_clips)
        if num_clips == 0:
            raise UserError(f"split {split!r} gave no clips to evaluate")

        curves = {
            mode: {k: [float(x) for x in v / num_clips] for k, v in vals.items()}
            for mode, vals in sums.items()
        }
        result = {
            "method": self.method,
            "labels": {k: m.label for k, m in self.metrics.items()},
            "split": split,
            "checkpoint_step": int(step),
            "num_clips": num_clips,
            "num_samples": self.num_samples,
            "n_past": self.n_past,
            "n_eval": self.n_eval,
            "frames": self.frames,
            "report_frames": self.report_frames,
            "ssim_paper_note": "scikit-image 0.15 compare_ssim defaults: 7x7 uniform window, "
            "sample covariance, data_range 2.0 (as the papers computed it)",
            "ssim_note": "same window, data_range 1.0 (the frames' range)",
            **curves,
        }
        if self.with_iou:
            result["block_iou_last_frame"] = {
                mode: (v / num_iou if num_iou else None) for mode, v in iou_sum.items()
            }
            result["block_iou_clips"] = num_iou
        return result

    def scalars(self, result: dict) -> dict[str, float]:
        """`<row>/<metric>`: each curve's mean over the predicted frames (+ block IoU)."""
        out = {
            f"{mode}/{k}": float(np.mean(result[mode][k])) for mode, _ in ROWS for k in self.metrics
        }
        for mode, v in result.get("block_iou_last_frame", {}).items():
            if v is not None:
                out[f"{mode}/block_iou_last_frame"] = float(v)
        return out

    def markdown(self, r: dict) -> str:
        """Paper-style tables at the report frames, then the full per-frame curves."""
        n = r["num_samples"]
        frames = r["frames"]
        name = lambda row: row.format(method=self.method, n=n)
        lines = [
            f"# {self.method} evaluation: split `{r['split']}`, step {r['checkpoint_step']}",
            "",
            f"{r['num_clips']} clips, {r['n_past']} seen frames, {r['n_eval']} predicted, "
            f"{n} prior samples per clip. Frame numbers are 1-based, as the papers' tables.",
            "",
        ]
        cols = r["report_frames"]
        for metric, m in self.metrics.items():
            rows = [[name(row), *_at_frames(r[mode][metric], frames, cols)] for mode, row in ROWS]
            lines += [f"## {m.label}", ""]
            lines += tables.table(["method", *(f"Fr {f}" for f in cols), "mean"], rows)
            lines.append("")
        if "block_iou_last_frame" in r:
            clips = r["block_iou_clips"]
            lines += [f"## Block-localisation IoU, last frame ({clips} clips with a block)", ""]
            rows = []
            for mode, row in ROWS:
                v = r["block_iou_last_frame"].get(mode)
                rows.append([name(row), "n/a" if v is None else f"{v:.4f}"])
            lines += tables.table(["method", "IoU"], rows)
            lines.append("")
        lines += ["## Per-frame curves", ""]
        head = ["frame", *(f"{mode} {k}" for mode, _ in ROWS for k in self.metrics)]
        rows = [
            [str(f), *(f"{r[mode][k][i]:.4f}" for mode, _ in ROWS for k in self.metrics)]
            for i, f in enumerate(frames)
        ]
        lines += tables.table(head, rows)
        return "\n".join(lines) + "\n"
