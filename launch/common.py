"""Shared launcher set-up: JAX platform, compilation cache, multi-host init, quieter logs."""

import dataclasses
import logging
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Mapping, Sequence

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections.config_flags import config_flags

from avjax import paths
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
    """$AVJAX_JAX_CACHE, else `avjax.paths.user_cache_dir()/jax` (`~/.cache/avjax/jax`).

    Outside the clone on purpose: a fresh clone on the same machine (CI) finds the
    programs an earlier checkout compiled.
    """
    return os.environ.get("AVJAX_JAX_CACHE") or str(paths.user_cache_dir() / "jax")


def setup_jax(multihost: bool = False) -> "Multihost | None":
    """Quiet logs, multi-host init (from the `--multihost` flags), then the compilation cache.

    Initialises `jax.distributed` when `multihost` or any of the explicit flags is given
    (launchers that run multi-process call `define_multihost_flags()`); returns what it
    was initialised with, or None.
    """
    quiet_logs()  # before JAX starts its backends (their probing is noise)
    args = None
    if multihost or _multihost_flags_given():
        args = init_multihost(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            local_device_ids=FLAGS.local_device_ids,
            initialization_timeout=FLAGS.initialization_timeout,
        )
    jax.config.update("jax_compilation_cache_dir", compile_cache_dir())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return args


# ------------------------------------------------------------------------- multi-process

FLAGS = flags.FLAGS
ENV_ADDRESS, ENV_COUNT, ENV_ID, ENV_LOCAL = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "JAX_LOCAL_DEVICE_IDS",
)
_EXPLICIT = ("coordinator_address", "num_processes", "process_id")
_DETECT = object()  # resolve_multihost's default: detect the cluster
# jax._src.clusters class name -> what the user knows it as
CLUSTER_NAMES = {
    "OmpiCluster": "Open MPI",
    "SlurmCluster": "SLURM",
    "GceTpuCluster": "TPU VM",
    "GkeTpuCluster": "GKE TPU",
    "K8sCluster": "Kubernetes",
    "Mpi4pyCluster": "mpi4py",
}


def define_multihost_flags():
    """`--multihost` and the `jax.distributed` flags, for launchers that run multi-process."""
    flags.DEFINE_bool(
        "multihost",
        False,
        "initialise jax.distributed: from the flags below, the JAX_* variables, or the TPU VM "
        "/ SLURM / Open MPI environment (any of the flags below implies it)",
    )
    flags.DEFINE_string("coordinator_address", None, f"HOST:PORT of process 0 (or ${ENV_ADDRESS})")
    flags.DEFINE_integer("num_processes", None, f"processes in the job (or ${ENV_COUNT})", 1)
    flags.DEFINE_integer("process_id", None, f"this process, 0..N-1 (or ${ENV_ID})", 0)
    flags.DEFINE_string(
        "local_device_ids",
        None,
        f"devices this process uses, e.g. 0,1 or 'all' (or ${ENV_LOCAL}); default: all, or "
        "one per process under SLURM / Open MPI with several tasks per node",
    )
    flags.DEFINE_integer(
        "initialization_timeout",
        300,
        "seconds to wait for every process to join (raise it on a loaded machine)",
        1,
    )


def _multihost_flags_given() -> bool:
    return "coordinator_address" in FLAGS and any(
        FLAGS[name].present for name in (*_EXPLICIT, "local_device_ids")
    )


