"""Shared launcher set-up: JAX platform, compilation cache, multi-host init, quieter logs."""

import logging
import os
import pathlib
import sys
import traceback

import jax
from absl import app, flags
from ml_collections.config_flags import config_flags

from avjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_bool("verbose", False, "show the traceback of user errors too")


def run(main):
    """`app.run(main)`, printing a `UserError` as one `error: ...` line with exit status 1.

    Other exceptions are bugs and keep their traceback. `--verbose` shows the traceback of
    user errors as well. Flag-parsing mistakes (a bad value, an unknown `--config.x` field,
    a missing or broken config file) are user errors too.
    """

    def guarded(argv):
        try:
            return main(argv)
        except UserError as e:
            _fail(str(e), flags.FLAGS.verbose)

    # A path that is not UTF-8 (surrogate-escaped, PEP 383) prints as \xff, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    app.run(guarded, flags_parser=parse_flags)


def _fail(message: str, verbose: bool):
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags (and loads config files) so that a mistake is one `error:` line, exit 1."""
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True", "-verbose") for a in argv)
    try:
        args = flags.FLAGS(argv)
        for name in list(flags.FLAGS):  # config files load lazily: surface their errors now
            if config_flags.is_config_flag(flags.FLAGS[name]) and flags.FLAGS[name].present:
                # a file that failed to load is a stand-in raising on any attribute access
                getattr(getattr(flags.FLAGS, name), "keys", None)
        return args
    except Exception as e:
        _fail(flag_error_message(e, argv), verbose)


def flag_error_message(e: Exception, argv: list[str]) -> str:
    """One line for an exception raised while parsing flags or loading a config file."""
    if isinstance(e, SyntaxError):
        return f"--config: {e.filename}:{e.lineno}: {e.msg}"
    if isinstance(e, (KeyError, AttributeError)):  # an override of a field the config lacks
        key = str(e.__context__ if isinstance(e.__context__, KeyError) else e).strip("\"'")
        override = next(
            (
                a.split("=", 1)[0]
                for a in argv
                if a.startswith("--")
                and "." in a.split("=", 1)[0]
                and key in a.split("=", 1)[0].split(".")[1:]
            ),
            None,
        )
        where = override or "--config"
        return f"{where}: no field {key!r} in the config (check the spelling)"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if isinstance(e, flags.Error):
        head = lines[0] if lines else str(e)
        if len(lines) > 1 and "Traceback" in str(e):  # a config file's get_config raised
            flag = head.split(":", 1)[0].removeprefix("flag ")
            return f"{flag}: {lines[-1]}"
        if head.startswith("flag "):
            head = head[5:]
        if "must have a value other than None" in head:
            return f"{head.split('=', 1)[0]} is required"
        return head
    if isinstance(e, OSError):  # a missing config file (ml_collections defers the error)
        return f"--config: {lines[-1] if lines else e}"
    return f"flags: {type(e).__name__}: {lines[-1] if lines else e}"


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
