"""Runs `launch/train.py`'s main as process I of N over localhost (the multi-process tests).

  python tests/multihost_harness.py PORT I N DEVICES -- [launch/train.py flags]

Each process gets DEVICES fake CPU devices and CPU collectives (gloo), and initialises
`jax.distributed` itself with the coordinator on localhost:PORT (N = 1: no distributed
set-up), so the launcher's own multi-host flags are not involved. With N > 1 the
collectives' time-outs are raised, and every process of a run shares one persistent
compilation cache: by default `multiprocess_cache_dir()`, which only multi-process runs write,
never the suite's shared cache, where one process could find programs (written by a
one-process run) the other must compile, race ahead, and leave the CPU collectives' set-up to
give up between them. A cache only multi-process runs write is symmetric: each process
compiles its programs on a first run and finds them on later ones (a resume, the next
session of the suite), since each writes its own entries
(`_write_cache_entries_from_this_process`). `run_processes` starts the N processes and waits
for them with a time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # collectives set-up and stragglers on a loaded 2-core machine
CONFIG_UPDATE = "AVJAX_TEST_CONFIG_UPDATE"
CACHE = "AVJAX_TEST_RUN_CACHE"


def multiprocess_cache_dir() -> str:
    """The compilation cache of multi-process runs: the suite's with a `_multiprocess` suffix.

    Persistent like the suite's (`launch.common.compile_cache_dir`), so a warm machine (CI)
    finds the two-process programs too.
    """
    from launch.common import compile_cache_dir

    return compile_cache_dir().rstrip(os.sep) + "_multiprocess"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _xla_flags(devices: int) -> str:
    kept = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    return " ".join(
        [
            *kept,
            f"--xla_force_host_platform_device_count={devices}",
            f"--xla_cpu_collective_timeout_seconds={TIMEOUT_S}",
            f"--xla_cpu_collective_call_terminate_timeout_seconds={TIMEOUT_S}",
        ]
    )


def run_processes(
    num_processes: int,
    devices: int,
    args: list[str],
    config_update: dict | None = None,
    timeout: float = TIMEOUT_S,
    cache_dir: str | os.PathLike | None = None,
) -> list[subprocess.CompletedProcess]:
    """Runs `launch/train.py args` as `num_processes` processes; their completed results.

    `config_update` ({field: value}, dicts become sections) is set on the parsed config
    before training: fields a locked config cannot take from the command line, such as
    `evals`. `cache_dir`: the compilation cache of every process (default:
    `multiprocess_cache_dir()` with several processes, the suite's with one). All processes
    are killed when one fails or the time limit passes (so a hung collective never blocks
    the suite).
    """
    port = free_port()
    if cache_dir is None and num_processes > 1:
        cache_dir = multiprocess_cache_dir()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": _xla_flags(devices),
        CONFIG_UPDATE: json.dumps(config_update or {}),
        CACHE: os.fspath(cache_dir or ""),
    }
    if cache_dir:
        env["AVJAX_JAX_CACHE"] = os.fspath(cache_dir)  # what launch/common.setup_jax reads
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    with contextlib.ExitStack() as stack:
        # Output goes to files: a full pipe would block a chatty process.
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(num_processes)]
        argv = [sys.executable, __file__, str(port), "I", str(num_processes), str(devices), "--"]
        procs = []
        for i, log in enumerate(logs):
            argv[3] = str(i)
            procs.append(
                subprocess.Popen(
                    [*argv, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs):
                if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        out = []
        for p, log in zip(procs, logs):
            p.wait()
            log.seek(0)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, log.read(), None))
        return out


def _write_cache_entries_from_this_process() -> None:
    """Lets a process other than 0 write its compiled programs to the persistent cache.

    JAX writes cache entries only from process 0, expecting every process to share its keys,
    but XLA:CPU's topology fingerprint (part of the key) differs per process: without this,
    process 1 finds nothing and compiles every program on every run (measured: 22 s of
    compiles in a one-step Sound2Sight run, with process 0 waiting for it at the barrier).
    Its keys are its own, so no two processes ever write the same entry.
    """
    from jax._src import compilation_cache, compiler
    from jax._src import config as jax_config

    def write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        min_time = jax_config.persistent_cache_min_compile_time_secs.value
        if host_callbacks or compile_time_secs < min_time:
            return
        compilation_cache.put_executable_and_time(
            cache_key, module_name, executable, backend, int(compile_time_secs)
        )

    compiler._cache_write = write


def main():
    port, index, count, devices = (int(a) for a in sys.argv[1:5])
    assert sys.argv[5] == "--", sys.argv
    os.environ["XLA_FLAGS"] = _xla_flags(devices)
    sys.path.insert(0, str(REPO))
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if count > 1:
        if not os.environ.get(CACHE):
            jax.config.update("jax_enable_compilation_cache", False)
        elif index > 0:
            _write_cache_entries_from_this_process()
        jax.distributed.initialize(
            f"localhost:{port}",
            num_processes=count,
            process_id=index,
            initialization_timeout=TIMEOUT_S,
        )
    import ml_collections
    from absl import flags

    from launch import common, train

    update = json.loads(os.environ.get(CONFIG_UPDATE) or "{}")

    def main_updated(argv):
        with flags.FLAGS.config.unlocked():
            for k, v in update.items():
                flags.FLAGS.config[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
        return train.main(argv)

    sys.argv = [str(REPO / "launch" / "train.py"), *sys.argv[6:]]
    common.run(main_updated)


if __name__ == "__main__":
    main()
