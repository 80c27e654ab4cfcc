"""A local web app: video to sound (SpecVQGAN) and sound to video (Sound2Sight).

  python launch/app.py --workdir W [--s2s_workdir W2] [--port 7860]
      [--clips DIR] [--vocoder_workdir V] [--resnet50_weights r50.pth] [--out DIR]

Serves http://127.0.0.1:PORT/ (this machine only). W is a transformer run (as for
`launch/sample.py`), W2 a Sound2Sight run. In the browser:
  * Video to sound: pick a clip from --clips (default: the run's data folder, or the
    embedded clips for a `:tiny` run) or upload a video (and, for a feature-conditioned run
    without --resnet50_weights, its feature .pkl); choose the number of samples, top-k,
    temperature and seconds; each sample shows its spectrogram, plays its audio and the
    video with the new sound, and offers the files (.wav, .png, .mp4) for download.
  * Sound to video (with --s2s_workdir): pick a clip of the run's evaluation split; the
    predicted frames play as a GIF (ground truth | best of N | samples; green border = seen,
    red = predicted) and as an MP4 with the clip's sound, both downloadable.
Every request writes its files under --out (default W/app/<time>_<clip>/). A bad upload or
setting answers with one line saying what to change; long work shows a progress bar.

Why Gradio (not Streamlit, which the official SpecVQGAN demo used): Gradio is what model
demos are built with today (Hugging Face Spaces), and its components are exactly this app's
needs (video, audio and image outputs, file uploads and downloads, a progress bar per
request); handlers are plain functions called once per click, so the models load once at
start and no script re-runs on every widget change; and its page is plain HTML that a
headless browser drives in the tests (`tests/test_app.py`). Nothing is fetched from the
internet: analytics are off and the theme uses the system's fonts.
"""

import logging
import math
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
from absl import flags

from avjax.errors import UserError
from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "SpecVQGAN transformer run (video to sound)")
flags.DEFINE_string("s2s_workdir", None, "Sound2Sight run (sound to video), optional")
flags.DEFINE_integer("port", 7860, "port on 127.0.0.1")
flags.DEFINE_string("host", "127.0.0.1", "address to listen on (0.0.0.0 exposes the app)")
flags.DEFINE_string("clips", None, "folder of videos to pick from (default: the run's data)")
flags.DEFINE_string("codebook_workdir", None, "override the codebook the run's config names")
flags.DEFINE_string(
    "vocoder_workdir", None, "MelGAN run or official generator (default: Griffin-Lim)"
)
flags.DEFINE_string("resnet50_weights", None, "torchvision ResNet-50 state dict (.pth/.npz)")
flags.DEFINE_string("out", None, "where requests write their files (default: W/app)")
flags.mark_flags_as_required(["workdir"])

FPS = 21.5
MAX_SAMPLES = 4
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")
MAX_CLIPS = 500


def find_videos(folder: pathlib.Path) -> list[pathlib.Path]:
    """Video files under `folder` (recursive, sorted), at most MAX_CLIPS."""
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    return found[:MAX_CLIPS]


def request_dir(out: pathlib.Path, name: str) -> pathlib.Path:
    """A new folder for one request: OUT/<yyyymmdd-hhmmss>_<name>[_<n>]."""
    base = out / f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}_{n}"), n + 1
    path.mkdir(parents=True)
    return path


