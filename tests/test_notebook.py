"""notebooks/quickstart: its two files agree, and it runs top to bottom on CPU (nbclient).

The executed notebook is written to `<pytest tmp>/quickstart.executed.ipynb` (the test
prints the path); its runs are the session's `quickstart_runs` (trained once with the
notebook's own commands, which then resume them at once).
"""

import base64
import io
import json
import pathlib

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.py"
jupytext = pytest.importorskip("jupytext")


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_the_ipynb_is_the_py_twin():
    """`jupytext --sync` was run: the committed .ipynb has the .py's cells, and no outputs."""
    py = jupytext.read(NOTEBOOK)
    ipynb = jupytext.read(NOTEBOOK.with_suffix(".ipynb"))
    assert _code(py) == _code(ipynb) and len(_code(py)) == 6
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]
    raw = json.loads(NOTEBOOK.with_suffix(".ipynb").read_text())
    assert all(not c.get("outputs") for c in raw["cells"] if c["cell_type"] == "code")
    assert raw["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.slow
def test_quickstart_runs_on_cpu(quickstart_runs, tmp_path_factory, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("AVJAX_QUICKSTART_RUNS", str(quickstart_runs))
    # One device and XLA's default optimisation, as `make notebook` runs it: its cells
    # sample and decode more than they compile, and -O0 code executes slower.
    monkeypatch.setenv("XLA_FLAGS", "")
    nb = jupytext.read(NOTEBOOK)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    try:
        client.execute()
    finally:
        out = tmp_path_factory.mktemp("notebook") / "quickstart.executed.ipynb"
        nbformat.write(nb, out)
        print(f"executed notebook: {out}")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o["data"] for o in outputs if o.output_type == "display_data"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Warning" not in text, text  # no warnings reach the reader

    # Two spectrogram pictures (80 mel bins drawn at 2x) and the animated Sound2Sight grid.
    pngs = [
        Image.open(io.BytesIO(base64.b64decode(d["image/png"]))) for d in data if "image/png" in d
    ]
    assert len(pngs) == 2 and all(p.size == (2 * 64, 2 * 80) for p in pngs)
    gif = Image.open(
        io.BytesIO(base64.b64decode(next(d["image/gif"] for d in data if "image/gif" in d)))
    )
    assert gif.n_frames == 15  # 5 seen + 10 predicted (the :tiny eval length)
    # Audio players: two samples + the Sound2Sight clip's sound; videos: the clip + 2 samples.
    html = [d["text/html"] for d in data if "text/html" in d]
    audios = [h for h in html if "<audio" in h]
    videos = [h for h in html if "<video" in h]
    assert len(audios) == 3 and len(videos) == 3
    wav = base64.b64decode(audios[0].split("base64,")[1].split('"')[0])
    wave, sr = sf.read(io.BytesIO(wav))
    assert sr == 22050 and wave.shape == (64 * 256,) and np.abs(wave).max() > 0.1

    # The files it says it wrote: the sample's video carries the generated sound.
    outs = quickstart_runs / "outputs"
    mp4s = sorted(outs.glob("*_sample_*.mp4"))
    assert len(mp4s) == 2, sorted(outs.iterdir())
    with av.open(str(mp4s[0])) as c:
        assert c.streams.video and c.streams.audio and c.streams.audio[0].rate == 22050
    assert str(mp4s[0]) in text
