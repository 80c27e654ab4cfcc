"""Test setup: 8 fake CPU devices, fast compiles and a persistent cache, parsed absl flags.

Environment variables must be set before JAX is imported anywhere, hence module level.
"""

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
    "test_train_sound2sight.py",
    "test_mcav_train.py",
    "test_train_vqgan.py",
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
