"""Speed and memory of the SpecVQGAN codebook train step and forward pass, as JSON.

  python benchmarks/specvqgan_codebook.py --config paper --batch 2 --out benchmarks/results
  python benchmarks/specvqgan_codebook.py --config tiny --batch 8
  python benchmarks/specvqgan_codebook.py --config paper --batch 3 --dtype bfloat16   # GPU

Measures compile time, steps/s of the full jitted step (autoencoder + discriminator
updates, LPAPS and discriminator terms switched on), the time of one 80x848 forward
pass, peak memory, and the FLOPs of the step from XLA's cost analysis: on an accelerator
that of the compiled step itself, on CPU that of the step traced with plain-lax
convolutions (XLA counts a scan body once). On a GPU / TPU whose kind has a known peak
(`_common.PEAK_BF16_TFLOPS`) the JSON gives the model FLOP utilisation against it.
`--quick`: one timed step after the warm-up.
Reference (official PyTorch, 2-core CPU, batch 2): 16.0 s + 3.2 s per iteration, 2.0 s
per forward pass.
"""

import argparse
import json
import os
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from avjax.train.tasks.vqgan import VQGANTask
from benchmarks import _common
from benchmarks._plain_lax import plain_lax
from configs import specvqgan_vggsound


def peak_memory_bytes() -> int:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # CPU: process RSS


def timed(fn, *args, repeats: int):
    out = fn(*args)
    jax.block_until_ready(out)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        t.append(time.perf_counter() - t0)
    return out, float(np.median(t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--no_disc_recompute",
        action="store_true",
        help="feed the discriminator this step's reconstruction (config.loss.disc_recompute=False)",
    )
    ap.add_argument("--no_forward", action="store_true", help="skip the forward-pass timing")
    ap.add_argument("--quick", action="store_true", help="one timed step")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.quick:
        args.steps = 1

    config = specvqgan_vggsound.get_config("tiny" if args.config == "tiny" else None)
    config.dtype = args.dtype
    config.data.global_batch_size = args.batch
    config.loss.disc_start = 0  # every term on, as after the discriminator starts
    config.loss.disc_recompute = not args.no_disc_recompute
    f, t = config.data.num_mel_bins, config.data.crop_frames
    stats = {"shift": np.zeros(f, np.float32), "scale": np.ones(f, np.float32)}
    task = VQGANTask.from_config(config, stats)
    batch = {
        "image": jnp.asarray(
            np.random.RandomState(0).uniform(-1, 1, (args.batch, f, t)), jnp.float32
        )
    }

    load_before = round(os.getloadavg()[0], 2)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    step = jax.jit(task.train_step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    info = _common.device_info()
    with plain_lax():  # XLA counts a scan body once: count the plain-lax step instead
        flops = 1e9 * _common.step_gflop(task.train_step, state, batch)

    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.steps):
        t1 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t1)
    step_s = float(np.median(times))

    fwd_s = None
    if not args.no_forward:
        fwd = jax.jit(lambda p, x: task.model.apply({"params": p}, x)[0])
        x1 = batch["image"][:1, ..., None]
        _, fwd_s = timed(fwd, state["params"]["ae"], x1, repeats=args.steps)

    result = {
        "benchmark": "specvqgan_codebook",
        "config": args.config,
        "global_batch": args.batch,
        "input": [f, t],
        "dtype": args.dtype,
        **info,
        "disc_recompute": config.loss.disc_recompute,
        # Other processes compete for the CPU when this is well above 0 (timings then inflate).
        "load_average_1min_before": load_before,
        "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 4),
        "steps_per_s": round(1.0 / step_s, 4),
        "forward_s_batch1": None if fwd_s is None else round(fwd_s, 4),
        "step_gflop": round(flops / 1e9, 1),
        "achieved_tflops": round(flops / step_s / 1e12, 3),
        "peak_memory_gib": round(peak_memory_bytes() / 2**30, 3),
        "official_cpu_reference_s": {"ae_step": 16.0, "disc_step": 3.2, "forward": 2.0},
    }
    peak = info.get("peak_bf16_tflops")
    if peak and flops:
        result["mfu"] = round(flops / step_s / 1e12 / peak, 4)
    what = f"{args.config} step, batch {args.batch}, {args.dtype}"
    result["summary"] = [
        [what, f"{step_s:.4g} s ({result['achieved_tflops']} TFLOP/s)"],
        [f"{what}: compile", f"{compile_s:.1f} s"],
    ]
    if "mfu" in result:
        result["summary"].append([f"{what}: MFU (peak {peak:g} TFLOP/s)", result["mfu"]])
    if fwd_s is not None:
        result["summary"].append([f"forward of one {f} x {t} mel", f"{fwd_s:.4g} s"])
    suffix = "" if config.loss.disc_recompute else "_reuse"
    dt = "" if args.dtype == "float32" else f"_{args.dtype}"
    name = f"specvqgan_codebook_{args.config}_b{args.batch}{dt}{suffix}_{info['platform']}"
    path = _common.write_json(args.out, name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
