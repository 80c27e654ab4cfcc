"""Runs every benchmark, each in its own time-bounded process, and prints one table.

  python benchmarks/run_all.py                # CPU set, small sizes (a few minutes)
  python benchmarks/run_all.py --accel        # GPU / TPU set, < 8 minutes with compiles
  python benchmarks/run_all.py --tiny         # plumbing check: tiny configs, seconds each
  make bench-accel                            # installs jax for the accelerator, then --accel

Each benchmark runs as `python benchmarks/<name>.py ARGS --out OUT/<name>` with a
timeout (its own, capped by what is left of `--budget_s`); a benchmark that fails or runs
out of time is reported as such and the others still run. Every benchmark writes its
JSON (device named inside) into OUT/<name>/; this script writes OUT/run_all.json (status,
seconds and summary rows of each) and prints the table of their `summary` rows.

A benchmark script added later (e.g. `benchmarks/mcav.py`) is picked up by name: an
entry below names its arguments per mode; a script without an entry runs with
`--quick` (and `--tiny` in tiny mode). Scripts whose names start with `_` are helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

# name -> {mode: (arguments, timeout seconds)}; the order is the order of the runs (the
# most wanted figures first, so a short budget still gets them).
BENCHMARKS: dict[str, dict[str, tuple[list[str], int]]] = {
    "specvqgan_sampling": {
        # bf16 (the accelerator default) at batch 1 and 64, sampling + decoding + vocoding,
        # and the bf16 sampler's agreement with float32; CPU: a 4-layer GPT of the paper's width.
        "accel": (
            [
                "--config",
                "paper",
                "--weights_dtype",
                "bfloat16",
                "--batch",
                "1,64",
                "--pipeline",
                "--agreement",
                "bfloat16",
                "--dump_hlo",
                "--quick",
            ],
            200,
        ),
        "cpu": (["--config", "small", "--weights_dtype", "float32,int8", "--quick"], 300),
        "tiny": (
            ["--config", "tiny", "--weights_dtype", "float32,int8", "--batch", "1", "--quick"],
            180,
        ),
    },
    "specvqgan_codebook": {
        "accel": (["--config", "paper", "--batch", "3", "--dtype", "bfloat16", "--quick"], 150),
        "cpu": (["--config", "tiny", "--batch", "8", "--quick"], 240),
        "tiny": (["--config", "tiny", "--batch", "1", "--quick", "--no_forward"], 120),
    },
    "sound2sight": {
        "accel": (["--config", "paper", "--batch", "16", "--skip", "eval", "--quick"], 120),
        "cpu": (["--config", "tiny", "--batch", "8", "--skip", "eval", "--quick"], 240),
        "tiny": (["--config", "tiny", "--batch", "2", "--skip", "rollout,eval", "--quick"], 240),
    },
    # MCAV's two train steps and rollout (M3SO-NB config; no official code to compare), their
    # fraction of the measured matmul peak beside Sound2Sight's step, TV-L1 flow per clip
    # (a host-CPU figure: the CPU set measures it).
    "mcav": {
        "accel": (["--config", "paper", "--batch", "16", "--skip", "flow", "--quick"], 150),
        "cpu": (["--config", "tiny", "--batch", "8", "--quick"], 240),
        "tiny": (
            # One flow clip and a 1024^2 peak: the plumbing, not the figures.
            [
                *("--config", "tiny", "--batch", "2", "--rounds", "1", "--skip", "s2s"),
                *("--quick", "--flow_clips", "1", "--peak_n", "1024"),
            ],
            180,
        ),
    },
    "melgan_vocoder": {
        "accel": (["--batch", "1", "64", "--dtype", "bfloat16", "--quick"], 60),
        "cpu": (["--batch", "1", "--dtype", "float32", "--quick"], 120),
        "tiny": (["--batch", "1", "--dtype", "float32", "--frames", "16", "--quick"], 60),
    },
}


# All runs of a mode together (seconds); the accelerator set must fit in 8 minutes.
BUDGET_S = {"accel": 470.0, "cpu": 1500.0, "tiny": 600.0}


def discover() -> list[str]:
    """Benchmarks to run: the table's order, then any other `benchmarks/*.py` script."""
    scripts = {p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_")}
    scripts.discard(pathlib.Path(__file__).stem)
    known = [n for n in BENCHMARKS if n in scripts]
    return known + sorted(scripts - set(BENCHMARKS))


def arguments(name: str, mode: str) -> tuple[list[str], int]:
    """(arguments, timeout) of a benchmark in a mode; unknown scripts: `--quick`."""
    if name in BENCHMARKS:
        return BENCHMARKS[name][mode]
    return (["--quick", "--tiny"] if mode == "tiny" else ["--quick"]), 120


def run_one(
    name: str,
    args: list[str],
    out: pathlib.Path,
    timeout: float,
    script: pathlib.Path | None = None,
) -> dict:
    """Runs one benchmark (`script`, default benchmarks/<name>.py) writing into OUT/<name>/,
    in its own process group, which is killed when `timeout` seconds have passed."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script or HERE / f"{name}.py"), *args, "--out", str(folder)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = folder / "log.txt"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout, 1))
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {timeout:.0f} s"
    row = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "command": cmd}
    row["results"] = [str(p.relative_to(out)) for p in sorted(folder.glob("*.json"))]
    row["summary"] = []
    for p in sorted(folder.glob("*.json")):
        data = json.loads(p.read_text())
        row.setdefault("device", data.get("device"))
        row["summary"] += [list(r) for r in data.get("summary", [])]
    if status != "ok":
        row["log_tail"] = log.read_text()[-2000:]
    return row


def table(rows: dict[str, dict]) -> str:
    """Markdown table: one line per summary row, one per benchmark without results."""
    lines = ["| benchmark | measurement | value | status |", "|---|---|---|---|"]
    for name, row in rows.items():
        summary = row["summary"] or [["-", "-"]]
        for i, (what, value) in enumerate(summary):
            status = f"{row['status']} ({row['seconds']} s)" if i == 0 else ""
            lines.append(f"| {name if i == 0 else ''} | {what} | {value} | {status} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--accel", action="store_true", help="GPU / TPU set (needs one)")
    mode.add_argument("--tiny", action="store_true", help="tiny configs (tests the plumbing)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/run_<mode>")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--budget_s", type=float, default=None, help="all runs together")
    args = ap.parse_args(argv)
    mode = "accel" if args.accel else "tiny" if args.tiny else "cpu"
    budget = args.budget_s or BUDGET_S[mode]
    out = pathlib.Path(args.out or REPO / "benchmarks" / "results" / f"run_{mode}")
    out.mkdir(parents=True, exist_ok=True)

    if mode == "accel":
        # Asked in a child process: this one must not hold the accelerator (or its memory).
        probe = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.default_backend())"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() in ("", "cpu"):
            print(
                "error: --accel needs a GPU or TPU, and JAX sees only the CPU "
                "(install the accelerator extra: `make bench-accel`)",
                file=sys.stderr,
            )
            return 1
    names = discover()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"error: --only: no benchmark named {', '.join(unknown)}", file=sys.stderr)
            return 1
        names = [n for n in names if n in wanted]

    start = time.perf_counter()
    rows: dict[str, dict] = {}
    for name in names:
        bench_args, timeout = arguments(name, mode)
        left = budget - (time.perf_counter() - start)
        if left < 10:
            rows[name] = {"status": "skipped (budget spent)", "seconds": 0, "summary": []}
            continue
        print(f"== {name} (up to {min(timeout, left):.0f} s)", flush=True)
        rows[name] = run_one(name, bench_args, out, min(timeout, left))
        print(f"   {rows[name]['status']} in {rows[name]['seconds']} s", flush=True)
    report = {
        "mode": mode,
        "seconds": round(time.perf_counter() - start, 1),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "benchmarks": rows,
    }
    (out / "run_all.json").write_text(json.dumps(report, indent=2) + "\n")
    device = next((r.get("device") for r in rows.values() if r.get("device")), "?")
    print(f"\n{mode} benchmarks on {device}, {report['seconds']} s in all; JSON under {out}\n")
    print(table(rows))
    return 0 if all(r["status"] == "ok" for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
