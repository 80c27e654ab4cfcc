"""Time to vocode one 10-second SpecVQGAN mel (80 x 848 -> 217088 samples) with MelGAN, as JSON.

  python benchmarks/melgan_vocoder.py --batch 1 16 --dtype float32 bfloat16
  python benchmarks/melgan_vocoder.py --weights W   # a trained/imported vocoder (else random)

Paper generator (ngf 32, 4,266,050 params). Compile time is reported separately; run time
is the minimum (and median) over `--repeats` calls of the jitted generator, including the
host -> device copy of the mel and the device -> host copy of the audio. Reference: the
official PyTorch MelGAN vocodes 80 x 848 in 0.43 s on a quiet 2-core CPU (interleaved
with this benchmark; an earlier 0.74 s was measured under load). On a shared machine the
load average is recorded beside the numbers (take the min of several runs), and
`cpu_s_min`, the process CPU time per call, which contention does not inflate much: on an
idle 2-core machine the wall time is about cpu_s / 2. `--quick`: two timed calls.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from avjax.audio.vocoder import MelGANVocoder
from avjax.models.specvqgan import melgan
from benchmarks import _common

OFFICIAL_CPU_SECONDS = 0.43  # batch 1, 80 x 848, quiet 2-core CPU


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--frames", type=int, default=848)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--weights", default=None, help="MelGAN workdir or .pt/.npz (default random)")
    ap.add_argument("--quick", action="store_true", help="two timed calls per case")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 2

    gen = melgan.Generator()
    params = None
    if args.weights is None:
        params = jax.jit(gen.init)(jax.random.key(0), jnp.zeros((1, 8, 80)))["params"]
    dev = jax.devices()[0]
    results = []
    for dtype in args.dtype:
        if args.weights is not None:
            voc = MelGANVocoder.from_path(args.weights, dtype=jnp.dtype(dtype))
        else:
            voc = MelGANVocoder(gen, params, dtype=jnp.dtype(dtype))
        for batch in args.batch:
            mel = np.random.RandomState(0).uniform(0, 1, (batch, 80, args.frames))
            mel = mel.astype(np.float32)
            load_before = os.getloadavg()
            t0 = time.perf_counter()
            compiled = voc._apply.lower(voc.params, jnp.asarray(mel)).compile()
            compile_s = time.perf_counter() - t0
            times, cpu = [], []
            for _ in range(args.repeats + 1):  # the first call warms up allocations
                t0, c0 = time.perf_counter(), time.process_time()
                wave = np.asarray(compiled(voc.params, jnp.asarray(mel)))
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            times, cpu = times[1:], cpu[1:]
            seconds = wave.shape[1] / 22050
            row = {
                "dtype": dtype,
                "batch": batch,
                "frames": args.frames,
                "samples": int(wave.shape[1]),
                "compile_s": round(compile_s, 3),
                "min_s": round(min(times), 4),
                "median_s": round(float(np.median(times)), 4),
                "per_clip_min_s": round(min(times) / batch, 4),
                # CPU seconds the process used per call (all threads): on an idle machine
                # with n cores the wall time is at least cpu_s / n; robust to contention.
                "cpu_s_min": round(min(cpu), 4),
                "realtime_factor": round(seconds * batch / min(times), 2),
                "finite": bool(np.isfinite(wave).all()),
                "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
            }
            if dev.platform == "cpu":
                row["speedup_vs_official_cpu_b1"] = round(
                    OFFICIAL_CPU_SECONDS / (min(times) / batch), 2
                )
            results.append(row)
            print(json.dumps(row))

    report = {
        "benchmark": "melgan_vocoder",
        **_common.device_info(),
        "machine": platform.machine(),
        "weights": args.weights or "random init (timing only)",
        "official_cpu_seconds_b1": OFFICIAL_CPU_SECONDS,
        "results": results,
        "summary": [
            [
                f"{r['frames']} frames, batch {r['batch']}, {r['dtype']}",
                f"{r['per_clip_min_s']} s/clip, real-time factor {r['realtime_factor']}",
            ]
            for r in results
        ],
    }
    path = _common.write_json(args.out, f"melgan_vocoder_{dev.platform}", report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
