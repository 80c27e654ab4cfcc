"""Speed of MCAV (M3SO-NB config): stage-1 (MME) and stage-2 (CAR) train steps, rollout.

  python benchmarks/mcav.py --out benchmarks/results              # paper widths, B=32
  python benchmarks/mcav.py --config tiny --batch 4 --quick       # CPU plumbing

Measures (minimum over `--repeats` timed calls after a warm-up; the machine is shared):
one jitted stage-1 training step (flow MSE + smoothness through the 4-layer ConvLSTM and
the motion memory, 5 seen + 15 predicted frames as the config trains), one stage-2 step
(CAR U-Net on the frozen MME's rollout), and a rollout of the 25 eval frames (5 seen, 20
predicted) of `--batch` clips with both stages. There is no official code to compare
with; Sound2Sight's benchmark (`benchmarks/sound2sight.py`) runs the same clip shapes.
The JSON also holds XLA's FLOP count of each step (time loops unrolled to count) and
the achieved GFLOP/s.
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

from avjax.train.tasks.mcav import MCAVTask
from benchmarks import _common
from benchmarks._plain_lax import plain_lax
from configs import mcav_m3so_nb


def min_time(fn, *args, repeats: int) -> tuple[float, list[float]]:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(min(times)), [round(t, 4) for t in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["paper", "small", "tiny"], default="paper")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", default="", help="comma list of motion,refine,rollout to skip")
    ap.add_argument("--quick", action="store_true", help="two timed calls of each part")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.repeats = 2

    c = mcav_m3so_nb.get_config(None if args.config == "paper" else args.config)
    d = c.data
    size, ch, audio = d.image_size, d.channels, tuple(d.audio_shape)
    rs = np.random.RandomState(0)

    def batch(b, t):
        return {
            "frames": jnp.asarray(rs.randint(0, 256, (b, t, size, size, ch)), jnp.uint8),
            "flow": jnp.asarray(rs.normal(0, 1, (b, t, size, size, 2)), jnp.float16),
            "audio": jnp.asarray(rs.uniform(0, 1, (b, t, *audio)), jnp.float32),
        }

    info = _common.device_info()
    result = {
        "benchmark": "mcav",
        "config": args.config,
        **info,
        "load_average_1min_before": _common.load_average(),
        "batch": args.batch,
        "train_frames": f"{d.n_past} seen + {d.n_future} predicted",
        "timing": f"min of {args.repeats} calls after a warm-up (shared machine)",
    }
    summary = []
    what = f"{args.config}, B={args.batch}"

    def time_step(task, state, label):
        b = batch(args.batch, d.n_past + d.n_future)
        t0 = time.perf_counter()
        compiled = jax.jit(task.train_step).lower(state, b).compile()
        result[f"{label}_compile_s"] = round(time.perf_counter() - t0, 2)
        # XLA counts a loop body once: count FLOPs on a fresh trace with the time loops
        # unrolled and the convolutions as plain lax (lowered only, never compiled).
        unroll, task.unroll = task.unroll, 0
        with plain_lax():
            gflop = _common.step_gflop(task.train_step, state, b)
        task.unroll = unroll
        s, times = min_time(lambda st, bb: compiled(st, bb)[1], state, b, repeats=args.repeats)
        result[f"{label}_step_gflop"] = round(gflop, 1)
        result.update({f"{label}_step_s": round(s, 4), f"{label}_step_all_s": times})
        result[f"{label}_achieved_gflops"] = round(gflop / s, 1)
        summary.append([f"{label} train step ({what})", f"{s:.4f} s ({gflop / s:.1f} GFLOP/s)"])
        return compiled(state, b)[0]

    c.stage = "motion"
    motion = MCAVTask.from_config(c)
    m_state = jax.jit(motion.init)(jax.random.PRNGKey(0))
    if "motion" not in skip:
        m_state = time_step(motion, m_state, "motion")

    c.stage = "refine"
    refine = MCAVTask.from_config(c, load_mme=False)
    refine.frozen_mme = MCAVTask.variables(m_state)["mme"]
    r_state = jax.jit(refine.init)(jax.random.PRNGKey(1))
    if "refine" not in skip:
        r_state = time_step(refine, r_state, "refine")

    if "rollout" not in skip:
        b = batch(args.batch, d.n_past + d.n_eval)
        roll = jax.jit(
            lambda st, x, f, a: refine.predict(st, x.astype(jnp.float32) / 255.0, f, a)["frames"]
        )
        s, times = min_time(roll, r_state, b["frames"], b["flow"], b["audio"], repeats=args.repeats)
        result.update(rollout_s=round(s, 4), rollout_all_s=times)
        summary.append([f"rollout, {d.n_eval} predicted frames ({what})", f"{s:.4f} s"])

    result["summary"] = summary
    name = f"mcav_{args.config}_b{args.batch}_{info['platform']}"
    path = _common.write_json(args.out, name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
