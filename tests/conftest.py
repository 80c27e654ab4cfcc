"""Test setup: 8 fake CPU devices, fast compiles and a persistent cache, parsed absl flags.

Environment variables must be set before JAX is imported anywhere, hence module level.
"""

import contextlib
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# Test programs are tiny: compiling dominates, and LLVM's -O0 roughly halves it (the
# Sound2Sight sharded-step test: 127 -> 67 CPU-s). The CLI subprocesses inherit it.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from launch.common import compile_cache_dir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The persistent cache lives outside the clone (see launch.common.compile_cache_dir), so a
# fresh clone on the same machine starts warm; CLI subprocesses inherit the variable.
os.environ.setdefault("AVJAX_JAX_CACHE", compile_cache_dir())
jax.config.update("jax_compilation_cache_dir", os.environ["AVJAX_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

# Grain reads absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Root of ../shared/data (real VAS clips, MNIST); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real sample data not found at {SHARED_DATA} (only present in the dev workspace)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def vas_samples(shared_data) -> pathlib.Path:
    root = shared_data / "vas_samples"
    if not root.is_dir():
        pytest.skip(f"VAS samples not found at {root}")
    return root


# Files with the longest compiles run first, so `-n 2` workers do not end on a long tail.
_HEAVY_FIRST = (
    "test_multiprocess.py",
    "test_train_sound2sight.py",
    "test_mcav_train.py",
    "test_train_vqgan.py",
    "test_first_hour.py",
    "test_benchmarks.py",
    "test_notebook.py",
    "test_cli_errors.py",
    "test_melception.py",
    "test_sample_cli.py",
    "test_melgan.py",
    "test_gpt.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return _HEAVY_FIRST.index(name) if name in _HEAVY_FIRST else len(_HEAVY_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept


def _one_device_env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture
def one_device_env() -> dict[str, str]:
    """The environment of a CLI subprocess: one CPU device, as a user runs it (fast compiles)."""
    return _one_device_env()


# The tiny runs of notebooks/quickstart.py, trained with its exact commands: the notebook
# test and the app test reuse them (the notebook's `train` cells then resume finished runs;
# a different config there would be refused, so the two cannot drift apart silently).
QUICKSTART_STEPS = 8
QUICKSTART_RUNS = (  # Sound2Sight first: it runs beside the codebook -> transformer chain
    ("sound2sight", "configs/sound2sight_m3so_nb.py:tiny", ()),
    ("codebook", "configs/specvqgan_vggsound.py:tiny", ()),
    (
        "transformer",
        "configs/specvqgan_transformer_vggsound.py:tiny",
        ("--config.codebook.workdir={root}/codebook",),
    ),
)


def _finish(name: str, proc, log: pathlib.Path) -> None:
    """Waits for a quickstart training subprocess; its stderr tail if it failed."""
    if proc.wait(timeout=900):
        raise AssertionError(f"training {name} failed:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def session_shared_dir(tmp_path_factory, worker_id):
    """`shared(name)`: a context giving a folder all pytest-xdist workers of the session
    share, held under a file lock.

    For session fixtures that build something once (the first worker builds it inside the
    lock, the others wait and find it), where a module fixture would build it once per
    worker that runs a test of the module.
    """
    import fcntl

    base = tmp_path_factory.getbasetemp()
    top = base.parent if worker_id != "master" else base

    @contextlib.contextmanager
    def shared(name: str):
        root = top / name
        root.mkdir(exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield root

    return shared


@pytest.fixture(scope="session")
def quickstart_runs(session_shared_dir) -> pathlib.Path:
    """Trains the quickstart's tiny codebook, transformer and Sound2Sight runs once.

    One folder for all pytest-xdist workers, so the notebook and app tests pay for training
    once per session. Sound2Sight trains beside the codebook -> transformer chain (the one
    dependency): a worker waiting on the lock waits for the longer of the two, not their sum.
    """
    import subprocess
    import sys

    short = (
        f"--config.train.num_steps={QUICKSTART_STEPS}",
        f"--config.train.checkpoint_every={QUICKSTART_STEPS}",
        "--config.train.eval_every=0",
        "--config.train.sample_every=0",
    )
    with session_shared_dir("quickstart_runs") as root:
        running = []
        for name, config, extra in QUICKSTART_RUNS:
            if (root / name / "checkpoints" / str(QUICKSTART_STEPS)).is_dir():
                continue
            cmd = [sys.executable, "launch/train.py", f"--config={config}"]
            cmd += [f"--workdir={root / name}", *short, *(e.format(root=root) for e in extra)]
            # XLA's default optimisation, as `make notebook` runs them (steps execute
            # faster than at -O0; the warm cache holds the programs either way).
            env = {**_one_device_env(), "XLA_FLAGS": ""}
            log = root / f"{name}.log"  # stderr to a file: a full pipe would block the run
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f)
            if name == "codebook":  # the transformer reads it: finished before it starts
                _finish(name, proc, log)
            else:
                running.append((name, proc, log))
        for name, proc, log in running:
            _finish(name, proc, log)
    return root
