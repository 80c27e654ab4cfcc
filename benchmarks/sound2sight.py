"""Speed of Sound2Sight (M3SO-NB paper model): train step, 20-frame rollout, 100-sample eval.

  python benchmarks/sound2sight.py --batch 16 --out benchmarks/results
  python benchmarks/sound2sight.py --config tiny --batch 8
  python benchmarks/sound2sight.py --official   # frozen disc encoders, as the official code

Measures (minimum over `--repeats` timed calls after a warm-up, because the reference
machine is shared): one full jitted training iteration (generator + discriminator
updates, adversarial terms on; 5 seen + 15 predicted frames), a 20-frame rollout of
`--batch` clips (5 seen, 15 generated, the scan used at evaluation), and a 100-sample
evaluation rollout of one clip (5 seen + 25 predicted, samples vmapped in chunks of 10).
Reference (official PyTorch on a 2-core CPU, B=16): 3.4 s per training iteration and
0.9 s per 20-frame rollout of 16 clips; the target is 3x faster. `--official` measures the
official code's discriminator (frozen random encoders: no encoder gradients), the
like-for-like comparison; the default trains them (the paper's behaviour, more work).
The JSON also holds XLA's FLOP count of the step and the achieved GFLOP/s.
`--quick`: two timed calls of each part.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from avjax.train.tasks.sound2sight import Sound2SightTask
from benchmarks import _common
from benchmarks._plain_lax import plain_lax
from configs import sound2sight_m3so_nb

OFFICIAL_CPU_S = {"train_iteration_b16": 3.4, "rollout_20_frames_b16": 0.9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eval_samples", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", default="", help="comma list of train,rollout,eval to skip")
    ap.add_argument("--official", action="store_true", help="frozen discriminator encoders")
    ap.add_argument("--quick", action="store_true", help="two timed calls of each part")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.repeats = 2

    c = sound2sight_m3so_nb.get_config("tiny" if args.config == "tiny" else None)
    if c.train.steps_per_epoch is None:
        c.train.steps_per_epoch = 8000 // 110  # M3SO-NB's training set at the paper batch
    c.data.n_past, c.data.n_future, c.data.n_eval = 5, 15, 25
    c.loss.steps_per_epoch = 1  # adversarial terms on (as after the first epoch)
    if args.official:
        c.disc.train_encoders, c.loss.gen_mismatch_target = False, 1
    task = Sound2SightTask.from_config(c)
    rs = np.random.RandomState(0)
    size, ch, audio = c.data.image_size, c.data.channels, tuple(c.data.audio_shape)

    def batch(b, t):
        return {
            "frames": jnp.asarray(rs.randint(0, 256, (b, t, size, size, ch)), jnp.uint8),
            "audio": jnp.asarray(rs.uniform(0, 1, (b, t, *audio)), jnp.float32),
        }

    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    step = jax.jit(task.train_step)
    # Step 1 (the adversarial weight is > 0 from then on); its compile is the one timed.
    t0 = time.perf_counter()
    compiled = step.lower(state, batch(args.batch, 20)).compile()
    compile_s = time.perf_counter() - t0
    state = compiled(state, batch(args.batch, 20))[0]
    info = _common.device_info()
    result = {
        "benchmark": "sound2sight",
        "config": args.config,
        **info,
        "load_average_1min_before": _common.load_average(),
        "batch": args.batch,
        "disc_encoders": "frozen (official)" if args.official else "trained (paper)",
        "timing": f"min of {args.repeats} calls after a warm-up (shared machine)",
        "official_cpu_reference_s": OFFICIAL_CPU_S,
    }
    if "train" not in skip:
        b = batch(args.batch, 20)
        result["train_compile_s"] = round(compile_s, 2)
        with plain_lax():  # XLA counts a scan body once: count plain-lax convolutions
            result["train_step_gflop"] = round(_common.step_gflop(task.train_step, state, b), 1)
        s, times = _common.min_time(
            lambda st, bb: compiled(st, bb)[1], state, b, repeats=args.repeats
        )
        result.update(train_step_s=round(s, 4), train_steps_per_s=round(1 / s, 3))
        result["train_achieved_gflops"] = round(result["train_step_gflop"] / s, 1)
        result["train_step_all_s"] = times
    gen_vars = state
    if "rollout" not in skip:
        b = batch(args.batch, 20)
        roll = jax.jit(
            lambda st, x, a, k: task.sample_futures(
                st, x.astype(jnp.float32) / 255.0, a, k, num_samples=1
            )
        )
        s, times = _common.min_time(
            roll, gen_vars, b["frames"], b["audio"], jax.random.PRNGKey(1), repeats=args.repeats
        )
        result.update(rollout_20_frames_s=round(s, 4), rollout_all_s=times)
    if "eval" not in skip:
        from avjax.evals.video_prediction import make_batch_metrics

        b = batch(1, 30)
        fn = make_batch_metrics(
            task.sample_futures,
            n_past=task.gen.n_past,
            frame_scale=task.frame_scale,
            num_samples=args.eval_samples,
            chunk=10,
            with_iou=False,
        )
        v = {part: {"gen": state[part]["gen"]} for part in ("params", "batch_stats")}
        arrays = {"frames": b["frames"], "audio": b["audio"], "block": jnp.zeros((1, 4), jnp.int32)}
        s, times = _common.min_time(
            fn, v, arrays, jax.random.PRNGKey(2), repeats=max(2, args.repeats // 2)
        )
        result.update(
            eval_100_samples_1_clip_30_frames_s=round(s, 4),
            eval_all_s=times,
            eval_note=f"{args.eval_samples} samples x 25 predicted frames + SSIM/PSNR",
        )
    for k, ref in (("train_step", 3.4), ("rollout_20_frames", 0.9)):
        if f"{k}_s" in result and args.config == "paper" and args.batch == 16:
            result[f"{k}_speedup_vs_official"] = round(ref / result[f"{k}_s"], 2)
    what = f"{args.config}, B={args.batch}"
    summary = []
    if "train_step_s" in result:
        summary.append(
            [
                f"train step ({what}, disc encoders {result['disc_encoders']})",
                f"{result['train_step_s']} s ({result['train_achieved_gflops']} GFLOP/s)",
            ]
        )
    if "rollout_20_frames_s" in result:
        summary.append([f"20-frame rollout ({what})", f"{result['rollout_20_frames_s']} s"])
    if "eval_100_samples_1_clip_30_frames_s" in result:
        summary.append(
            [
                "100 futures of one clip + SSIM/PSNR",
                f"{result['eval_100_samples_1_clip_30_frames_s']} s",
            ]
        )
    result["summary"] = summary
    tag = "_official" if args.official else ""
    name = f"sound2sight_{args.config}{tag}_b{args.batch}_{info['platform']}"
    path = _common.write_json(args.out, name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