class VideoToSound:
    """A transformer run, its codebook and a vocoder: clip -> N generated sounds."""

    def __init__(self, workdir, codebook_workdir, vocoder_workdir, resnet50_weights, out, clips):
        from avjax.audio.vocoder import load_vocoder
        from avjax.models.specvqgan.video2sound import Video2Sound
        from avjax.runs import read_config
        from data_pipelines import features as F

        try:
            self.config = read_config(workdir, "transformer")
        except UserError as e:
            raise UserError(f"--workdir: {e}") from None
        self.spec = F.FeatureSpec.from_config(self.config)
        if self.config.model.get("num_classes", 0):
            raise UserError(f"--workdir: {workdir} is class-conditioned; the app takes no label")
        try:
            self.v2s = Video2Sound.from_workdir(workdir, codebook_workdir)
            self.vocoder = load_vocoder(vocoder_workdir)
        except (OSError, ValueError) as e:
            raise UserError(str(e)) from None
        self.extractor = None
        if resnet50_weights:
            from avjax.models.resnet_features import resnet50_features

            self.extractor = lambda video: resnet50_features(video, resnet50_weights, FPS)
        self.out = pathlib.Path(out)
        self.clips = list(clips)
        self._compiled = set()

    @property
    def vocab_size(self) -> int:
        return self.v2s.model.vocab_size

    @property
    def clips_root(self) -> pathlib.Path | None:
        """The folder holding every clip (served to the page for the previews)."""
        if not self.clips:
            return None
        return pathlib.Path(os.path.commonpath([str(c.parent.resolve()) for c in self.clips]))

    def clip_labels(self) -> list[str]:
        root = self.clips_root
        return [str(c.resolve().relative_to(root)) for c in self.clips]

    def run(
        self,
        video,
        features,
        num_samples: int,
        top_k: int,
        temperature: float,
        seconds: float,
        seed: int,
        progress,
    ) -> tuple[str, list[dict[str, pathlib.Path]]]:
        """Samples sounds for one clip; returns (what was done, per sample {"wav", "png", "mp4"}).

        Raises:
          UserError: an unreadable video or feature file, or settings out of range.
        """
        import jax

        from avjax.samples import write_audio_sample
        from avjax.video import io as video_io
        from data_pipelines import features as F

        if not 1 <= num_samples <= MAX_SAMPLES:
            raise UserError(f"number of samples {num_samples}: choose 1 to {MAX_SAMPLES}")
        if not 0 <= top_k <= self.vocab_size:
            raise UserError(f"top-k {top_k}: choose 0 (all) to {self.vocab_size}")
        if not temperature > 0:
            raise UserError(f"temperature {temperature}: must be positive")
        if not seconds > 0:
            raise UserError(f"seconds {seconds}: must be positive")
        if video is None and features is None and self.spec.kind != "none":
            raise UserError("pick a clip or upload a video")
        progress(0.05, desc="reading the clip")
        try:
            if video is not None:
                video_io.read_frames(video, 1.0, 8)  # a broken upload stops here
            streams = F.visual_streams(self.spec, features, None, video, self.extractor)
            v2s = self.v2s
            columns = v2s.num_columns(seconds)
            feats = F.condition(
                streams, self.spec, columns, v2s.window_columns, seed, v2s.feature_frames_per_column
            )
        except (OSError, ValueError) as e:
            raise UserError(str(e)) from None
        key = (num_samples, columns)
        first = "" if key in self._compiled else " (the first request of this size compiles)"
        progress(0.15, desc=f"sampling {num_samples} x {self.v2s.rows * columns} tokens{first}")
        t0 = time.perf_counter()
        codes = self.v2s.sample_codes(
            feats[None] if self.spec.dim else None,
            jax.random.PRNGKey(int(seed)),
            num_samples=num_samples,
            num_columns=columns,
            temperature=float(temperature),
            top_k=int(top_k),
        )
        self._compiled.add(key)
        t_sample = time.perf_counter() - t0
        progress(0.6, desc="decoding the spectrograms")
        mels = self.v2s.decode(codes)
        progress(0.7, desc=f"vocoding ({self.vocoder.name})")
        waves = np.asarray(self.vocoder(mels))
        name = pathlib.Path(video or features or "no_feats").stem
        folder = request_dir(self.out, name)
        files = []
        for i, (mel, wave) in enumerate(zip(mels, waves)):
            progress(0.8 + 0.2 * i / len(mels), desc=f"writing sample {i + 1}")
            stem = folder / f"{name}_sample_{i}"
            files.append(write_audio_sample(stem, mel, wave, self.vocoder.sample_rate, video))
        secs = waves.shape[1] / self.vocoder.sample_rate
        status = (
            f"{num_samples} sample(s) of {secs:.2f} s from `{name}` (sampling {t_sample:.2f} s, "
            f"vocoder: {self.vocoder.name}); files in `{folder}`"
        )
        return status, files


def clip_id(example) -> str:
    """The `id` of a stored clip as text (TFDS Text features come back as bytes)."""
    i = example["id"]
    return i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i)


