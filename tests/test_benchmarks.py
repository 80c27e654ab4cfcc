"""benchmarks/run_all.py's plumbing (no timings are checked): per-benchmark processes with
time limits, their JSON gathered into one report and table, the device peaks, and the
benchmarks themselves in tiny mode."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from benchmarks import _common, run_all


def test_peak_tflops_by_device_kind():
    assert _common.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert _common.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert _common.peak_tflops("NVIDIA H200") == 989.0
    assert _common.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert _common.peak_tflops("TPU v5 lite") == 197.0
    assert _common.peak_tflops("TPU v5p") == 459.0
    assert _common.peak_tflops("TPU v4") == 275.0
    assert _common.peak_tflops("cpu") is None


def _script(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_run_one_reports_results_failures_and_timeouts(tmp_path):
    ok = _script(
        tmp_path,
        "good",
        """
        import json, pathlib, sys
        out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "good_cpu.json").write_text(json.dumps(
            {"device": "cpu:cpu", "args": sys.argv[1:], "summary": [["step", "1.5 s"]]}))
        """,
    )
    bad = _script(tmp_path, "bad", "import sys; print('boom'); sys.exit(3)")
    slow = _script(tmp_path, "slow", "import time; time.sleep(60)")
    out = tmp_path / "out"
    rows = {
        "good": run_all.run_one("good", ["--quick"], out, 60, ok),
        "bad": run_all.run_one("bad", [], out, 60, bad),
        "slow": run_all.run_one("slow", [], out, 1, slow),
    }
    good = rows["good"]
    assert good["status"] == "ok" and good["device"] == "cpu:cpu"
    assert good["summary"] == [["step", "1.5 s"]] and good["results"] == ["good/good_cpu.json"]
    args = json.loads((out / "good" / "good_cpu.json").read_text())["args"]
    assert args == ["--quick", "--out", str(out / "good")]
    assert rows["bad"]["status"] == "failed (exit 3)" and "boom" in rows["bad"]["log_tail"]
    assert rows["slow"]["status"] == "timeout after 1 s" and rows["slow"]["seconds"] < 30
    table = run_all.table(rows).splitlines()
    assert table[2].startswith("| good | step | 1.5 s | ok (")
    assert table[3] == f"| bad | - | - | failed (exit 3) ({rows['bad']['seconds']} s) |"


def test_step_gflop_counts_a_matmul_from_shapes():
    import jax.numpy as jnp

    a = jnp.ones((64, 32), jnp.float32)
    b = jnp.ones((32, 16), jnp.float32)
    # 64 * 32 * 16 multiply-adds; lowered for the CPU from shapes, whatever the device.
    assert _common.step_gflop(lambda x, y: x @ y, a, b) * 1e9 == 2 * 64 * 32 * 16


HLO = """\
HloModule jit_sample

%cb (p.0: f32[4]) -> f32[4] {
  %p.0 = f32[4]{0} parameter(0)
  ROOT %n.1 = f32[4]{0} negate(%p.0)
}

%body (arg: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = f32[4]{0} get-tuple-element(%arg), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%cb
  %g = f32[4]{0} custom-call(%f), custom_call_target="__cublas$gemm"
  %h = f32[4]{0} call(%g), to_apply=%cb
  %w = (s32[], /*index=1*/f32[4]{0}) while(%arg), condition=%cond, body=%inner
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %h)
}

%inner (a: (s32[], f32[4])) -> (s32[], f32[4]) {
  ROOT %a = (s32[], f32[4]{0}) parameter(0)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %w = (s32[], f32[4]{0}) while(%x), condition=%cond, body=%body
  ROOT %r = f32[4]{0} get-tuple-element(%w), index=1
}
"""


def test_hlo_loop_ops_counts_the_main_loop_body():
    loop = _common.hlo_loop_ops(HLO)
    assert loop == {
        "ops": 4,  # fusion, custom-call, call, while; views and the tuple are free
        "by_opcode": {"fusion": 1, "custom-call": 1, "call": 1, "while": 1},
        "custom_call_targets": {"__cublas$gemm": 1},
        "nested_loops": 1,
        "ops_inside_calls": 1,  # the negate of %cb
    }
    assert _common.hlo_loop_ops("HloModule m\n") == {"ops": 0}


def test_bench_accel_refuses_an_interpreter_that_sees_no_accelerator():
    """`make bench-accel`'s script, given this CPU-only interpreter: one error line, exit 1."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, ACCEL_PY=sys.executable, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "bench_accel.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: ACCEL_PY={sys.executable}: no avjax dependencies, or its JAX sees no GPU / TPU"
    ]


def test_every_benchmark_has_quick_and_tiny_modes():
    names = run_all.discover()
    assert names[:5] == [
        "specvqgan_sampling",
        "specvqgan_codebook",
        "sound2sight",
        "mcav",
        "melgan_vocoder",
    ]
    for name in names:
        for mode in ("accel", "cpu", "tiny"):
            args, timeout = run_all.arguments(name, mode)
            assert "--quick" in args and 0 < timeout <= 300
    # An unlisted script still runs, time-bounded.
    assert run_all.arguments("mcav_future", "tiny") == (["--quick", "--tiny"], 120)
    assert run_all.BUDGET_S["accel"] <= 8 * 60


def test_run_all_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_all.main(["--tiny", "--only", "melgan_vocoder", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "run_all.json").read_text())
    row = report["benchmarks"]["melgan_vocoder"]
    assert report["mode"] == "tiny" and row["status"] == "ok" and row["device"] == "cpu:cpu"
    data = json.loads((out / row["results"][0]).read_text())
    assert data["benchmark"] == "melgan_vocoder" and data["results"][0]["samples"] == 16 * 256
    printed = capsys.readouterr().out
    assert "| melgan_vocoder | 16 frames, batch 1, float32 |" in printed
    with pytest.raises(SystemExit):
        run_all.main(["--tiny", "--accel"])  # one mode at a time
    assert run_all.main(["--only", "nope", "--out", str(out)]) == 1
    assert run_all.main(["--accel", "--out", str(out)]) == 1  # JAX sees only the CPU here
    assert "--accel needs a GPU or TPU" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [n for n in run_all.discover() if n != "melgan_vocoder"],  # run above
)
def test_benchmark_runs_in_tiny_mode(tmp_path, name):
    """Each benchmark script end to end at tiny sizes, one test each (xdist spreads them)."""
    out = tmp_path / "run"
    code = run_all.main(["--tiny", "--only", name, "--out", str(out)])
    assert code == 0, (out / "run_all.json").read_text()
    row = json.loads((out / "run_all.json").read_text())["benchmarks"][name]
    assert row["status"] == "ok" and row["summary"] and row["results"]
    if name == "specvqgan_sampling":
        sampling = json.loads((out / name / "specvqgan_sampling_tiny_int8_cpu.json").read_text())
        assert sampling["positions"] == 44 and 0.0 <= sampling["top1_agreement"] <= 1.0
        assert sampling["seconds_per_clip"] > 0
