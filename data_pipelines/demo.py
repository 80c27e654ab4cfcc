"""Inputs of `make demo`: one embedded clip as a user would bring it (video + features).

The embedded synthetic clips (`data_pipelines.synthetic_audio`) are sounds with per-frame
"visual" features (a class prototype scaled by the clip's loudness at each video frame,
21.5 fps) and, for the validation clips, a 10-s video drawn to match them
(`synthetic_audio.synth_video`: a disc in the class's colour that grows with the loudness
and rises with the pitch, with the clip's own sound). `demo_example()` gives one of them as
the files `launch/sample.py` and `launch/codec.py` take.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from data_pipelines import base, features, synthetic_audio

__all__ = ["DemoExample", "demo_example"]


@dataclasses.dataclass(frozen=True)
class DemoExample:
    """One embedded validation clip as files."""

    clip_id: str  # <class>/<id>, as in vas_valid.txt
    class_name: str
    wav: pathlib.Path  # 10 s, 22050 Hz mono
    mel: pathlib.Path  # [80, 860] in [0, 1]
    features: pathlib.Path  # feature_resnet50_dim2048_21.5fps/<id>.pkl, [215, 2048]
    video: pathlib.Path  # 10 s mp4 at 21.5 fps with the clip's own sound


def demo_example(index: int = 0) -> DemoExample:
    """The `index`-th embedded validation clip as files (made once into the cache).

    Deterministic: the same clip, video and features on every machine.
    """
    from avjax.audio import io as audio_io

    root = base.synthetic_specs_dir()  # as data_pipelines.inputs.demo_videos()
    synthetic_audio.add_synthetic_features(root, "resnet50")
    videos = synthetic_audio.add_synthetic_videos(root, "valid")
    video = videos[index % len(videos)]
    class_name, vid = video.parent.parent.name, video.stem
    mel_dir = root / class_name / "melspec_10s_22050hz"
    wav = base.cache_dir() / "demo" / f"{class_name}_{vid}.wav"
    if not wav.exists():
        wav.parent.mkdir(parents=True, exist_ok=True)
        tmp = wav.with_suffix(".tmp.wav")
        audio_io.write_wav(tmp, np.load(mel_dir / f"{vid}_audio.npy"), synthetic_audio.SR)
        tmp.replace(wav)
    (feats,) = features.video_feature_paths(video, "resnet50")
    return DemoExample(
        f"{class_name}/{vid}", class_name, wav, mel_dir / f"{vid}_mel.npy", feats, video
    )
