"""Helpers of the benchmarks (not one itself): device facts, peak FLOP/s, bandwidth, JSON.

Every benchmark script takes `--out DIR` and `--quick` (a time-bounded run of the same
measurements at fewer repeats, for `run_all.py`), writes one JSON per run into DIR with
the device named in it, and puts a `summary` list of `[what, value]` rows in that JSON:
the lines `run_all.py` prints in its table.

Benchmarks compile cold, so their compile-time figures are compiles, unless the
environment names a persistent compilation cache in `AVJAX_JAX_CACHE` (the test suite
does, for the tiny runs; compile figures are then cache loads): `use_env_compile_cache`,
called when this module is imported.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import platform
import re
import time

import numpy as np

# Dense bf16 peak TFLOP/s by device kind (vendor data sheets; H100/H200 SXM, no sparsity).
# Matched in order against `device.device_kind`, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("TPU v6 lite", 918.0),
)


def use_env_compile_cache() -> str | None:
    """Turns on JAX's persistent compilation cache at `$AVJAX_JAX_CACHE`, if set; its path."""
    path = os.environ.get("AVJAX_JAX_CACHE")
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path or None


use_env_compile_cache()


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of a device kind ("NVIDIA H100 80GB HBM3" -> 989), None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def device_info() -> dict:
    """The first JAX device and the host: what every benchmark JSON records."""
    import jax

    dev = jax.devices()[0]
    info = {
        "device": f"{dev.platform}:{dev.device_kind}",
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "compile_cache": os.environ.get("AVJAX_JAX_CACHE") or None,  # compile_s: loads
    }
    peak = peak_tflops(dev.device_kind) if dev.platform != "cpu" else None
    if peak:
        info["peak_bf16_tflops"] = peak
    return info


def load_average() -> float:
    """1-minute load average (above the core count: other jobs competed for the CPU)."""
    return round(os.getloadavg()[0], 2)


def copy_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Host memory bandwidth: bytes read + written per second by a numpy copy of `mib` MiB.

    The best of `repeats` copies between two preallocated float32 arrays (one thread).
    """
    a = np.ones(mib * 2**18, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(_timed_copy(a, b) for _ in range(repeats))
    return round(2 * a.nbytes / best / 1e9, 2)


def _timed_copy(a, b) -> float:
    t0 = time.perf_counter()
    np.copyto(b, a)
    return time.perf_counter() - t0


def device_copy_bandwidth_gbs(mib: int = 1024, repeats: int = 5) -> float:
    """Accelerator memory bandwidth: bytes read + written per second by a jitted copy."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(mib * 2**18, jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(copy(x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(copy(x))
        best = min(best, time.perf_counter() - t0)
    return round(2 * x.nbytes / best / 1e9, 2)


def memory_bandwidth_gbs(platform: str, quick: bool = False) -> float:
    """Copy bandwidth of the memory the weights live in: host RAM on CPU, else the device's."""
    if platform == "cpu":
        return copy_bandwidth_gbs(256 if quick else 1024)
    return device_copy_bandwidth_gbs()


def min_time(fn, *args, repeats: int) -> tuple[float, list[float]]:
    """(fastest, all) seconds of `repeats` calls of `fn(*args)` after a warm-up call (the
    machine is shared: the minimum is the least disturbed)."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(min(times)), [round(t, 4) for t in times]


def step_gflop(fn, *args) -> float:
    """XLA's FLOP count of `fn(*args)` in GFLOP, from its lowering for the CPU.

    Lowered for the CPU whatever the device (GPU lowerings report no cost analysis) from
    shapes only, so nothing is compiled or placed. XLA counts a loop body once: trace `fn`
    with its loops unrolled (and, for avjax's convolutions, inside `plain_lax()`).
    """
    import jax

    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    cost = jax.jit(fn).trace(*spec).lower(lowering_platforms=("cpu",)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0)) / 1e9


# HLO instructions that launch no work of their own (views, tuples, parameters).
_FREE_OPS = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def _hlo_computations(text: str) -> dict[str, list[tuple[str, str]]]:
    """Optimized HLO text -> {computation name: [(opcode, instruction line)]}."""
    comps: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([^\s(]+)\s.*\{\s*$", line)
        if head:
            current = comps.setdefault(head[1], [])
            continue
        if line.startswith("}"):
            current = None
            continue
        m = re.match(r"^\s+(?:ROOT\s+)?%?[^\s=]+\s*=\s*", line)
        if current is None or not m:
            continue
        rest = line[m.end() :]
        if rest.startswith("("):  # a tuple shape: skip its balanced parentheses
            depth = 0
            for i, ch in enumerate(rest):
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    rest = rest[i + 1 :]
                    break
        else:
            rest = rest.split(" ", 1)[-1]
        op = re.match(r"\s*([\w\-]+)\(", rest)
        if op:
            current.append((op[1], line))
    return comps


def hlo_loop_ops(text: str) -> dict:
    """What one iteration of a compiled program's main loop runs, from its optimized HLO.

    The main loop is the `while` whose body has the most instructions (a sampler's token
    loop). Returns the body's instructions that do work (`ops`, by opcode; views, tuples and
    parameters left out), custom-call targets, loops nested in it (on a GPU every iteration
    of a loop reads its predicate back to the host) and the instructions inside the
    computations it `call`s (XLA's GPU command buffers, each launched as one CUDA graph).
    On a GPU nearly every op is a kernel launch: at batch 1 their count per token, not the
    bytes of the weights, can bound a sampler.
    """
    comps = _hlo_computations(text)
    bodies = re.findall(r"\bbody=%?([\w.\-]+)", text)
    if not bodies:
        return {"ops": 0}
    body = max(bodies, key=lambda b: len(comps.get(b, [])))
    work = [(op, line) for op, line in comps.get(body, []) if op not in _FREE_OPS]
    by_op = collections.Counter(op for op, _ in work)
    target = lambda line: (re.findall(r'custom_call_target="([^"]+)"', line) or ["?"])[0]
    callee = lambda line: (re.findall(r"to_apply=%?([\w.\-]+)", line) or [""])[0]
    return {
        "ops": len(work),
        "by_opcode": dict(by_op.most_common()),
        "custom_call_targets": dict(
            collections.Counter(target(line) for op, line in work if op == "custom-call")
        ),
        "nested_loops": by_op["while"],
        "ops_inside_calls": sum(
            o not in _FREE_OPS
            for op, line in work
            if op == "call"
            for o, _ in comps.get(callee(line), [])
        ),
    }


def write_json(out: str | pathlib.Path, name: str, result: dict) -> pathlib.Path:
    """Writes `result` as OUT/name.json (creating OUT) and returns the path."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
