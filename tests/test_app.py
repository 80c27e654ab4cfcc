"""launch/app.py in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app serves the quickstart's tiny runs on a free port; the page is used as a person
would: a broken upload and an upload without features get one clear line each, then a
video + its feature file give samples whose audio element plays a decodable WAV and whose
MP4 has the generated sound; the Sound2Sight tab gives the predicted frames as a GIF. A
screenshot of the page, `app_screenshot.png`, is written next to the app's files in pytest's
temporary folder (the test prints the path; `pytest -s` shows it).
Chromium comes from `scripts/install_chromium.sh` (`make browser`, run by `.ci/run`); the
test skips, saying so, where it is not installed.
"""

import io
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AVJAX_CHROMIUM") or shutil.which("chromium")
TINY_SAMPLES = 64 * 256  # the :tiny codebook's window: 64 mel frames


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip(
            "Chromium is not installed: run `make browser` (scripts/install_chromium.sh: "
            "apt-get install chromium, needs root)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def app(quickstart_runs, tmp_path_factory, one_device_env):
    """`launch/app.py` on a free port over the quickstart runs; yields (url, out dir, log)."""
    work = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = work / "app.log"
    cmd = [
        sys.executable,
        "launch/app.py",
        f"--workdir={quickstart_runs / 'transformer'}",
        f"--s2s_workdir={quickstart_runs / 'sound2sight'}",
        f"--port={port}",
        f"--out={work / 'out'}",
    ]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=one_device_env, stdout=f, stderr=f)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"app.py exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"app.py did not serve in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url, work, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _upload_clip(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A small mp4 of an embedded clip (the project's video writer) and its feature file."""
    from avjax.video import io as video_io
    from data_pipelines import base
    from data_pipelines import synthetic_audio as synth

    root = base.synthetic_specs_dir()
    synth.add_synthetic_features(root, "resnet50")
    cls, vid = (root / "vas_valid.txt").read_text().split()[2].split("/")
    mel = np.load(root / cls / "melspec_10s_22050hz" / f"{vid}_mel.npy")
    wave = np.load(root / cls / "melspec_10s_22050hz" / f"{vid}_audio.npy")
    video = folder / "my_clip.mp4"
    frames = synth.synth_video(mel, cls, size=64)[:43]  # 2 s
    video_io.write_video(video, frames, 21.5, wave[: 2 * 22050], 22050)
    feats = folder / "my_clip.pkl"
    shutil.copy(root / cls / "feature_resnet50_dim2048_21.5fps" / f"{vid}.pkl", feats)
    return video, feats


def _upload(page, component: str, path: pathlib.Path):
    """Replaces the file of an upload component and waits until the server has it."""
    clear = page.locator(f"{component} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.set_input_files(f"{component} input[type=file]", str(path))
    page.locator(component).get_by_text(path.name).first.wait_for(timeout=30_000)


def _click_and_wait(page, button: str, status: str, pattern: str, timeout_s: float) -> str:
    """Clicks `button`; returns the new text of the Markdown `status` once it matches."""
    text = f"{status} [data-testid=markdown]"
    before = page.inner_text(text)
    page.click(button)
    page.wait_for_function(
        "([sel, pat, before]) => { const el = document.querySelector(sel + ' [data-testid="
        "markdown]'); const t = el ? el.innerText : ''; return t !== before && !document."
        "querySelector(sel + ' .pending') && new RegExp(pat).test(t); }",
        arg=[status, pattern, before],
        timeout=timeout_s * 1000,
    )
    return page.inner_text(text)


# Records every progress message the page shows (they may last less than a poll).
_WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  new MutationObserver(() => document.querySelectorAll('[role=progressbar]').forEach(e => {
    const t = e.getAttribute('aria-valuetext');
    if (t && !window.progressSeen.includes(t)) window.progressSeen.push(t);
  })).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def _fetch(page, url: str) -> bytes:
    """What the page gets for `url` (a blob: URL of the page, or a file the server serves)."""
    data = page.evaluate(
        "async u => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", url
    )
    return bytes(data)


@pytest.mark.slow
def test_app_in_a_browser(app, browser, tmp_path):
    url, work, log = app
    video, feats = _upload_clip(tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []  # the page must not reach past this machine (fonts, analytics, CDNs)

    def local_only(route):
        u = route.request.url
        if u.startswith(("http://127.0.0.1", "blob:", "data:")):
            return route.continue_()
        outside.append(u)
        return route.abort()

    page.route("**/*", local_only)
    page.goto(url)
    page.wait_for_selector("#sample")
    page.evaluate(_WATCH_PROGRESS)
    clip_choice = page.inner_text("#clip")
    assert "clip (16 in the folder)" in clip_choice  # the embedded clips are offered

    # A broken upload: one clear line, no samples.
    _upload(page, "#upload", broken)
    msg = _click_and_wait(page, "#sample", "#status", "error:", 60)
    assert "broken.mp4: not a readable media file" in msg, msg
    assert not page.is_visible("#audio_0")

    # A video without its feature file, for a ResNet-50 run started without weights.
    _upload(page, "#upload", video)
    msg = _click_and_wait(page, "#sample", "#status", "error:", 60)
    assert "my_clip.mp4: no feature file beside it" in msg and "--resnet50_weights" in msg, msg

    # With its features: two samples.
    _upload(page, "#features", feats)
    t0 = time.monotonic()
    msg = _click_and_wait(page, "#sample", "#status", r"sample\(s\)|error:", 240)
    t_sample = time.monotonic() - t0
    assert msg.startswith("2 sample(s) of 0.74 s from my_clip"), msg
    progress = page.evaluate("window.progressSeen")
    assert any(p.startswith("sampling 2 x 320 tokens") for p in progress), progress
    for i in range(2):
        src = page.get_attribute(f"#audio_{i} audio[src]", "src")
        assert src, f"sample {i}: the audio element has no source"
        wave, sr = sf.read(io.BytesIO(_fetch(page, src)))
        assert sr == 22050 and wave.shape == (TINY_SAMPLES,) and np.abs(wave).max() > 1e-3
        # The browser itself decodes it: a duration of one tiny window.
        duration = page.eval_on_selector(
            f"#audio_{i} audio[src]",
            "a => a.readyState >= 1 ? a.duration : new Promise(r => "
            "{ a.onloadedmetadata = () => r(a.duration); a.load(); })",
        )
        assert abs(duration - TINY_SAMPLES / 22050) < 0.05, duration
    links = page.eval_on_selector_all("#files_0 a[download]", "els => els.map(e => e.href)")
    assert sorted(pathlib.Path(h).suffix for h in links) == [".mp4", ".png", ".wav"], links
    mp4 = tmp_path / "downloaded.mp4"
    mp4.write_bytes(_fetch(page, next(h for h in links if h.endswith(".mp4"))))
    with av.open(str(mp4)) as c:
        assert c.streams.video and c.streams.audio and c.streams.audio[0].rate == 22050
        assert abs(float(c.duration / av.time_base) - TINY_SAMPLES / 22050) < 0.1
    png = Image.open(io.BytesIO(_fetch(page, page.get_attribute("#mel_0 img", "src"))))
    assert png.size == (2 * 64, 2 * 80)

    shot = work / "app_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot} (sampling took {t_sample:.1f} s)")
    img = Image.open(shot)
    assert img.format == "PNG" and img.width == 1280 and img.height > 900
    assert np.asarray(img.convert("L")).std() > 10  # a page, not a blank

    # Sound to video: the predicted frames as an animated GIF.
    page.get_by_role("tab", name="Sound to video").click()
    msg = _click_and_wait(page, "#s2s_sample", "#s2s_status", "files in|error:", 240)
    assert msg.startswith("clip test/000000: 5 seen + 10 predicted frames"), msg
    gif = Image.open(io.BytesIO(_fetch(page, page.get_attribute("#s2s_gif img", "src"))))
    assert gif.format == "GIF" and gif.n_frames == 15
    page.screenshot(path=str(work / "app_screenshot_s2s.png"), full_page=True)
    assert not outside, outside
    assert "Traceback" not in log.read_text()
