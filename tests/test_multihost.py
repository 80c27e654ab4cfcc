"""`--multihost`: where `jax.distributed.initialize` gets its arguments, and a real start.

The resolution (flags > `JAX_*` variables > the detected cluster) is checked against
hand-written environments: SLURM and Open MPI variables as their launchers set them, and
JAX's own detection of them. Then two processes over localhost (4 fake CPU devices each)
initialise through the same code as `launch/train.py` and run one cross-process sum.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from jax._src import clusters

from avjax.errors import UserError
from launch import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "tests", "multihost_probe.py")

SLURM = {  # what srun sets for task 2 of 4, two tasks per node
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NUM_NODES": "2",
}
OMPI = {  # mpirun -np 2, one rank per node
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
}


def resolve(env=None, cluster=None, **flags):
    return common.resolve_multihost(env=env or {}, cluster=cluster, **flags)


def test_flags_and_environment():
    m = resolve(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert (m.coordinator_address, m.num_processes, m.process_id) == ("10.0.0.1:1234", 4, 3)
    assert m.local_device_ids is None
    env = {
        "JAX_COORDINATOR_ADDRESS": "host-a:8476",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
        "JAX_LOCAL_DEVICE_IDS": "0,1",
    }
    m = resolve(env)
    assert (m.coordinator_address, m.num_processes, m.process_id) == ("host-a:8476", 2, 1)
    assert m.local_device_ids == (0, 1)
    m = resolve(env, process_id=0, local_device_ids="all")  # a flag wins over its variable
    assert (m.process_id, m.local_device_ids) == (0, ())


ADDRESS = {"coordinator_address": "h:1"}
INCONSISTENT = [  # (environment, flags, the error's text)
    ({}, {**ADDRESS, "num_processes": 2, "process_id": 2}, "--process_id=2 is not below --num_"),
    (
        {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5", "JAX_COORDINATOR_ADDRESS": "h:1"},
        {},
        r"\$JAX_PROCESS_ID=5 is not below \$JAX_NUM_PROCESSES=2",
    ),
    ({}, {**ADDRESS, "num_processes": 2}, r"--process_id not given \(nor \$JAX_PROCESS_ID\)"),
    ({"JAX_PROCESS_ID": "0"}, {}, "--coordinator_address, --num_processes not given"),
    ({}, {}, "no TPU VM, SLURM or Open MPI environment detected; pass --coordinator_address"),
    ({}, {"coordinator_address": "10.0.0.1"}, "--coordinator_address='10.0.0.1': expected HOST"),
    ({"JAX_NUM_PROCESSES": "two"}, {}, r"\$JAX_NUM_PROCESSES='two': expected an integer"),
    ({"JAX_NUM_PROCESSES": "0"}, {}, r"\$JAX_NUM_PROCESSES=0: must be >= 1"),
    ({}, {"local_device_ids": "0,x"}, "--local_device_ids='0,x': expected device ids"),
    ({"JAX_LOCAL_DEVICE_IDS": "1,1"}, {}, r"\$JAX_LOCAL_DEVICE_IDS='1,1': expected distinct"),
]


@pytest.mark.parametrize("env, flags, message", INCONSISTENT)
def test_inconsistent_flags_name_what_is_wrong(env, flags, message):
    with pytest.raises(UserError, match=message):
        resolve(env, **flags)


def test_slurm_and_open_mpi_are_detected_as_jax_does(monkeypatch):
    assert common.detect_cluster({}) is None
    assert common.detect_cluster(SLURM) == "SLURM"
    assert common.detect_cluster(OMPI) == "Open MPI"
    # What jax.distributed.initialize() then takes from them (JAX's own detection).
    for name in set(SLURM) | set(OMPI):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300
    )
    # Port 61440 + job id mod 4096; the first node of the list; one device per local rank.
    assert detected == (f"node001:{61440 + 123456 % 4096}", 4, 2, [0])
    for k in SLURM:
        monkeypatch.delenv(k)
    for k, v in OMPI.items():
        monkeypatch.setenv(k, v)
    detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300
    )
    assert detected == (f"10.96.0.1:{61440 + (1531576320 // 4096) % 4096}", 2, 1, [0])


def test_cluster_fills_what_is_not_given():
    m = resolve(SLURM, cluster="SLURM")  # two tasks per node: JAX's one device per rank
    assert (m.coordinator_address, m.num_processes, m.process_id) == (None, None, None)
    assert (m.local_device_ids, m.source) == (None, "SLURM")
    one_per_node = {**SLURM, "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2"}
    assert resolve(one_per_node, cluster="SLURM").local_device_ids == ()  # every local GPU
    assert resolve(OMPI, cluster="Open MPI").local_device_ids == ()
    m = resolve(SLURM, cluster="SLURM", coordinator_address="node009:5000", local_device_ids="3")
    assert (m.coordinator_address, m.local_device_ids) == ("node009:5000", (3,))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_pair(argv_env: list[tuple[list[str], dict]], tmp_path) -> list[dict]:
    """Starts the probe once per (argv, env); returns each process's JSON line."""
    base = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "AVJAX_JAX_CACHE": str(tmp_path / "cache"),  # cold: no process races ahead
    }
    procs = [
        subprocess.Popen(
            [sys.executable, PROBE, *argv],
            env={**base, **env},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv, env in argv_env
    ]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)
            assert p.returncode == 0, stderr[-2000:]
            out.append(json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("{"))))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _check(results, source):
    assert sorted(r["process_index"] for r in results) == [0, 1]
    for r in results:
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 8, 4)
        assert r["sum_of_positions"] == 28.0  # 0 + 1 + ... + 7 over both processes' devices
        assert r["source"] == source


