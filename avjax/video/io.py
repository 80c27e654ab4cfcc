"""Video in and out with PyAV (FFmpeg bundled in the wheel; no system ffmpeg).

`read_frames` resamples and resizes inside an FFmpeg filter graph (`fps`, `scale` with
area averaging), the fastest and most faithful route measured (STACK.md section 7).
"""

from __future__ import annotations

import pathlib
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from avjax.audio import io as audio_io


def _open(path: str | pathlib.Path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: not a readable media file ({e.strerror or e})") from e


def read_frames(
    path: str | pathlib.Path, fps: float, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Decodes the video track at `fps` frames per second, optionally resized.

    Args:
      path: any container FFmpeg reads (mp4, avi, mkv, webm...).
      fps: output frame rate (frames are duplicated/dropped as FFmpeg's `fps` filter does).
      size: output (height, width) or a square side; None keeps the source size.

    Returns:
      uint8 RGB frames [T, H, W, 3].
    """
    if isinstance(size, int):
        size = (size, size)
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        chain = [src, graph.add("fps", f"fps={Fraction(fps).limit_denominator(1000)}")]
        if size is not None:
            chain.append(graph.add("scale", f"{size[1]}:{size[0]}:flags=area"))
        chain.append(graph.add("format", "rgb24"))
        chain.append(graph.add("buffersink"))
        graph.link_nodes(*chain).configure()
        frames = []
        try:
            for frame in container.decode(stream):
                graph.push(frame)
                frames.extend(_drain(graph))
            graph.push(None)
            frames.extend(_drain(graph))
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: corrupt video stream ({e})") from e
    if not frames:
        raise ValueError(f"{path}: decoded no video frames")
    return np.stack(frames)


def _drain(graph) -> list[np.ndarray]:
    out = []
    while True:
        try:
            out.append(graph.vpull().to_ndarray())
        except (av.error.BlockingIOError, av.error.EOFError):
            return out


def write_video(
    path: str | pathlib.Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
):
    """Writes uint8 frames [T, H, W, 3] as H.264 mp4, with optional mono audio [N] (AAC).

    Odd frame sizes are padded by one pixel (H.264 with yuv420p needs even sizes).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        a_stream = None
        if audio is not None:
            a_stream = out.add_stream("aac", rate=sample_rate, layout="mono")
        for img in frames:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if a_stream is not None:
            _encode_audio(out, a_stream, audio, sample_rate)


def _encode_audio(container, stream, wave: np.ndarray, sample_rate: int):
    wave = audio_io.fit_full_scale(np.asarray(wave, np.float32).reshape(-1))  # never clipped
    frame_size = 1024
    for start in range(0, len(wave), frame_size):
        chunk = wave[None, start : start + frame_size]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout="mono"
        )
        frame.sample_rate = sample_rate
        frame.pts = start
        for pkt in stream.encode(frame):
            container.mux(pkt)
    for pkt in stream.encode():
        container.mux(pkt)


def replace_audio(
    video_path: str | pathlib.Path,
    wave: np.ndarray,
    sample_rate: int,
    out_path: str | pathlib.Path,
):
    """Copies the video track of `video_path` (no re-encode) and sets `wave` [N] as its audio.

    The output is as long as the shorter of the two, like `ffmpeg -shortest`.
    """
    duration = len(wave) / sample_rate
    with _open(video_path) as src, av.open(str(out_path), "w") as out:
        if not src.streams.video:
            raise ValueError(f"{video_path}: has no video stream")
        v_in = src.streams.video[0]
        v_out = out.add_stream_from_template(v_in)
        a_out = out.add_stream("aac", rate=sample_rate, layout="mono")
        for packet in src.demux(v_in):
            if packet.dts is None:
                continue
            if packet.pts is not None and float(packet.pts * v_in.time_base) >= duration:
                break
            packet.stream = v_out
            out.mux(packet)
        video_seconds = float(v_in.duration * v_in.time_base) if v_in.duration else duration
        n = min(len(wave), round(video_seconds * sample_rate))
        _encode_audio(out, a_out, wave[:n], sample_rate)


def write_gif(path: str | pathlib.Path, frames: np.ndarray, fps: float = 10.0):
    """Writes frames [T, H, W] or [T, H, W, 3] (uint8, or float in [0, 1]) as a looping GIF."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        str(path),
        save_all=True,
        append_images=images[1:],
        duration=max(round(1000 / fps), 20),
        loop=0,
    )