class SoundToVideo:
    """A Sound2Sight run and its evaluation clips: clip -> predicted frames."""

    def __init__(self, workdir, out):
        from avjax.runs import load_run
        from avjax.train.tasks.sound2sight import Sound2SightTask
        from data_pipelines import video_inputs

        try:
            self.run_ = load_run(workdir, "sound2sight")
            self.task = Sound2SightTask.from_config(self.run_.config)
            self.clips = video_inputs.open_eval_clips(self.run_.config)
        except (OSError, ValueError) as e:  # UserError included
            raise UserError(f"--s2s_workdir: {e}") from None
        d = self.run_.config.data
        self.n_past, self.length, self.fps = d.n_past, d.n_past + d.n_eval, float(d.fps)
        self.out = pathlib.Path(out)
        self._compiled = set()

    def names(self) -> list[str]:
        return [f"{i}: {clip_id(self.clips.example(i))}" for i in range(len(self.clips))]

    def run(self, index: int, num_samples: int, seed: int, progress):
        """Predicts frames of clip `index`; returns (what was done, {"gif", "mp4", "wav"})."""
        import jax

        from avjax.audio import io as audio_io
        from avjax.samples import for_aac, write_frames_sample

        if not 0 <= index < len(self.clips):
            raise UserError(f"clip {index}: choose 0 to {len(self.clips) - 1}")
        if not 1 <= num_samples <= 16:
            raise UserError(f"number of samples {num_samples}: choose 1 to 16")
        progress(0.05, desc="reading the clip")
        ex = self.clips.example(index)
        t = self.length
        frames = np.asarray(ex["frames"], np.uint8)[None, :t]
        audio = np.asarray(ex["audio"], np.float32)[None, :t]
        first = "" if num_samples in self._compiled else " (the first request compiles)"
        progress(0.2, desc=f"sampling {num_samples} futures of {t - self.n_past} frames{first}")
        t0 = time.perf_counter()
        grid, best = self.task.sample_grid(
            self.run_.state, frames, audio, jax.random.PRNGKey(int(seed)), num_samples
        )
        self._compiled.add(num_samples)
        t_sample = time.perf_counter() - t0
        progress(0.8, desc="writing the GIF and MP4")
        wave = np.asarray(ex["waveform"], np.float32)
        rate = round(len(wave) * self.fps / len(ex["frames"]))  # samples per second
        wave = wave[: round(t / self.fps * rate)]
        name = clip_id(ex).replace("/", "_")
        folder = request_dir(self.out, name)
        files = write_frames_sample(folder / f"{name}_predicted", grid, self.fps, wave, rate, 3)
        files["wav"] = folder / f"{name}_sound.wav"
        audio_io.write_wav(files["wav"], *for_aac(wave, rate))
        status = (
            f"clip `{clip_id(ex)}`: {self.n_past} seen + {t - self.n_past} predicted frames, "
            f"{num_samples} sample(s) in {t_sample:.2f} s; columns: ground truth | best of "
            f"{num_samples} (sample {int(best[0])}) | samples; files in `{folder}`"
        )
        return status, files


