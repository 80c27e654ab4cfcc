"""Shared launcher set-up: JAX platform, compilation cache, multi-host init, quieter logs."""

import logging
import os
import pathlib
import sys
import traceback

import jax
from absl import app, flags

from avjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_bool("verbose", False, "show the traceback of user errors too")


def run(main):
    """`app.run(main)`, printing a `UserError` as one `error: ...` line with exit status 1.

    Other exceptions are bugs and keep their traceback. `--verbose` shows the traceback of
    user errors as well.
    """

    def guarded(argv):
        try:
            return main(argv)
        except UserError as e:
            if flags.FLAGS.verbose:
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)

    app.run(guarded)


def compile_cache_dir() -> str:
    """$AVJAX_JAX_CACHE, else `$XDG_CACHE_HOME/avjax/jax` (`~/.cache/avjax/jax`).

    Outside the clone on purpose: a fresh clone on the same machine (CI) finds the
    programs an earlier checkout compiled.
    """
    if os.environ.get("AVJAX_JAX_CACHE"):
        return os.environ["AVJAX_JAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "avjax", "jax")


def setup_jax(multihost: bool = False):
    """Multi-host init first, then the persistent compilation cache ($AVJAX_JAX_CACHE)."""
    if multihost:
        jax.distributed.initialize()
    jax.config.update("jax_compilation_cache_dir", compile_cache_dir())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.getLogger("absl").addFilter(_quiet_library_info)


_CHATTY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")


def _quiet_library_info(record: logging.LogRecord) -> bool:
    """Drops INFO lines from Orbax and TFDS (dozens per checkpoint); keeps warnings."""
    return record.levelno >= logging.WARNING or not any(c in record.pathname for c in _CHATTY)


def default_workdir(argv) -> pathlib.Path:
    """workdirs/<config file stem>[_<arg>] for a --config=path[:arg] in argv."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        else:
            continue
        path, _, arg = spec.partition(":")
        return REPO / "workdirs" / (pathlib.Path(path).stem + (f"_{arg}" if arg else ""))
    return REPO / "workdirs" / "run"