def test_two_processes_from_flags_and_from_jax_variables(tmp_path):
    """Also trains 4 steps of a one-vector task through the loop, checkpointing from both."""
    address = f"localhost:{_free_port()}"
    run = f"--train_workdir={tmp_path / 'run'}"
    results = _run_pair(
        [
            # flags alone imply --multihost
            ([f"--coordinator_address={address}", "--num_processes=2", "--process_id=0", run], {}),
            (
                ["--multihost", "--initialization_timeout=120", run],
                {
                    "JAX_COORDINATOR_ADDRESS": address,
                    "JAX_NUM_PROCESSES": "2",
                    "JAX_PROCESS_ID": "1",
                },
            ),
        ],
        tmp_path,
    )
    _check(results, "flags / JAX_* variables")
    for r in results:  # mean(w^2) after 4 steps, by hand (tests/multihost_probe.py)
        assert r["last_loss"] == pytest.approx((0.9**3 + 0.9**2 * 2 + 0.9 * 3 + 4) ** 2, rel=1e-6)
    steps = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in steps.iterdir()) == ["2", "4"]
    # Each process saved its own data iterator; the state, replicated over both processes'
    # devices and small, is written once, by process 0 (`avjax.checkpoints`: no
    # replica-parallel slices below 4 MiB).
    assert sorted(p.name for p in (steps / "4" / "data").glob("process_*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert (steps / "4" / "state" / "ocdbt.process_0").is_dir()


def test_two_processes_from_a_slurm_environment(tmp_path):
    def slurm(i):
        return {
            "SLURM_JOB_ID": "777",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(i),
            "SLURM_LOCALID": str(i),
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_NUM_NODES": "1",
            "JAX_COORDINATOR_PORT": str(port),  # JAX's port override (default from the job id)
        }

    port = _free_port()
    results = _run_pair([(["--multihost"], slurm(0)), (["--multihost"], slurm(1))], tmp_path)
    _check(results, "SLURM")


@pytest.mark.slow  # 34 s of waiting, little CPU
def test_a_process_34s_late_at_the_first_collective_waits_at_the_barrier(tmp_path):
    """XLA:CPU's Gloo gives up on a first collective reached 30 s apart; the coordination
    service barrier (`avjax.multihost.wait_for_processes`, as the loop uses after compiling)
    does not. 34 s: past Gloo's 30 s with room for timing noise, and no longer."""
    address = f"localhost:{_free_port()}"
    flags = [f"--coordinator_address={address}", "--num_processes=2", "--barrier"]
    results = _run_pair(
        [
            ([*flags, "--process_id=0"], {}),
            ([*flags, "--process_id=1", "--sleep_before_collective=34"], {}),
        ],
        tmp_path,
    )
    _check(results, "flags / JAX_* variables")
