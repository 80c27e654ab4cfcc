"""Speed of MCAV (M3SO-NB config): flow precompute, stage-1 / stage-2 train steps, rollout,
and the steps' fraction of the machine's measured matmul peak beside Sound2Sight's.

  python benchmarks/mcav.py --out benchmarks/results              # paper widths, B=16
  python benchmarks/mcav.py --config small --batch 16             # the `:small` CPU run
  python benchmarks/mcav.py --config tiny --batch 4 --quick       # CPU plumbing

Measures (minimum over `--repeats` timed calls after a warm-up; the machine is shared):
* TV-L1 flow per clip: `data_pipelines.clip_flow.clip_flow` (what `launch/add_flow.py`
  runs, OpenCV's DualTVL1 with its defaults) on `--flow_clips` 48x48 M3SO-NB clips (the
  embedded digits, or `--flow_data DIR` for a real dataset), one OpenCV thread (as each
  `--num_workers` process): the fastest clip's time, per clip and per frame pair (the
  mean and the CPU time are in the JSON).
* One jitted stage-1 training step (flow MSE + smoothness through the 4-layer ConvLSTM and
  the motion memory, the config's seen + predicted frames), one stage-2 step (CAR U-Net on
  the frozen MME's rollout), and a rollout of the eval frames of `--batch` clips.
* Fraction of peak: the float32 matmul peak measured here (`--peak_n` square matmul, the
  best of the rounds), XLA's FLOP count of each step (time loops unrolled, convolutions as
  plain lax, `_common.step_gflop`) over its time, for MCAV's steps and for Sound2Sight's
  training step (same batch, its config of the same size), timed in `--rounds` interleaved
  rounds (peak, MCAV, Sound2Sight, peak, MCAV, ...) so that load from other jobs falls on
  both alike; each figure is its best round, every round is in the JSON.
There is no official MCAV code to compare with. `--quick`: two timed calls of each part,
two flow clips.
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

from avjax.train.tasks.mcav import MCAVTask
from avjax.train.tasks.sound2sight import Sound2SightTask
from benchmarks import _common
from benchmarks._plain_lax import plain_lax
from configs import mcav_m3so_nb, sound2sight_m3so_nb

PARTS = ("flow", "motion", "refine", "rollout", "s2s")


def flow_times(num_clips: int, data_dir: str | None) -> dict:
    """TV-L1 of `num_clips` clips as `launch/add_flow.py` computes it, one OpenCV thread."""
    import cv2

    from data_pipelines import clip_flow, m3so_tfds, video_inputs

    root = pathlib.Path(data_dir) if data_dir else video_inputs.synthetic_dir(30)
    ds_dir = m3so_tfds.dataset_dir(root)
    import tensorflow_datasets as tfds

    split = next(iter(tfds.builder_from_directory(str(ds_dir)).info.splits))
    clips = m3so_tfds.open_clips(ds_dir, split)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        clip_flow.clip_flow(clips[0]["frames"][:2])  # the solver's one-off set-up
        wall, cpu, pairs = [], [], 0
        for i in range(min(num_clips, len(clips))):
            frames = clips[i]["frames"]
            t0, c0 = time.perf_counter(), time.thread_time()
            clip_flow.clip_flow(frames)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
            pairs += len(frames) - 1
    finally:
        cv2.setNumThreads(threads)
    n, (t, h, w, _) = len(wall), clips[0]["frames"].shape
    # Min over clips, as for the steps (load from other jobs inflates wall and CPU time).
    return {
        "flow_data": str(root) if data_dir else "embedded M3SO-NB digits (:tiny data)",
        "flow_clips": n,
        "flow_clip_shape": f"{t} frames of {h}x{w}",
        "flow_wall_s_per_clip": round(min(wall), 3),
        "flow_ms_per_pair": round(1e3 * min(wall) / (t - 1), 1),
        "flow_wall_s_per_clip_mean": round(sum(wall) / n, 3),
        "flow_cpu_s_per_clip_mean": round(sum(cpu) / n, 3),
        "flow_cpu_ms_per_pair_mean": round(1e3 * sum(cpu) / pairs, 1),
        "flow_wall_all_s": [round(x, 3) for x in wall],
    }


def matmul_peak(n: int, repeats: int) -> tuple[float, float]:
    """(GFLOP/s, seconds) of the best of `repeats` jitted float32 [n, n] x [n, n] matmuls."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    s, _ = _common.min_time(jax.jit(jnp.matmul), a, b, repeats=repeats)
    return 2.0 * n**3 / s / 1e9, s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["paper", "small", "tiny"], default="paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per part per round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (A, B, A, B)")
    ap.add_argument("--flow_clips", type=int, default=8)
    ap.add_argument("--flow_data", default=None, help="M3SO-NB dataset dir (default: embedded)")
    ap.add_argument("--peak_n", type=int, default=0, help="matmul size (0: 4096 CPU, 8192)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", default="", help=f"comma list of {','.join(PARTS)} to skip")
    ap.add_argument("--quick", action="store_true", help="two timed calls of each part")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(PARTS):
        ap.error(f"--skip: unknown parts {sorted(skip - set(PARTS))}; known: {PARTS}")
    if args.quick:
        args.repeats, args.flow_clips = 2, min(args.flow_clips, 2)

    arg = None if args.config == "paper" else args.config
    c = mcav_m3so_nb.get_config(arg)
    d = c.data
    size, ch, audio = d.image_size, d.channels, tuple(d.audio_shape)
    rs = np.random.RandomState(0)

    def batch(b, t, flow=True):
        out = {
            "frames": jnp.asarray(rs.randint(0, 256, (b, t, size, size, ch)), jnp.uint8),
            "audio": jnp.asarray(rs.uniform(0, 1, (b, t, *audio)), jnp.float32),
        }
        if flow:
            out["flow"] = jnp.asarray(rs.normal(0, 1, (b, t, size, size, 2)), jnp.float16)
        return out

    info = _common.device_info()
    peak_n = args.peak_n or (4096 if info["platform"] == "cpu" else 8192)
    result = {
        "benchmark": "mcav",
        "config": args.config,
        **info,
        "load_average_1min_before": _common.load_average(),
        "batch": args.batch,
        "train_frames": f"{d.n_past} seen + {d.n_future} predicted",
        "scan_unroll": c.model.scan_unroll,
        "timing": (
            f"min of {args.repeats} calls after a warm-up, best of {args.rounds} interleaved "
            "rounds (shared machine)"
        ),
    }
    summary = []
    what = f"{args.config}, B={args.batch}"

    if "flow" not in skip:
        result.update(flow_times(args.flow_clips, args.flow_data))
        summary.append(
            [
                f"TV-L1 flow precompute ({result['flow_clip_shape']}, 1 thread)",
                f"{result['flow_wall_s_per_clip']} s per clip ({result['flow_ms_per_pair']} ms "
                f"per pair; mean of {result['flow_clips']} clips "
                f"{result['flow_wall_s_per_clip_mean']} s)",
            ]
        )

    # Each timed part: label -> (compiled fn of (state, batch) -> scalar, state, batch, GFLOP).
    parts = {}

    def add_step(task, state, label, b, count_unroll: bool):
        t0 = time.perf_counter()
        compiled = jax.jit(task.train_step).lower(state, b).compile()
        result.setdefault(f"{label}_compile_s", round(time.perf_counter() - t0, 2))
        # XLA counts a loop body once: count FLOPs on a fresh trace with the time loops
        # unrolled and the convolutions as plain lax (lowered only, never compiled).
        if count_unroll:
            unroll, task.unroll = task.unroll, 0
        with plain_lax():
            gflop = _common.step_gflop(task.train_step, state, b)
        if count_unroll:
            task.unroll = unroll
        result[f"{label}_step_gflop"] = round(gflop, 2)
        parts[label] = (lambda st, bb: compiled(st, bb)[1], state, b, gflop)
        return compiled(state, b)[0]

    c.stage = "motion"
    motion = MCAVTask.from_config(c)
    m_state = jax.jit(motion.init)(jax.random.PRNGKey(0))
    train_b = batch(args.batch, d.n_past + d.n_future)
    if "motion" not in skip:
        m_state = add_step(motion, m_state, "motion", train_b, True)

    c.stage = "refine"
    refine = MCAVTask.from_config(c, load_mme=False)
    refine.frozen_mme = MCAVTask.variables(m_state)["mme"]
    r_state = jax.jit(refine.init)(jax.random.PRNGKey(1))
    if "refine" not in skip:
        r_state = add_step(refine, r_state, "refine", train_b, True)

    if "s2s" not in skip:
        s = sound2sight_m3so_nb.get_config(arg)
        if s.train.steps_per_epoch is None:
            s.train.steps_per_epoch = 8000 // 110
        s.loss.steps_per_epoch = 1  # adversarial terms on (as after the first epoch)
        s2s = Sound2SightTask.from_config(s)
        s_b = batch(args.batch, s.data.n_past + s.data.n_future, flow=False)
        s_state = jax.jit(s2s.init)(jax.random.PRNGKey(2))
        # Step 1 first (the adversarial weight is > 0 from then on); its compile is timed.
        s_state = add_step(s2s, s_state, "s2s", s_b, False)
        result["s2s_train_frames"] = f"{s.data.n_past} seen + {s.data.n_future} predicted"
        add_step(s2s, s_state, "s2s", s_b, False)  # the same executable (jit's cache)

    rounds = {label: [] for label in ["peak", *parts]}
    for _ in range(args.rounds):  # A, B, A, B: peak, MCAV's steps, Sound2Sight's step
        gflops, _ = matmul_peak(peak_n, args.repeats)
        rounds["peak"].append(round(gflops, 1))
        for label, (fn, st, b, _) in parts.items():
            s, _ = _common.min_time(fn, st, b, repeats=args.repeats)
            rounds[label].append(round(s, 4))
    peak = max(rounds["peak"])
    result.update(
        peak_matmul=f"float32 [{peak_n}, {peak_n}] x [{peak_n}, {peak_n}], jitted",
        peak_matmul_gflops=peak,
        peak_matmul_gflops_rounds=rounds["peak"],
    )
    summary.append([f"float32 matmul peak ({peak_n}^2, measured)", f"{peak:.1f} GFLOP/s"])
    names = {"motion": "stage-1 (MME)", "refine": "stage-2 (CAR)", "s2s": "Sound2Sight"}
    for label, (*_, gflop) in parts.items():
        s = min(rounds[label])
        result.update(
            {
                f"{label}_step_s": s,
                f"{label}_step_rounds_s": rounds[label],
                f"{label}_achieved_gflops": round(gflop / s, 1),
                f"{label}_fraction_of_peak": round(gflop / s / peak, 4),
            }
        )
        summary.append(
            [
                f"{names[label]} train step ({what})",
                f"{s:.4f} s ({gflop / s:.1f} GFLOP/s, {100 * gflop / s / peak:.1f}% of peak)",
            ]
        )
    if "s2s" in parts:
        for label in ("motion", "refine"):
            if label in parts:
                ratio = result[f"{label}_fraction_of_peak"] / result["s2s_fraction_of_peak"]
                result[f"{label}_fraction_vs_s2s"] = round(ratio, 3)

    if "rollout" not in skip:
        b = batch(args.batch, d.n_past + d.n_eval)
        roll = jax.jit(
            lambda st, x, f, a: refine.predict(st, x.astype(jnp.float32) / 255.0, f, a)["frames"]
        )
        s, times = _common.min_time(
            roll, r_state, b["frames"], b["flow"], b["audio"], repeats=args.repeats
        )
        result.update(rollout_s=round(s, 4), rollout_all_s=times)
        summary.append([f"rollout, {d.n_eval} predicted frames ({what})", f"{s:.4f} s"])

    result["summary"] = summary
    name = f"mcav_{args.config}_b{args.batch}_{info['platform']}"
    path = _common.write_json(args.out, name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