def build_ui(v2s: VideoToSound, s2v: SoundToVideo | None):
    """The Gradio page: one tab per direction."""
    import gradio as gr

    def fail(message: str) -> str:
        return f"**error:** {message}"

    def sound_outputs(status, files):
        updates = [status]
        for i in range(MAX_SAMPLES):
            f = files[i] if i < len(files) else None
            updates += [
                gr.update(visible=f is not None),
                gr.update(value=str(f["png"]) if f else None),
                gr.update(value=str(f["wav"]) if f else None),
                gr.update(
                    value=str(f["mp4"]) if f and "mp4" in f else None,
                    visible=bool(f and "mp4" in f),
                ),
                gr.update(value=[str(p) for p in f.values()] if f else None),
            ]
        return updates

    def on_sample(
        clip,
        upload,
        feats,
        num_samples,
        top_k,
        temperature,
        seconds,
        seed,
        progress=gr.Progress(),  # noqa: B008 (Gradio's way)
    ):
        video = upload or (str(v2s.clips[clip]) if clip is not None and v2s.clips else None)
        try:
            status, files = v2s.run(
                video,
                feats,
                int(num_samples),
                int(top_k),
                float(temperature),
                float(seconds),
                int(seed or 0),
                progress,
            )
        except UserError as e:
            message = str(e)
            for path in (upload, feats):  # uploads live in a temporary folder: name them only
                if path:
                    message = message.replace(str(path), pathlib.Path(path).name)
            return sound_outputs(fail(message), [])
        return sound_outputs(status, files)

    def on_pick(clip, upload):
        """The preview: the uploaded video, else the picked clip."""
        if upload:
            return upload
        if clip is None or not v2s.clips:
            return None
        return str(v2s.clips[clip])

    font = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    with gr.Blocks(title="avjax") as demo:
        gr.Markdown(
            "# avjax: video to sound and sound to video\n"
            f"Transformer run `{FLAGS.workdir}` ({v2s.spec.kind} features, "
            f"{v2s.v2s.window_seconds:.2f} s windows), vocoder: {v2s.vocoder.name}."
        )
        with gr.Tab("Video to sound"):
            with gr.Row():
                with gr.Column():
                    choices = [(label, i) for i, label in enumerate(v2s.clip_labels())]
                    clip = gr.Dropdown(
                        choices=choices,
                        value=0 if choices else None,
                        label=f"clip ({len(choices)} in the folder)",
                        elem_id="clip",
                    )
                    preview = gr.Video(
                        label="the video (the upload, else the clip)",
                        interactive=False,
                        height=240,
                        elem_id="preview",
                    )
                    upload = gr.File(
                        label="or upload a video (used instead of the clip)",
                        type="filepath",
                        elem_id="upload",
                    )
                    feats = gr.File(
                        label=f"its {v2s.spec.kind} feature file (.pkl), if it has one",
                        type="filepath",
                        elem_id="features",
                    )
                with gr.Column():
                    num = gr.Slider(
                        1, MAX_SAMPLES, value=2, step=1, label="samples", elem_id="num_samples"
                    )
                    d = v2s.v2s.sampling_defaults
                    top_k = gr.Slider(
                        0,
                        v2s.vocab_size,
                        value=int(d.get("top_k", 0)),
                        step=1,
                        label="top-k (0: all codes)",
                        elem_id="top_k",
                    )
                    temp = gr.Slider(
                        0.1,
                        3.0,
                        value=float(d.get("temperature", 1.0)),
                        step=0.05,
                        label="temperature",
                        elem_id="temperature",
                    )
                    secs = gr.Slider(
                        0.1,
                        30.0,
                        value=math.ceil(v2s.v2s.window_seconds * 100) / 100,  # one window
                        step=0.01,
                        label="seconds (longer than one window slides it)",
                        elem_id="seconds",
                    )
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    go = gr.Button("Sample", variant="primary", elem_id="sample")
            status = gr.Markdown(elem_id="status")
            slots = []
            for i in range(MAX_SAMPLES):
                with gr.Group(visible=False) as group:
                    with gr.Row(equal_height=True):
                        img = gr.Image(
                            label=f"sample {i + 1}: log-mel (low frequencies at the bottom)",
                            type="filepath",
                            height=200,
                            elem_id=f"mel_{i}",
                        )
                        aud = gr.Audio(
                            label=f"sample {i + 1}: sound", type="filepath", elem_id=f"audio_{i}"
                        )
                        vid = gr.Video(
                            label=f"sample {i + 1}: the video with this sound",
                            height=200,
                            elem_id=f"video_{i}",
                        )
                    files = gr.File(
                        label=f"sample {i + 1}: download",
                        file_count="multiple",
                        elem_id=f"files_{i}",
                    )
                slots += [group, img, aud, vid, files]
            for event in (clip.change, upload.change, demo.load):
                event(on_pick, [clip, upload], preview)
            go.click(
                on_sample,
                [clip, upload, feats, num, top_k, temp, secs, seed],
                [status, *slots],
                show_progress="full",
            )
        if s2v is not None:
            with gr.Tab("Sound to video"):
                names = s2v.names()
                gr.Markdown(
                    f"Sound2Sight run `{FLAGS.s2s_workdir}`: {s2v.n_past} seen frames, then "
                    f"{s2v.length - s2v.n_past} predicted from the sound."
                )
                with gr.Row():
                    s_clip = gr.Dropdown(
                        choices=[(n, i) for i, n in enumerate(names)],
                        value=0,
                        label=f"clip ({len(names)} in the split)",
                        elem_id="s2s_clip",
                    )
                    s_num = gr.Slider(
                        1, 16, value=4, step=1, label="samples", elem_id="s2s_num_samples"
                    )
                    s_seed = gr.Number(value=0, precision=0, label="seed", elem_id="s2s_seed")
                s_go = gr.Button("Predict frames", variant="primary", elem_id="s2s_sample")
                s_status = gr.Markdown(elem_id="s2s_status")
                with gr.Row():
                    s_gif = gr.Image(
                        label="ground truth | best | samples", type="filepath", elem_id="s2s_gif"
                    )
                    with gr.Column():
                        s_mp4 = gr.Video(label="as video, with the clip's sound", elem_id="s2s_mp4")
                        s_wav = gr.Audio(
                            label="the clip's sound", type="filepath", elem_id="s2s_audio"
                        )
                s_files = gr.File(label="download", file_count="multiple", elem_id="s2s_files")

                def on_predict(index, n, sd, progress=gr.Progress()):  # noqa: B008
                    try:
                        msg, f = s2v.run(int(index), int(n), int(sd or 0), progress)
                    except UserError as e:
                        return fail(str(e)), None, None, None, None
                    paths = [str(p) for p in f.values()]
                    return msg, str(f["gif"]), str(f["mp4"]), str(f["wav"]), paths

                s_go.click(
                    on_predict,
                    [s_clip, s_num, s_seed],
                    [s_status, s_gif, s_mp4, s_wav, s_files],
                    show_progress="full",
                )
    return demo, font


