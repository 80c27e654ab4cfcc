"""`make demo`: from nothing to a video whose sound avjax generated, on the embedded clips.

  python launch/demo.py [--workdir workdirs/demo] [--quick]

Every stage is a command a user can type, printed before it runs; they train tiny models
on the embedded synthetic clips (five classes of sounds, with per-frame "visual" features
and a drawn video; nothing is downloaded):

  1. the spectrogram codebook (VQGAN), trained in two runs: the second resumes the first;
  2. a clip to codes and back (`codec.py`: a labelled input/reconstruction picture);
  3. the transformer: visual features -> codes;
  4. the MelGAN vocoder: mel -> waveform;
  5. an embedded clip's video and features -> new sound, put into the video (`sample.py`:
     .mp4 with both streams, .wav, .png);
  6. Sound2Sight: sound and the first frames -> the next frames (a GIF of the truth beside
     the best and other sampled futures).

It ends with the files to open. --workdir (default `workdirs/demo`, gitignored) is
replaced at each run; a folder that is not an earlier demo is refused. Deterministic: the
same commands give the same files on the same machine. --quick shortens every stage (the
tests run it).
"""

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from avjax.errors import UserError  # noqa: E402
from launch import common  # noqa: E402

flags.DEFINE_string("workdir", "workdirs/demo", "where the demo's runs go (replaced)")
flags.DEFINE_bool("quick", False, "a few steps per stage (a smoke test, not a demo)")
FLAGS = flags.FLAGS
MARKER = "DEMO.json"

# Steps per stage: (full demo, --quick).
STEPS = {
    # First run, then resumed to the second number (--quick: one run, no resume).
    "codebook": ((150, 300), (2, 2)),
    "transformer": (400, 2),
    "melgan": (40, 2),
    "sound2sight": (150, 2),
}


def _prepare(workdir: pathlib.Path) -> None:
    """Removes an earlier demo at `workdir`; refuses to touch any other folder."""
    if workdir.exists():
        if not (workdir / MARKER).is_file():
            if workdir.is_dir() and not any(workdir.iterdir()):
                workdir.rmdir()
            else:
                raise UserError(
                    f"--workdir: {workdir} exists and is not an earlier demo (no {MARKER}); "
                    "choose another --workdir"
                )
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text(json.dumps({"started": time.strftime("%F %T")}) + "\n")


class Stages:
    """Runs numbered commands, printing each first; a failure stops the demo."""

    def __init__(self, total: int):
        self.total, self.done, self.times = total, 0, {}

    def run(self, name: str, title: str, *commands: list[str]) -> None:
        """Runs `commands` as stage `name` (for the timing line), announced by `title`."""
        self.done += 1
        print(f"\n== {self.done}/{self.total} {title}", flush=True)
        t0 = time.perf_counter()
        for cmd in commands:
            print("$ python " + " ".join(_quote(a) for a in cmd), flush=True)
            rc = subprocess.call([sys.executable, *cmd], cwd=REPO)
            if rc != 0:
                raise UserError(f"demo stage {self.done} ({title}) failed with exit status {rc}")
        self.times[name] = time.perf_counter() - t0


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " $*?") else arg


