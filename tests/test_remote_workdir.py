"""Workdirs at a URI (`gs://bucket/run`): training, resume, samples and `load_run` never go
through pathlib (which turns `gs://b` into `gs:/b`) nor local-only calls.

No bucket is reachable from the tests, so `gs://` is served from a local folder: an fsspec
filesystem registered for `gs` (what `etils.epath` uses without TensorFlow), and Orbax's two
GCS-specific calls redirected to it (TensorStore's kvstore spec, the bucket's namespace
query). Everything avjax does with the path is real. A fake task keeps each run to seconds.
"""

import json
import os
import pathlib
import struct

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import register_implementation
from orbax.checkpoint._src.path import gcs_utils

from avjax import checkpoints, paths, runs
from avjax.train import loop
from avjax.train import writer as writer_lib
from configs import common as config_common


class FakeGCS(AbstractFileSystem):
    """`gs://bucket/key` kept at `ROOT/bucket/key`; names come back as `bucket/key`, as
    gcsfs gives them. Each call is a local filesystem's, its paths translated."""

    protocol = ("gs", "gcs")
    root_marker = ""
    root = ""  # set by the fixture

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.local = LocalFileSystem(auto_mkdir=True)

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.rstrip("/")

    def _to(self, path):
        if isinstance(path, list):
            return [self._to(p) for p in path]
        return os.path.join(self.root, self._strip_protocol(path))

    def _from(self, entry):
        if isinstance(entry, dict):
            return {**entry, "name": self._from(entry["name"])}
        return os.path.relpath(entry, self.root)

    def ls(self, path, detail=True, **kwargs):
        return [self._from(e) for e in self.local.ls(self._to(path), detail=detail)]

    def info(self, path, **kwargs):
        return self._from(self.local.info(self._to(path)))

    def glob(self, path, **kwargs):
        return [self._from(p) for p in self.local.glob(self._to(path), **kwargs)]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        found = self.local.find(self._to(path), maxdepth, withdirs, detail)
        if detail:
            return {self._from(k): self._from(v) for k, v in found.items()}
        return [self._from(p) for p in found]

    def walk(self, path, maxdepth=None, topdown=True, on_error="omit", **kwargs):
        for top, dirs, files in self.local.walk(self._to(path), maxdepth, topdown=topdown):
            yield self._from(top), dirs, files

    def _open(self, path, mode="rb", **kwargs):
        return self.local._open(self._to(path), mode, **kwargs)

    def makedirs(self, path, exist_ok=False):
        self.local.makedirs(self._to(path), exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        self.local.mkdir(self._to(path), create_parents)

    def rm(self, path, recursive=False, maxdepth=None):
        self.local.rm(self._to(path), recursive, maxdepth)

    def rmdir(self, path):
        self.local.rmdir(self._to(path))

    def rm_file(self, path):
        self.local.rm_file(self._to(path))

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        self.local.mv(self._to(path1), self._to(path2), recursive=recursive)

    rename = mv

    def cp_file(self, path1, path2, **kwargs):
        self.local.cp_file(self._to(path1), self._to(path2))


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> pathlib.Path:
    """`gs://bucket/...` lives under the returned local folder (`<it>/bucket/...`)."""
    monkeypatch.setattr(FakeGCS, "root", str(tmp_path))
    register_implementation("gs", FakeGCS, clobber=True)
    register_implementation("gcs", FakeGCS, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.clear_instance_cache()

    def kvstore(path):
        name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": os.path.join(str(tmp_path), name, key)}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    yield tmp_path
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


class FakeTask:
    """w <- 0.9 w + mean(x); writes one sample file per sample step."""

    def init(self, rng):
        return {"params": {"w": jax.random.normal(rng, (64,))}, "step": jnp.zeros((), jnp.int32)}

    def train_step(self, state, batch):
        w = state["params"]["w"] * 0.9 + jnp.mean(batch["x"])
        return {"params": {"w": w}, "step": state["step"] + 1}, {"loss": jnp.mean(w**2)}

    def eval_step(self, state, batch):
        return {"loss": jnp.mean(state["params"]["w"] ** 2)}

    def trainable_params(self, state):
        return state["params"]

    def write_samples(self, state, batch, writer, step, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)  # a local-only library would do this
        np.save(out_dir / "w.npy", np.asarray(jax.device_get(state["params"]["w"])))
        writer.image(step, "w", np.zeros((4, 4), np.float32))


def _config(num_steps):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = [("data", -1)]
    c.train = config_common.train(
        num_steps,
        log_every=1,
        checkpoint_every=2,
        keep_checkpoints=2,
        eval_every=0,
        eval_batches=1,
        sample_every=2,
    )
    return c


def _data():
    ds = grain.MapDataset.range(10**6).map(lambda i: {"x": np.full((8, 1), i % 7, np.float32)})
    return iter(ds.to_iter_dataset())


def _events(path: pathlib.Path) -> int:
    """Records in a TensorBoard event file (length-prefixed, CRC-framed)."""
    data, n, i = path.read_bytes(), 0, 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        i += 8 + 4 + length + 4
        n += 1
    assert i == len(data)
    return n


def test_paths_keep_uris_whole():
    assert str(paths.as_path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert str(paths.absolute("gs://b/run")) == "gs://b/run"
    assert str(paths.absolute("rel")) == os.path.join(os.getcwd(), "rel")
    assert paths.is_local("/tmp/x") and paths.is_local("rel") and not paths.is_local("s3://b/k")


def test_write_text_atomic_replaces_whole_files(tmp_path, bucket):
    """A reader sees the old text or the new, never a part (process 1 reads config.json while
    process 0 writes it); no temporary file is left; the usual permissions (umask)."""
    (tmp_path / "run").mkdir()
    local = tmp_path / "run" / "config.json"
    local.write_text("old")
    mode = local.stat().st_mode & 0o777
    paths.write_text_atomic(local, '{"new": 1}')
    assert local.read_text() == '{"new": 1}' and os.listdir(local.parent) == ["config.json"]
    assert local.stat().st_mode & 0o777 == mode
    paths.write_text_atomic("gs://bucket/w/config.json", "x")
    assert (bucket / "bucket" / "w" / "config.json").read_text() == "x"


def test_train_resume_and_load_run_on_a_gs_workdir(bucket, tmp_path_factory):
    uri = "gs://bucket/runs/fake"
    first = loop.train(_config(4), uri, FakeTask(), _data())
    assert first["step"] == 4
    run = bucket / "bucket" / "runs" / "fake"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert json.loads((run / "config.json").read_text())["train"]["num_steps"] == 4
    assert not (run / "train.lock").exists()  # no lock on object stores
    assert (run / "samples" / "4" / "w.npy").is_file()  # staged locally, then uploaded
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and _events(events[0]) >= 1 + 4 + 2  # header, scalars, images

    # Resume: a local run of 6 steps is the reference (same data order, same RNG).
    resumed = loop.train(_config(6), uri, FakeTask(), _data())
    local = tmp_path_factory.mktemp("local") / "run"
    loop.train(_config(6), local, FakeTask(), _data())
    ref = np.asarray(checkpoints.restore_state(local)[0]["params"]["w"])
    state, step = checkpoints.restore_state(uri)
    assert step == 6 and resumed["step"] == 6
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), ref)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # appended across the two runs
    loaded = runs.load_run(uri)
    assert str(loaded.workdir) == uri and loaded.step == 6 and loaded.config.train.num_steps == 6


def test_remote_metrics_file_is_uploaded_whole(bucket):
    jsonl = paths.as_path("gs://bucket/m/metrics.jsonl")
    jsonl.parent.mkdir(parents=True)
    jsonl.write_text('{"step": 1}\n')
    out = writer_lib.RemoteAppend(jsonl, every_s=3600)
    out.write('{"step": 2}\n')
    out.flush()  # within the interval: nothing uploaded yet
    assert (bucket / "bucket" / "m" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    out.close()
    assert (bucket / "bucket" / "m" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