@dataclasses.dataclass(frozen=True)
class Multihost:
    """What `jax.distributed.initialize` gets; None fields are left to its cluster detection.

    `local_device_ids`: None (JAX's default), () (every local device) or the ids.
    `source`: where the values came from, for the log line.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    source: str


def _env_int(env: Mapping[str, str], name: str, low: int) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"${name}={text!r}: expected an integer >= {low}") from None
    if value < low:
        raise UserError(f"${name}={value}: must be >= {low}")
    return value


def _device_ids(text: str | None, where: str) -> tuple[int, ...] | None:
    if text is None or text.strip() == "":
        return None
    if text.strip().lower() == "all":
        return ()
    try:
        ids = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UserError(f"{where}={text!r}: expected device ids like 0,1,2,3, or 'all'") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"{where}={text!r}: expected distinct device ids >= 0")
    return ids


def _check_address(address: str, where: str):
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{where}={address!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster environment `jax.distributed.initialize()` would detect, or None.

    Uses JAX's own detectors (`jax._src.clusters`, in JAX's order, opt-in ones skipped):
    TPU VMs and GKE TPU (metadata), SLURM (`SLURM_JOB_ID`, `SLURM_STEP_NODELIST`,
    `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID`), Open MPI (`OMPI_MCA_orte_hnp_uri`),
    Kubernetes. They read `os.environ`; `env`, for tests, replaces it meanwhile.
    """
    try:
        from jax._src import clusters
    except ImportError:  # a JAX without it: let jax.distributed.initialize decide
        return "auto"
    saved = None
    if env is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
    try:
        for cluster in clusters.ClusterEnv._cluster_types:
            if not cluster.opt_in_only_method and cluster.is_env_present():
                return CLUSTER_NAMES.get(cluster.__name__, cluster.__name__)
        return None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)


def _one_task_per_node(cluster: str, env: Mapping[str, str]) -> bool:
    """SLURM / Open MPI running one process per node (then it should see every device)."""
    if cluster == "SLURM":
        tasks, nodes = env.get("SLURM_STEP_NUM_TASKS"), env.get("SLURM_STEP_NUM_NODES")
        return bool(tasks and nodes and tasks == nodes)
    if cluster == "Open MPI":
        return env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == "1"
    return False


def resolve_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: str | None = None,
    env: Mapping[str, str] | None = None,
    cluster: str | object | None = _DETECT,
) -> Multihost:
    """The `jax.distributed.initialize` arguments from flags, `JAX_*` variables or the cluster.

    A flag wins over its variable (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
    `JAX_PROCESS_ID`, `JAX_LOCAL_DEVICE_IDS`). Values neither gives come from the detected
    cluster (TPU VM, SLURM, Open MPI), as `jax.distributed.initialize()` does; under SLURM
    or Open MPI with one task per node every local device is used (JAX alone would give each
    process only the device of its local rank).

    Args:
      coordinator_address, num_processes, process_id, local_device_ids: the flag values
        (None when not given); `local_device_ids` is text ("0,1", "all").
      env: the environment (default `os.environ`).
      cluster: the detected cluster name or None (default: `detect_cluster(env)`).

    Raises:
      UserError naming the flag or variable: a malformed value, `process_id` not below
      `num_processes`, or some of the three explicit values missing with no cluster
      environment to supply the rest.
    """
    env = os.environ if env is None else env
    address = coordinator_address or env.get(ENV_ADDRESS) or None
    address_from = "--coordinator_address" if coordinator_address else f"${ENV_ADDRESS}"
    count = num_processes if num_processes is not None else _env_int(env, ENV_COUNT, 1)
    count_from = "--num_processes" if num_processes is not None else f"${ENV_COUNT}"
    pid = process_id if process_id is not None else _env_int(env, ENV_ID, 0)
    pid_from = "--process_id" if process_id is not None else f"${ENV_ID}"
    if local_device_ids is not None:
        local = _device_ids(local_device_ids, "--local_device_ids")
    else:
        local = _device_ids(env.get(ENV_LOCAL), f"${ENV_LOCAL}")
    if address is not None:
        _check_address(address, address_from)
    if count is not None and count < 1:
        raise UserError(f"{count_from}={count}: must be >= 1")
    if pid is not None and pid < 0:
        raise UserError(f"{pid_from}={pid}: must be >= 0")
    if count is not None and pid is not None and pid >= count:
        raise UserError(
            f"{pid_from}={pid} is not below {count_from}={count}: process ids run 0..{count - 1}"
        )
    given = {
        "--coordinator_address": address,
        "--num_processes": count,
        "--process_id": pid,
    }
    if all(v is not None for v in given.values()):
        return Multihost(address, count, pid, local, "flags / JAX_* variables")
    if cluster is _DETECT:
        cluster = detect_cluster(None if env is os.environ else env)
    if cluster is None:
        missing = [k for k, v in given.items() if v is None]
        if len(missing) == 3:
            raise UserError(
                "--multihost: no TPU VM, SLURM or Open MPI environment detected; pass "
                "--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or set "
                f"{ENV_ADDRESS}, {ENV_COUNT}, {ENV_ID}) on every process"
            )
        raise UserError(
            f"--multihost: {', '.join(missing)} not given (nor {', '.join(_env_of(missing))}) "
            "and no TPU VM, SLURM or Open MPI environment detected to supply it: give all "
            "three of --coordinator_address, --num_processes, --process_id"
        )
    if local is None and _one_task_per_node(cluster, env):
        local = ()
    return Multihost(address, count, pid, local, cluster)


