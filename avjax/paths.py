"""Run directories anywhere Orbax and TensorBoard can write: local folders, `gs://`, `s3://`.

Workdirs are `etils.epath` paths, pathlib's API with URIs kept whole (pathlib turns
`gs://b/run` into `gs:/b/run`), as Orbax uses them. A URI needs the filesystem package
`epath` reads it with: `gcsfs` for `gs://` (or TensorFlow), `s3fs` for `s3://`.
Local-filesystem features apply to local paths only: the one-trainer lock (`flock`), the
"no space left on device" messages, making a path absolute.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike


def user_cache_dir() -> pathlib.Path:
    """avjax's files kept outside any clone: generated default data, the compiled native
    kernels, the JAX compilation cache. `$AVJAX_CACHE`, else `$XDG_CACHE_HOME/avjax`, else
    `~/.cache/avjax`."""
    if os.environ.get("AVJAX_CACHE"):
        return pathlib.Path(os.environ["AVJAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "avjax"


def as_path(path: PathLike) -> epath.Path:
    """`path` (text, pathlib or epath) as an `epath.Path`."""
    return epath.Path(path)


def is_local(path: PathLike) -> bool:
    """Whether `path` is on the local filesystem (no `scheme://`)."""
    return "://" not in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
    """A local path made absolute (links not resolved, as pathlib's); URIs as they are."""
    path = as_path(path)
    return path.absolute() if is_local(path) else path


def write_text_atomic(path: PathLike, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old file or the new one, never a part.

    Locally: a temporary file in the same folder, then `os.replace` (other processes of a
    multi-host run read `config.json` while process 0 writes it). A URI's object is written
    whole by its store anyway.
    """
    if not is_local(path):
        as_path(path).write_text(text)
        return
    path = pathlib.Path(os.fspath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        with open(tmp, "x") as f:  # the usual permissions (umask), unlike mkstemp's 0600
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def local_dir(out: PathLike) -> Iterator[pathlib.Path]:
    """A local folder whose files end up in `out`: `out` itself when local.

    For a URI, a temporary folder whose files are copied to `out` (created if anything was
    written) on leaving, so code that writes files with local-only libraries (PNG, WAV,
    video encoders) works for any workdir.
    """
    if is_local(out):
        yield pathlib.Path(os.fspath(out))
        return
    with tempfile.TemporaryDirectory(prefix="avjax_upload_") as tmp:
        yield pathlib.Path(tmp)
        upload(pathlib.Path(tmp), as_path(out))


def upload(src: pathlib.Path, dst: epath.Path):
    """Copies the files under the local folder `src` to `dst` (any epath), keeping the tree."""
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    for f in files:
        target = dst / f.relative_to(src).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        with f.open("rb") as fin, target.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
