"""Time to sample one 10-s clip (212 features, 265 tokens) from the SpecVQGAN GPT, as JSON.

  python benchmarks/specvqgan_sampling.py                       # paper config, batch 1
  python benchmarks/specvqgan_sampling.py --batch 1,16 --dtypes float32,bfloat16
  python benchmarks/specvqgan_sampling.py --config tiny --no_cache_tokens 0

For each batch size and weight dtype it measures the KV-cache sampler (`sampling.sample`:
one prefill of the 212 condition frames, then a `lax.scan` of 265 one-token steps) and,
in the same run, the no-cache sampler (`sampling.sample_no_cache`, the official
evaluation sampler's algorithm: a full 476-position forward per token). The no-cache run
of all 265 tokens is long on CPU, so `--no_cache_tokens N` times N tokens and
extrapolates to 265 (each step costs the same, so the figure is labelled
`extrapolated`); `--no_cache_tokens 265` runs it all. Compile time (first call minus a
timed call) is reported apart from run time. Weights are random (speed does not depend
on their values). Reference (official PyTorch, no cache, 2-core CPU): 389 s per sample,
1.0 s per token at the start and 2.1 s at the end.
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

from avjax.models.specvqgan import sampling
from avjax.models.specvqgan.gpt import GPT

OFFICIAL_CPU_S = 389.0


def timed(fn, repeats: int, *args, **kwargs):
    """(compile seconds = first call minus a timed call, median run seconds) of fn(*args)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        runs.append(time.perf_counter() - t0)
    run = float(np.median(runs))
    return max(first - run, 0.0), run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--batch", default="1", help="comma-separated samples per call")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="weight/compute dtypes")
    ap.add_argument("--no_cache_tokens", type=int, default=3, help="0 skips the no-cache run")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--top_k", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args()

    if args.config == "paper":
        model = GPT(1024, 477, 24, 16, 1024, feat_dim=2048)
        tc, num_tokens = 212, 265
    else:
        model = GPT(64, 212 + 265, 2, 2, 32, feat_dim=2048)
        tc, num_tokens = 212, 265
    feats1 = jax.random.uniform(jax.random.PRNGKey(1), (1, tc, model.feat_dim))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), feats1)
    params = params["params"]
    rng = jax.random.PRNGKey(2)
    kw = dict(temperature=1.0, top_k=args.top_k, top_p=1.0)

    load_before = os.getloadavg()
    rows = []
    for dtype_name in args.dtypes.split(","):
        m, p = (
            (model, params)
            if dtype_name == "float32"
            else sampling.for_inference(model, params, jnp.dtype(dtype_name))
        )
        for batch in map(int, args.batch.split(",")):
            # A batch of B samples of one clip (the condition prefilled once).
            row = {"dtype": dtype_name, "batch": batch}
            compile_s, run_s = timed(
                sampling.sample,
                args.repeats,
                *(m, p, rng, feats1),
                num_tokens=num_tokens,
                num_samples=batch,
                **kw,
            )
            row["kv_cache"] = {
                "compile_s": round(compile_s, 2),
                "run_s": round(run_s, 3),
                "s_per_sample": round(run_s / batch, 3),
                "ms_per_token": round(1e3 * run_s / num_tokens, 2),
                "speedup_vs_official_cpu": round(OFFICIAL_CPU_S / (run_s / batch), 1),
            }
            print(json.dumps(row), flush=True)
            n = min(args.no_cache_tokens, num_tokens)
            if n > 0:
                compile_s, run_s = timed(
                    sampling.sample_no_cache,
                    args.repeats,
                    *(m, p, rng, feats1),
                    num_tokens=num_tokens,
                    num_samples=batch,
                    max_steps=n,
                    **kw,
                )
                full = run_s * num_tokens / n
                row["no_cache"] = {
                    "compile_s": round(compile_s, 2),
                    "timed_tokens": n,
                    "run_s_timed": round(run_s, 3),
                    "s_per_token": round(run_s / n, 3),
                    "run_s": round(full, 2),
                    "run_s_is": "measured" if n == num_tokens else "extrapolated",
                    "s_per_sample": round(full / batch, 2),
                }
                row["cache_speedup"] = round(full / row["kv_cache"]["run_s"], 1)
                print(json.dumps(row), flush=True)
            rows.append(row)

    dev = jax.devices()[0]
    result = {
        "benchmark": "specvqgan_sampling",
        "config": args.config,
        "condition_frames": tc,
        "tokens": num_tokens,
        "top_k": args.top_k,
        "device": f"{dev.platform}:{dev.device_kind}",
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "jax": jax.__version__,
        "official_cpu_reference_s_per_sample": OFFICIAL_CPU_S,
        "results": rows,
        # 1-min load average before / after: above the core count means other jobs competed.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    path = out / f"specvqgan_sampling_{args.config}_{dev.platform}{tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