def _latest_samples(run: pathlib.Path, pattern: str) -> pathlib.Path | None:
    steps = sorted(
        (int(p.name), p) for p in (run / "samples").glob("*") if p.name.isdigit() and p.is_dir()
    )
    for _, folder in reversed(steps):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def main(argv):
    del argv
    from data_pipelines.demo import demo_example

    t_start = time.perf_counter()
    workdir = pathlib.Path(FLAGS.workdir)
    _prepare(workdir)
    quick = FLAGS.quick
    pick = lambda key: STEPS[key][1 if quick else 0]
    cb1, cb2 = pick("codebook")
    w = lambda name: str(workdir / name)
    example = demo_example()  # the embedded clip as files: wav, features .pkl, video .mp4
    print(
        f"demo clip: {example.clip_id} ({example.class_name}); video {example.video}, "
        f"features {example.features}"
    )
    stages = Stages(6)
    codebook = ["launch/train.py", "--config", "configs/specvqgan_vggsound.py:tiny"]

    def codebook_run(steps: int, log_every: int) -> list[str]:
        return [
            *codebook,
            "--workdir",
            w("codebook"),
            f"--config.train.num_steps={steps}",
            f"--config.train.checkpoint_every={steps}",
            f"--config.train.sample_every={steps}",
            f"--config.train.eval_every={steps}",
            f"--config.train.log_every={max(1, log_every)}",
        ]

    if cb2 > cb1:
        title = f"the spectrogram codebook: {cb1} steps, then resumed to {cb2}"
        stages.run("codebook", title, codebook_run(cb1, cb1 // 5), codebook_run(cb2, cb2 // 10))
    else:
        title = f"the spectrogram codebook: {cb1} steps"
        stages.run("codebook", title, codebook_run(cb1, cb1 // 5))
    stages.run(
        "codec",
        "a clip to codes and back (labelled picture, wav)",
        [
            "launch/codec.py",
            "--workdir",
            w("codebook"),
            "--input",
            str(example.wav),
            "--out",
            w("codec"),
        ],
    )
    n = pick("transformer")
    stages.run(
        "transformer",
        f"the transformer (visual features -> codes): {n} steps",
        [
            "launch/train.py",
            "--config",
            "configs/specvqgan_transformer_vggsound.py:tiny",
            "--workdir",
            w("transformer"),
            f"--config.codebook.workdir={w('codebook')}",
            f"--config.train.num_steps={n}",
            f"--config.train.log_every={max(1, n // 10)}",
            f"--config.train.checkpoint_every={n}",
            f"--config.train.eval_every={n}",
            "--config.train.sample_every=0",
        ],
    )
    n = pick("melgan")
    stages.run(
        "melgan",
        f"the MelGAN vocoder (mel -> waveform): {n} steps",
        [
            "launch/train.py",
            "--config",
            "configs/melgan_vggsound.py:tiny",
            "--workdir",
            w("melgan"),
            f"--config.train.num_steps={n}",
            f"--config.train.log_every={max(1, n // 4)}",
            f"--config.train.checkpoint_every={n}",
            "--config.train.eval_every=0",
            "--config.train.sample_every=0",
        ],
    )
    stages.run(
        "sampling",
        "video -> sound: the clip's video and features to 2 samples of 10 s (.mp4, .wav, .png)",
        [
            "launch/sample.py",
            "--workdir",
            w("transformer"),
            "--video",
            str(example.video),
            "--features",
            str(example.features),
            "--vocoder_workdir",
            w("melgan"),
            "--num_samples",
            "2",
            "--seconds",
            "10",
            "--out",
            w("samples"),
        ],
    )
    n = pick("sound2sight")
    stages.run(
        "sound2sight",
        f"sound -> video: Sound2Sight on embedded moving digits with tones, {n} steps",
        [
            "launch/train.py",
            "--config",
            "configs/sound2sight_m3so_nb.py:tiny",
            "--workdir",
            w("sound2sight"),
            f"--config.train.num_steps={n}",
            f"--config.train.log_every={max(1, n // 5)}",
            f"--config.train.checkpoint_every={n}",
            f"--config.train.sample_every={n}",
            f"--config.train.eval_every={n}",
        ],
    )
    total = time.perf_counter() - t_start
    videos = sorted((workdir / "samples").glob("*_sample_*.mp4"))
    opens = [
        ("video with generated sound", videos[0] if videos else None),
        ("its spectrogram", next(iter(sorted((workdir / "samples").glob("*_sample_0.png"))), None)),
        ("the clip's own video (original sound)", example.video),
        (
            "codebook: input vs reconstruction",
            next(iter(sorted(workdir.glob("codec/*_mel.png"))), None),
        ),
        ("Sound2Sight: truth | best | samples", _latest_samples(workdir / "sound2sight", "*.gif")),
    ]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in stages.times.items())
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime + usage.ru_stime) / 60  # the stages' CPU time, whatever the load
    print(f"\ndemo done in {total / 60:.1f} min, {cpu:.1f} CPU-min ({times})")
    print(f"runs in {workdir}/ (tensorboard --logdir {workdir})")
    print("open:")
    for what, path in opens:
        if path is not None:
            print(f"  {what:40s} {path}")


if __name__ == "__main__":
    common.run(main)