def clip_list(config) -> list[pathlib.Path]:
    """--clips, else the videos of the run's data folder, else the embedded clips."""
    if FLAGS.clips:
        folder = pathlib.Path(FLAGS.clips)
        if not folder.is_dir():
            raise UserError(f"--clips: {folder} is not a directory")
        found = find_videos(folder)
        if not found:
            raise UserError(f"--clips: no videos ({', '.join(VIDEO_SUFFIXES)}) under {folder}")
        return found
    if config.data.get("dir"):
        folder = pathlib.Path(config.data.dir)
        return find_videos(folder) if folder.is_dir() else []
    if config.data.get("synthetic"):
        from data_pipelines.inputs import demo_videos

        return demo_videos()
    return []


def main(argv):
    del argv
    common.setup_jax()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks
    if not 0 < FLAGS.port < 65536:
        raise UserError(f"--port={FLAGS.port}: choose 1 to 65535")
    workdir = pathlib.Path(FLAGS.workdir)
    out = pathlib.Path(FLAGS.out) if FLAGS.out else workdir / "app"
    print(f"loading {workdir} ...", flush=True)
    v2s = VideoToSound(
        workdir, FLAGS.codebook_workdir, FLAGS.vocoder_workdir, FLAGS.resnet50_weights, out, []
    )
    v2s.clips = clip_list(v2s.config)
    print(f"{len(v2s.clips)} clips to pick from" + (f" in {v2s.clips_root}" if v2s.clips else ""))
    s2v = SoundToVideo(FLAGS.s2s_workdir, out) if FLAGS.s2s_workdir else None
    out.mkdir(parents=True, exist_ok=True)
    demo, theme = build_ui(v2s, s2v)
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(
            server_name=FLAGS.host,
            server_port=FLAGS.port,
            allowed_paths=[str(out.resolve())] + ([str(v2s.clips_root)] if v2s.clips else []),
            theme=theme,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            max_file_size="500mb",
        )
    except OSError as e:
        raise UserError(f"--port={FLAGS.port}: {e}") from None
    print(
        f"serving on http://{FLAGS.host}:{FLAGS.port}/ (Ctrl-C to stop); files in {out}", flush=True
    )
    demo.block_thread()  # until Ctrl-C


if __name__ == "__main__":
    common.run(main)