def _env_of(flag_names: Sequence[str]) -> list[str]:
    table = {
        "--coordinator_address": ENV_ADDRESS,
        "--num_processes": ENV_COUNT,
        "--process_id": ENV_ID,
    }
    return [f"${table[f]}" for f in flag_names]


def init_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: str | None = None,
    initialization_timeout: int = 300,
) -> Multihost:
    """`jax.distributed.initialize` with `resolve_multihost`'s arguments; call before any JAX.

    Its argument errors become `UserError`s. A coordinator that cannot be reached within
    `initialization_timeout` seconds (a wrong address, a process never started) aborts the
    process from inside XLA, uncatchable; the line logged just before says what it waited for.
    """
    args = resolve_multihost(coordinator_address, num_processes, process_id, local_device_ids)
    kwargs = {"initialization_timeout": int(initialization_timeout)}
    if args.local_device_ids is not None:
        kwargs["local_device_ids"] = list(args.local_device_ids)
    logging.getLogger("absl").info(
        "jax.distributed (%s): joining %s as process %s of %s; waiting up to %d s "
        "(--initialization_timeout) for every process",
        args.source,
        args.coordinator_address or "the detected coordinator",
        "?" if args.process_id is None else args.process_id,
        "?" if args.num_processes is None else args.num_processes,
        initialization_timeout,
    )
    try:
        jax.distributed.initialize(
            args.coordinator_address, args.num_processes, args.process_id, **kwargs
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"--multihost ({args.source}): {e}") from e
    logging.getLogger("absl").info(
        "jax.distributed (%s): process %d of %d, %d local of %d devices",
        args.source,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return args


_CHATTY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")
# Library messages that read like problems but need no action, at any level:
_NOISE = (
    # JAX probing for a TPU runtime at every start on a machine without one (a GPU
    # backend that fails to start is still reported).
    "Unable to initialize backend 'tpu'",
    # Orbax naming a checkpoint item a read-only load skips on purpose (the data iterator,
    # when codec.py / sample.py / evaluate.py read the weights): the weights restore fine.
    "was found in the checkpoint, but could not be restored",
    # TFDS looking into the temporary folder while an embedded dataset is being built.
    "has no dataset_info.json",
)


def _console_filter(record: logging.LogRecord) -> bool:
    """What reaches the console: our INFO lines, and warnings a user can act on.

    Drops INFO lines from Orbax and TFDS (dozens per checkpoint) and from JAX, and the
    library messages in `_NOISE` at any level.
    """
    if record.levelno < logging.WARNING and (
        record.name.startswith("jax") or any(c in record.pathname for c in _CHATTY)
    ):
        return False
    return not any(n in record.getMessage() for n in _NOISE)


class _ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS message`, with `warning: ` / `error: ` before the message above INFO."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        text = f"{clock} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def quiet_logs() -> None:
    """Short console lines (`_ConsoleFormatter`) and only the messages worth reading.

    Filters absl's handler, which prints every Python logger's records: whatever a filter
    drops is noise, not a hidden error (`_console_filter`). Idempotent.
    """
    handler = absl_logging.get_absl_handler()
    if _console_filter not in handler.filters:
        handler.addFilter(_console_filter)
    handler.setFormatter(_ConsoleFormatter())


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
