"""One int8 Dense layer on the host CPU, by route: the native kernel, XLA's int8 dot, float32.

  python benchmarks/int8_matmul.py --out D                   # 1024x4096 and 4096x1024, M 1,16
  python benchmarks/int8_matmul.py --rows 1,2,4,8,16 --rounds 9
  python benchmarks/int8_matmul.py --tiny --quick            # plumbing check, seconds

`y = (x @ q) * scale` for x float32 [M, in] and q int8 [in, out] (`avjax.nn.quantize`),
timed as sampling runs it: `--copies` distinct layers (default 12, 48 MiB of int8 for the
paper's 4 MiB layers: more than a 32 MiB L3) applied one after the other inside a jitted
`fori_loop`, so the weights come from memory, not cache. Routes:
* `native`: `avjax.nn.native.int8_matmul` (XLA FFI), on XLA's intra-op pool;
* `native_1_thread`: the same on one thread;
* `xla_int8`: quantised activations, XLA's int8 x int8 -> int32 dot (the fallback);
* `float32`: `x @ w` with float32 weights (4 bytes a weight).
The timed calls are interleaved (A, B, A, B, ... `--rounds`), so a shared machine's load
falls on all of them alike; the JSON keeps every time, the median and the spread, and
`gbs` is weight bytes read per second (int8: 1 byte a weight, float32: 4). Runs on the
host CPU whatever the default device (the kernel is CPU only).

Writes D/int8_matmul_cpu.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from avjax.nn import native, quantize
from benchmarks import _common


def looped(f, steps: int):
    """x, layers -> x after `steps` passes through every layer (each pass feeds the next)."""

    def run(x, layers):
        def body(_, x):
            for w in layers:
                x = x + 1e-30 * f(x, *w)[:, :1]
            return x

        return lax.fori_loop(0, steps, body, x)

    return jax.jit(run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1024x4096,4096x1024", help="comma list of INxOUT")
    ap.add_argument("--rows", default="1,16", help="comma list of M (rows of x)")
    ap.add_argument("--copies", type=int, default=12, help="distinct layers per pass")
    ap.add_argument("--steps", type=int, default=4, help="passes per timed call")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timed calls per case")
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--tiny", action="store_true", help="a 64x96 layer, 2 copies (plumbing)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    shapes = "64x96" if args.tiny else args.shapes
    shapes = [tuple(int(v) for v in s.split("x")) for s in shapes.split(",")]
    rows = [1] if args.tiny else [int(m) for m in args.rows.split(",")]
    copies = 2 if args.tiny else args.copies
    rounds = 3 if args.quick else args.rounds
    cpu = jax.devices("cpu")[0]
    load_before = _common.load_average()
    routes = {
        "native": lambda x, q, s: native.int8_matmul(x, q, s),
        "native_1_thread": lambda x, q, s: native.int8_matmul(x, q, s, max_threads=1),
        "xla_int8": lambda x, q, s: quantize._cpu_matmul(x, q, s, jnp.float32, use_native=False),
        "float32": lambda x, w: x @ w,
    }
    if not native.available():
        routes = {k: v for k, v in routes.items() if not k.startswith("native")}

    rng = np.random.default_rng(0)
    cases = {}
    with jax.default_device(cpu):
        for k, n in shapes:
            w = [(0.02 * rng.standard_normal((k, n))).astype(np.float32) for _ in range(copies)]
            int8 = [tuple(jnp.asarray(a) for a in quantize.quantize_int8(v)) for v in w]
            f32 = [(jnp.asarray(v),) for v in w]
            for m in rows:
                x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
                for name, f in routes.items():
                    layers, nbytes = (f32, 4 * k * n) if name == "float32" else (int8, k * n)
                    fn = looped(f, args.steps)
                    jax.block_until_ready(fn(x, layers))  # compile
                    cases[(k, n, m, name)] = (fn, x, layers, nbytes)
        times = {c: [] for c in cases}
        for _ in range(rounds):
            for c, (fn, x, layers, _) in cases.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x, layers))
                times[c].append((time.perf_counter() - t0) / (args.steps * copies))

    results, summary = [], []
    for (k, n, m, name), ts in times.items():
        med = float(np.median(ts))
        nbytes = cases[(k, n, m, name)][3]
        results.append(
            {
                "in": k,
                "out": n,
                "rows": m,
                "route": name,
                "times_us": [round(t * 1e6, 1) for t in ts],
                "median_us": round(med * 1e6, 1),
                "spread": round(float(np.max(ts) / np.min(ts) - 1.0), 3),
                "gbs": round(nbytes / med / 1e9, 2),
            }
        )
        summary.append(
            [f"{k}x{n}, {m} row(s), {name}", f"{med * 1e6:.0f} us ({nbytes / med / 1e9:.1f} GB/s)"]
        )
    result = {
        "benchmark": "int8_matmul",
        **_common.device_info(),
        "host_cpu": True,
        "copies": copies,
        "native_available": native.available(),
        "timing": f"median of {rounds} interleaved calls of {args.steps} x {copies} layers",
        "load_average_1min": [load_before, _common.load_average()],
        "results": results,
        "summary": summary,
    }
    path = _common.write_json(args.out, "int8_matmul_cpu", result)
    print(f"wrote {path}")
    for what, value in summary:
        print(f"  {what}: {value}")


if __name__ == "__main__":
    main()
