"""Nothing a user has is lost or silently corrupted: the loop's and checkpoints' fault paths.

A fake one-vector task keeps each run to a fraction of a second. The real SIGTERM (and
SIGKILL) to `launch/train.py` is `tests/test_train_vqgan.py::test_cli_train_kill_sigterm_...`.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import logging as absl_logging

from avjax import checkpoints
from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import loop
from configs import common as config_common

REPO = pathlib.Path(__file__).resolve().parents[1]


class FakeTask:
    """w <- 0.9 w + mean(x) on a vector of `size` floats; hooks run in `write_samples`."""

    def __init__(self, size=64, nan_at=None, on_samples=None):
        self.size, self.nan_at, self.on_samples = size, nan_at, on_samples

    def init(self, rng):
        w = jax.random.normal(rng, (self.size,), jnp.float32)
        return {"params": {"w": w}, "step": jnp.zeros((), jnp.int32)}

    def train_step(self, state, batch):
        step = state["step"] + 1
        w = state["params"]["w"] * 0.9 + jnp.mean(batch["x"])
        if self.nan_at is not None:
            w = jnp.where(step == self.nan_at, jnp.nan, w)
        return {"params": {"w": w}, "step": step}, {"loss": jnp.mean(w**2)}

    def eval_step(self, state, batch):
        return {"loss": jnp.mean(state["params"]["w"] ** 2)}

    def trainable_params(self, state):
        return state["params"]

    def write_samples(self, state, batch, writer, step, out_dir):
        if self.on_samples is not None:
            self.on_samples(step, out_dir)


def _config(num_steps=6, **train):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = [("data", -1)]
    c.model = ml_collections.ConfigDict({"size": 64})
    c.train = config_common.train(
        num_steps,
        log_every=1,
        checkpoint_every=2,
        keep_checkpoints=2,
        eval_every=0,
        eval_batches=1,
        sample_every=0,
    )
    c.train.update(train)
    return c


def _data():
    ds = grain.MapDataset.range(10**6).map(lambda i: {"x": np.full((8, 1), i % 7, np.float32)})
    return iter(ds.to_iter_dataset())


def _run(workdir, config=None, task=None, **kw):
    config = config or _config()
    task = task or FakeTask(size=config.model.size)
    return loop.train(config, workdir, task, _data(), **kw)


def _files(d: pathlib.Path) -> dict:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def _params(workdir, step=None):
    return np.asarray(checkpoints.restore_state(workdir, step)[0]["params"]["w"])


@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    real = absl_logging.warning

    def record(msg, *args, **kw):
        seen.append(msg % args if args else msg)
        real(msg, *args, **kw)

    monkeypatch.setattr(absl_logging, "warning", record)
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-step run: the params every interrupted run must reproduce."""
    work = tmp_path_factory.mktemp("ref") / "run"
    _run(work, _config(8))
    return _params(work)


def test_wrong_config_workdir_is_refused_and_untouched(tmp_path):
    work = tmp_path / "run"
    _run(work, _config(4))
    before = _files(work)
    other = _config(4)
    other.seed, other.model.size = 1, 32
    with pytest.raises(
        UserError, match=r"model\.size: 64 -> 32; seed: 0 -> 1.*--allow_config_chan"
    ):
        _run(work, other)
    assert _files(work) == before  # config.json, checkpoints, even the lock file unchanged

    # Run length and cadences may change on resume.
    last = _run(work, _config(6, log_every=3, checkpoint_every=3))
    assert last["step"] == 6 and '"num_steps": 6' in (work / "config.json").read_text()

    # A deliberate change is allowed; a model of other shapes is still never moved aside.
    with pytest.raises(
        UserError, match=r"holds a different model.*params/w has shape \(64,\) in the checkpoint"
    ):
        _run(work, other, allow_config_change=True)
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["4", "6"]
    seed_only = _config(8)
    seed_only.seed = 1
    assert _run(work, seed_only, allow_config_change=True)["step"] == 8
    assert '"seed": 1' in (work / "config.json").read_text()


def test_fields_added_since_the_run_was_made_are_not_a_config_change(tmp_path):
    """A run made before a field existed resumes (the field's default keeps its behaviour)."""
    work = tmp_path / "run"
    _run(work, _config(2))
    old = json.loads((work / "config.json").read_text())
    del old["train"]["fsdp_min_size"]
    (work / "config.json").write_text(json.dumps(old))
    assert _run(work, _config(4))["step"] == 4
    assert '"fsdp_min_size"' in (work / "config.json").read_text()


def _damage(step_dir: pathlib.Path):
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0" * 7)


def test_damaged_latest_step_is_moved_aside_and_replaced(tmp_path, reference, warnings_seen):
    work = tmp_path / "run"
    _run(work, _config(6))
    ckpts = work / "checkpoints"
    _damage(ckpts / "6")
    last = _run(work, _config(6))
    assert last["step"] == 6 and "train/loss" in last  # steps 5-6 really ran again
    assert any("moved it aside" in w and "6.damaged" in w for w in warnings_seen)
    assert sorted(p.name for p in ckpts.iterdir()) == ["4", "6", "6.damaged"]
    # Rotation (keep 2) never counts the damaged folder, and the result is exact.
    _run(work, _config(8))
    assert sorted(p.name for p in ckpts.iterdir()) == ["6", "6.damaged", "8"]
    np.testing.assert_array_equal(_params(work), reference)

    # Inference falls back the same way, read-only: nothing is renamed.
    _damage(ckpts / "8")
    warnings_seen.clear()
    state, _ = checkpoints.restore_state(work)
    assert int(state["step"]) == 6
    assert len(warnings_seen) == 1, warnings_seen  # one line, no Orbax noise
    assert "step(s) 8 (" in warnings_seen[0] and warnings_seen[0].endswith("using step 6")
    assert (ckpts / "8").is_dir()


