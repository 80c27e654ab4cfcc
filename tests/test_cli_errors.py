"""Bad input is refused before the slow part, in one `error:` line with a non-zero exit.

Every launcher is run in a subprocess on a user mistake (missing or malformed file, bad flag
or config value, empty folder); none of these cases compiles anything. Plus unit tests of
the two checkers behind them: `avjax.audio.validate` (one log-mel check for training and
every launcher) and `avjax.train.validate.check_config`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from avjax.audio import validate as mel_check
from avjax.errors import UserError
from avjax.train.validate import check_config
from configs import sound2sight_m3so_nb, specvqgan_vggsound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/specvqgan_vggsound.py:tiny"


def _files(root):
    """The bad inputs the cases below point at."""
    cb = root / "codebook"  # looks like a codebook run; its checkpoint is never read
    (cb / "checkpoints").mkdir(parents=True)
    (cb / "config.json").write_text(json.dumps({"task": "vqgan"}))
    good = np.full((80, 860), 0.5, np.float32)
    np.save(root / "int_mel.npy", np.ones((80, 860), np.int32))
    np.save(root / "range_mel.npy", np.linspace(-1, 2, 80 * 860, dtype=np.float32).reshape(80, -1))
    np.save(root / "object_mel.npy", np.array([{"mel": 1}], dtype=object), allow_pickle=True)
    np.save(root / "good_mel.npy", good)
    data = (root / "good_mel.npy").read_bytes()
    (root / "truncated_mel.npy").write_bytes(data[: len(data) // 2])
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("no videos here\n")
    (root / "broken").mkdir()
    (root / "broken" / "a.mp4").write_bytes(b"not a video")
    (root / "broken" / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (root / "a_file").write_text("x")
    (root / "broken.py").write_text("def get_config(:\n")
    (root / "data" / "melspec_10s_22050hz").mkdir(parents=True)


# name: (argv after the script, substrings of the error line)
CASES = {
    "codec_int_mel": (
        "codec.py --workdir {cb} --input {r}/int_mel.npy --out {r}/o",
        ["int_mel.npy", "dtype int32"],
    ),
    "codec_range_mel": (
        "codec.py --workdir {cb} --input {r}/range_mel.npy --out {r}/o",
        ["range_mel.npy", "expected [0, 1]"],
    ),
    "codec_object_mel": (
        "codec.py --workdir {cb} --input {r}/object_mel.npy --out {r}/o",
        ["object_mel.npy", "Python objects"],
    ),
    "codec_truncated_mel": (
        "codec.py --workdir {cb} --input {r}/truncated_mel.npy --out {r}/o",
        ["truncated_mel.npy", "truncated"],
    ),
    "codec_missing_input": (
        "codec.py --workdir {cb} --input {r}/nope.wav --out {r}/o",
        ["--input", "nope.wav"],
    ),
    "codec_missing_workdir": (
        "codec.py --workdir {r}/nope --input {r}/good_mel.npy --out {r}/o",
        ["--workdir", "config.json"],
    ),
    "preprocess_empty": (
        "preprocess.py --videos {r}/empty --out {r}/o",
        ["no video found", "empty"],
    ),
    "preprocess_junk": ("preprocess.py --videos {r}/junk --out {r}/o", ["no video found", "junk"]),
    "preprocess_valid_fraction": (
        "preprocess.py --videos {r}/broken --out {r}/o --valid_fraction 1.5",
        ["--valid_fraction=1.5"],
    ),
    "preprocess_out_is_file": (
        "preprocess.py --videos {r}/broken --out {r}/a_file",
        ["--out", "a_file"],
    ),
    "preprocess_s2s_unusable": (
        "preprocess.py --target sound2sight --videos {r}/broken --out {r}/s2s",
        ["none of the 2 video files", "nothing written"],
    ),
    "train_batch_indivisible": (
        f"train.py --config {TINY} --workdir {{r}}/w --config.data.global_batch_size=7",
        ["config.data.global_batch_size=7", "8 devices"],
    ),
    "train_checkpoint_every_0": (
        f"train.py --config {TINY} --workdir {{r}}/w --config.train.checkpoint_every=0",
        ["config.train.checkpoint_every=0"],
    ),
    "train_log_every_0": (
        f"train.py --config {TINY} --workdir {{r}}/w --config.train.log_every=0",
        ["config.train.log_every=0"],
    ),
    "train_num_steps_0": (
        f"train.py --config {TINY} --workdir {{r}}/w --config.train.num_steps=0",
        ["config.train.num_steps=0"],
    ),
    "train_unknown_field": (
        f"train.py --config {TINY} --workdir {{r}}/w --config.x=1",
        ["--config.x", "no field 'x'"],
    ),
    "train_process_id_out_of_range": (
        f"train.py --config {TINY} --workdir {{r}}/w --coordinator_address=localhost:1 "
        "--num_processes=2 --process_id=2",
        ["--process_id=2 is not below --num_processes=2"],
    ),
    "train_missing_config": (
        "train.py --config {r}/nope.py --workdir {r}/w",
        ["--config", "nope.py"],
    ),
    "train_broken_config": (
        "train.py --config {r}/broken.py --workdir {r}/w",
        ["--config", "broken.py:1"],
    ),
    "train_missing_data_dir": (
        "train.py --config configs/specvqgan_vggsound.py --config.data.global_batch_size=8 "
        "--config.data.dir={r}/nope",
        ["config.data.dir", "nope", "not a directory"],
    ),
    "train_data_dir_without_mels": (
        "train.py --config configs/specvqgan_vggsound.py --config.data.global_batch_size=8 "
        "--config.data.dir={r}/empty",
        ["empty", "unknown layout"],
    ),
    "evaluate_missing_workdir": ("evaluate.py --workdir {r}/nope", ["--workdir", "config.json"]),
    "evaluate_num_samples_0": ("evaluate.py --workdir {cb} --num_samples 0", ["--num_samples=0"]),
    "extract_codes_no_checkpoint": (
        "extract_codes.py --codebook_workdir {cb} --data_dir {r}/data",
        ["--codebook_workdir", "no checkpoint steps"],
    ),
    "add_flow_missing_dir": ("add_flow.py --data_dir {r}/nope", ["--data_dir", "nope"]),
    "add_flow_no_clips": (
        "add_flow.py --data_dir {r}/empty",
        ["no prepared clip dataset", "make_m3so.py"],
    ),
    "make_m3so_num_frames": ("make_m3so.py --out {r}/m3 --num_frames 1", ["--num_frames=1"]),
    "make_m3so_missing_mnist": (
        "make_m3so.py --out {r}/m3 --mnist_dir {r}/nope",
        ["--mnist_dir", "nope"],
    ),
    "sample_num_samples_0": (
        "sample.py --workdir {cb} --out {r}/o --num_samples 0",
        ["--num_samples=0"],
    ),
    "sample_not_a_transformer": (
        "sample.py --workdir {cb} --out {r}/o",
        ["--workdir", "not a 'transformer' run"],
    ),
    "sample_seconds_0": (
        "sample.py --workdir {cb} --out {r}/o --seconds 0",
        ["--seconds=0.0 must be positive"],
    ),
    "app_not_a_transformer": ("app.py --workdir {cb}", ["--workdir", "not a 'transformer' run"]),
    "app_port": ("app.py --workdir {cb} --port 70000", ["--port=70000"]),
}


@pytest.fixture(scope="session")
def results(session_shared_dir):
    """Runs every case (two at a time); {name: (returncode, stderr, root)}.

    Once per session for all pytest-xdist workers (the first runs the cases and writes
    results.json, the others read it), as the cases may be split across them.
    """
    with session_shared_dir("cli_errors") as root:
        saved = root / "results.json"
        if not saved.is_file():
            _files(root)
            env = {
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            }

            def run(name):
                args = CASES[name][0].format(r=root, cb=root / "codebook").split()
                cmd = [sys.executable, os.path.join(REPO, "launch", args[0]), *args[1:]]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300
                )
                return name, (proc.returncode, proc.stderr)

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                saved.write_text(json.dumps(dict(pool.map(run, CASES))))
        out = json.loads(saved.read_text())
    return {k: (code, err, root) for k, (code, err) in out.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_error_line(results, name):
    code, stderr, _ = results[name]
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert code != 0, (name, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert last.startswith("error: "), stderr[-2000:]
    for part in CASES[name][1]:
        assert part in last, (part, last)
    assert "allow_pickle" not in stderr


def test_sound2sight_unusable_writes_nothing(results):
    _, stderr, root = results["preprocess_s2s_unusable"]
    assert "skipped a.mp4: " in stderr and "skipped b.mp4: " in stderr  # each file's reason
    assert not (root / "s2s").exists()
    assert not (root / "o").exists()  # the preprocess refusals wrote nothing either


# --------------------------------------------------------------------------- mel validator


def test_mel_validator_accepts_and_casts(tmp_path):
    mel = np.random.default_rng(0).uniform(0, 1, (80, 860))
    np.save(tmp_path / "f64_mel.npy", mel)
    out = mel_check.load_mel(tmp_path / "f64_mel.npy", min_frames=848)
    assert out.dtype == np.float32 and out.shape == (80, 860)
    edge = np.full((80, 20), 1.00005, np.float32)  # within the 1e-4 tolerance: clipped
    assert mel_check.check_mel(edge, "x").max() == 1.0


@pytest.mark.parametrize(
    "array, pattern",
    [
        (np.ones((80, 860), np.int32), "dtype int32"),
        (np.ones((80, 860), np.float16) * 3, r"span \[3, 3\]"),
        (np.full((64, 860), 0.5, np.float32), r"shape \(64, 860\)"),
        (np.full((80, 10), 0.5, np.float32), r"expected \[80, 16\.\.1000\]"),
        (np.full((80, 860, 1), 0.5, np.float32), r"shape \(80, 860, 1\)"),
        (np.full((80, 900), np.nan, np.float32), "non-finite"),
        (np.full((80, 900), -0.5, np.float32), r"expected \[0, 1\]"),
    ],
)
def test_mel_validator_refusals_name_the_file(tmp_path, array, pattern):
    path = tmp_path / "bad_mel.npy"
    np.save(path, array)
    with pytest.raises(UserError, match=pattern) as e:
        mel_check.load_mel(path, min_frames=16, max_frames=1000)
    assert str(e.value).startswith(str(path))


def test_mel_validator_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok.npy", np.zeros((80, 40), np.float32))
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[:200])
    (tmp_path / "text.npy").write_text("hello")
    for name, pattern in [
        ("obj.npy", "Python objects"),
        ("trunc.npy", "truncated"),
        ("text.npy", "not a .npy"),
        ("missing.npy", "cannot read"),
    ]:
        with pytest.raises(UserError, match=pattern) as e:
            mel_check.load_mel(tmp_path / name)
        assert name in str(e.value) and "allow_pickle" not in str(e.value)
    # the training reader refuses exactly the same files
    from data_pipelines import spec_folders

    with pytest.raises(UserError, match="Python objects"):
        spec_folders.load_mel_npy(tmp_path / "obj.npy")


# --------------------------------------------------------------------------- check_config


def test_check_config_passes_the_shipped_configs():
    for cfg in (
        specvqgan_vggsound.get_config(),
        specvqgan_vggsound.get_config("tiny"),
        sound2sight_m3so_nb.get_config(),
    ):
        check_config(cfg, num_devices=1)
    check_config(specvqgan_vggsound.get_config("tiny"), num_devices=8, num_processes=2)


@pytest.mark.parametrize(
    "field, value, devices, pattern",
    [
        ("data.global_batch_size", 7, 8, r"config\.data\.global_batch_size=7 .* 8 devices"),
        ("data.global_batch_size", 0, 1, r"config\.data\.global_batch_size=0"),
        ("train.num_steps", 0, 1, r"config\.train\.num_steps=0"),
        ("train.checkpoint_every", 0, 1, r"config\.train\.checkpoint_every=0"),
        ("train.log_every", 0, 1, r"config\.train\.log_every=0"),
        ("train.keep_checkpoints", 0, 1, r"config\.train\.keep_checkpoints=0"),
        ("train.eval_every", -1, 1, r"config\.train\.eval_every=-1"),
        ("train.sample_every", -5, 1, r"config\.train\.sample_every=-5"),
        ("train.num_steps", 2.5, 1, r"config\.train\.num_steps=2\.5: expected an integer"),
        ("optim.base_lr", 0.0, 1, r"config\.optim\.base_lr=0\.0"),
        ("optim.base_lr", float("nan"), 1, r"config\.optim\.base_lr=nan"),
        ("mesh", (("data", -1), ("fsdp", 3)), 8, r"config\.mesh: 8 devices do not fit"),
        ("mesh", (("data", -1), ("fsdp", -1)), 8, r"config\.mesh: sizes must be"),
    ],
)
def test_check_config_names_the_field(field, value, devices, pattern):
    cfg = ml_collections.ConfigDict(specvqgan_vggsound.get_config("tiny").to_dict())
    node, key = cfg, field
    if "." in field:
        head, key = field.split(".")
        node = cfg[head]
    with cfg.ignore_type():
        node[key] = value
    with pytest.raises(UserError, match=pattern):
        check_config(cfg, num_devices=devices)


def test_check_config_batch_axes_and_processes():
    cfg = specvqgan_vggsound.get_config("tiny").to_dict()
    cfg["mesh"] = (("data", 2), ("fsdp", 2), ("model", 2))  # batch split 4 ways, not 8
    cfg["data"]["global_batch_size"] = 4
    check_config(cfg, num_devices=8)
    cfg["data"]["global_batch_size"] = 6
    with pytest.raises(UserError, match=r"4 devices .*data=2 x fsdp=2"):
        check_config(cfg, num_devices=8)
    cfg["mesh"] = (("data", -1),)
    cfg["data"]["global_batch_size"] = 4
    with pytest.raises(UserError, match="3 processes"):
        check_config(cfg, num_devices=2, num_processes=3)