def test_nan_state_is_never_saved(tmp_path):
    """NaN at step 3, logged only at 5: the save at step 4 must refuse, naming the leaf."""
    work = tmp_path / "run"
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite values in the train state at step 4 \(\['params'\]\['w'\]\); not "
        r"saved \(the last checkpoint, step 2, is untouched\): lower the learning rate",
    ):
        _run(work, _config(10, log_every=5), FakeTask(nan_at=3))
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2"]
    assert np.isfinite(_params(work)).all()


def test_non_utf8_workdir_refused_before_any_work(tmp_path):
    work = tmp_path / os.fsdecode(b"run_\xff")
    with pytest.raises(UserError, match=r"run_\\xff is not a valid UTF-8 path"):
        _run(work)
    assert not os.path.exists(work)


def test_failing_samples_never_prevent_the_checkpoint(tmp_path, warnings_seen):
    def fail(step, out_dir):
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    work = tmp_path / "run"
    last = _run(work, _config(3, sample_every=1), FakeTask(on_samples=fail))
    assert last["step"] == 3
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "3"]
    assert sum("writing samples of step" in w for w in warnings_seen) == 3


def _enospc_save(self, step, args, force=False):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))


def test_save_failing_with_enospc_is_one_line(tmp_path, monkeypatch):
    """A save that raises ENOSPC (the portable stand-in for a full disk)."""
    work = tmp_path / "run"
    _run(work, _config(2))
    monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "save", _enospc_save)
    with pytest.raises(UserError) as e:
        _run(work, _config(6))
    assert str(e.value) == (
        f"{work.absolute()}/checkpoints: no space left on device while saving step 4; "
        "earlier checkpoints kept (steps [2])"
    )


def _mount_tmpfs(path: pathlib.Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return r.returncode == 0


def test_full_disk_reported_next_step_and_tmp_removed(tmp_path):
    """A real full disk (a 3 MiB tmpfs) fills between the saves of steps 2 and 4."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("mounting a tmpfs needs root and a sandbox that allows mount")
    try:

        def fill(step, out_dir):
            if step == 3:
                while not (work / "checkpoints" / "2").is_dir():  # step 2's save committed
                    time.sleep(0.01)
                with open(disk / "filler", "wb") as f:
                    while True:
                        f.write(b"\1" * 65536)
                        f.flush()

        work = disk / "run"
        task = FakeTask(size=2**18, on_samples=fill)  # 1 MiB of random floats per step
        with pytest.raises(UserError) as e:
            _run(work, _config(10, log_every=100, sample_every=1), task)
        msg = str(e.value)
        assert msg.startswith(f"{work.absolute()}/checkpoints: no space left on device while")
        assert msg.endswith("earlier checkpoints kept (steps [2])") and "\n" not in msg
        assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2"]
        assert int(checkpoints.restore_state(work)[0]["step"]) == 2
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_second_trainer_refused_and_kill9_frees_the_lock(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(work / loop.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"another trainer \(pid {holder.pid}\) is running"):
            _run(work)
        assert not (work / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _run(work)["step"] == 6  # the killed holder left nothing stuck


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_current_step_and_resumes_exactly(tmp_path, reference, sig):
    """SIGTERM (SLURM, preemptible VMs) or Ctrl-C during step 3: step 4 is saved, resumed."""

    def preempt(step, out_dir):
        if step == 3:
            os.kill(os.getpid(), sig)

    work = tmp_path / "run"
    before = signal.getsignal(sig)
    last = _run(
        work, _config(8, checkpoint_every=100, sample_every=1), FakeTask(on_samples=preempt)
    )
    assert last["stopped_by"] == sig.name and last["step"] == 4
    assert signal.getsignal(sig) is before  # handlers restored
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["4"]
    assert _run(work, _config(8, checkpoint_every=100))["step"] == 8
    np.testing.assert_array_equal(_params(work), reference)


def test_the_train_step_refuses_implicit_transfers(tmp_path, monkeypatch):
    """A batch that is not already a global device array is an error, not a silent copy."""
    monkeypatch.setattr(loop.shd, "global_batch", lambda local, mesh: local)  # host numpy
    with pytest.raises(Exception, match=r"(?i)disallowed host-to-device transfer"):
        _run(tmp_path / "run", _config(2))


def test_replicated_arrays_are_saved_without_per_replica_slices(tmp_path, monkeypatch):
    """Orbax's replica-parallel save dispatches one compiled slice per array per replica
    (minutes for a small model's first save on 8 devices); avjax writes slices under 4 MiB
    from one replica. The restored arrays are the saved ones."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from orbax.checkpoint._src.serialization import replica_slices

    calls = []
    real = replica_slices.jax.lax.slice_in_dim
    monkeypatch.setattr(
        replica_slices.jax.lax, "slice_in_dim", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    rep = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    state = {f"w{i}": jax.device_put(jnp.full((8, i + 1), float(i)), rep) for i in range(5)}
    saver = ckpt_lib.Checkpointer(tmp_path / "checkpoints", every=1, keep=1)
    assert saver.maybe_save(1, state)
    saver.wait()
    assert calls == [] and jax.device_count() == 8
    back, step = checkpoints.restore_state(tmp_path)
    assert step == 1
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], np.asarray(v))
