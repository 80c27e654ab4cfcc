"""Native CPU kernels, compiled on first use: the int8 weight-only matmul (`int8_matmul`)
and the decode step of KV-cache attention (`decode_attention`).

`int8_matmul.cc` and `decode_attention.cc` are XLA FFI handlers
(https://docs.jax.dev/en/latest/ffi.html). The package stays pure Python: the first call of
`available()` in a process compiles the sources with the system C++ compiler (`$CXX`, else
`c++` / `g++`; `-O3 -std=c++17 -shared -fPIC`, no `-march`: the int8 kernel picks AVX-512 /
AVX2 / portable code at run time) into one library in
`avjax.paths.user_cache_dir()/native/` (default `~/.cache/avjax/native/`), named by a hash of the
sources, the flags, the compiler and the jaxlib version, under a file lock so parallel
processes build it once. It is then loaded with ctypes and registered as the CPU FFI
targets `avjax_int8_matmul` and `avjax_decode_attention`.

`AVJAX_NATIVE=0` turns it off (`available()` is False, callers keep their XLA route);
with no compiler, or a failed build or load, one warning is logged and `available()` is
False too. `AVJAX_NATIVE_THREADS=N` caps the threads of a call (default: XLA's intra-op
pool; on the 2-core reference machine, loaded by other jobs, one and two threads sampled
equally fast). Both are read when a function is traced.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

from avjax import paths

TARGET = "avjax_int8_matmul"
DECODE_TARGET = "avjax_decode_attention"
SOURCES = tuple(
    pathlib.Path(__file__).with_name(f) for f in ("int8_matmul.cc", "decode_attention.cc")
)
HEADERS = (pathlib.Path(__file__).with_name("pool_chunks.h"),)  # part of the build's hash
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
ISAS = {"auto": 0, "portable": 1, "avx2": 2, "avx512": 3}


def enabled() -> bool:
    """False when the environment says `AVJAX_NATIVE=0` (read at every call)."""
    return os.environ.get("AVJAX_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> pathlib.Path:
    """Where built libraries are kept: `avjax.paths.user_cache_dir()` / native."""
    return paths.user_cache_dir() / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""


def build(directory: pathlib.Path | None = None) -> pathlib.Path:
    """The compiled library's path (built now if the cache lacks it); raises on failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256()
    for part in (*(f.read_bytes() for f in SOURCES + HEADERS), " ".join(FLAGS).encode()):
        key.update(part)
    key.update(_compiler_version(cxx).encode())
    key.update(jaxlib.__version__.encode())
    directory = pathlib.Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    lib = directory / f"avjax_native-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    import fcntl  # POSIX only: elsewhere the failure is logged and XLA's route kept

    with open(directory / f"{lib.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same file
        if lib.exists():
            return lib
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        cmd = [cxx, *FLAGS, "-isystem", include, *map(str, SOURCES), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, lib)  # atomic: readers see a whole library or none
    return lib


@functools.cache
def _load() -> bool:
    """Builds, loads and registers the library once per process; False (one warning) on failure."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
        symbols = {TARGET: lib.AvjaxInt8Matmul, DECODE_TARGET: lib.AvjaxDecodeAttention}
        for target, symbol in symbols.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    except Exception as e:  # any failure keeps the XLA route
        logging.warning("avjax native CPU kernels unavailable, using XLA's routes: %s", e)
        return False
    return True


def available() -> bool:
    """Whether the kernels can be used: enabled, and built and registered (once)."""
    return enabled() and _load()


@functools.cache
def _op(max_threads: int, isa: int):
    """The FFI call x [M, in], q [in, out], scale [out] -> [M, out], batched by folding rows."""

    @jax.custom_batching.custom_vmap
    def op(x, q, scale):
        call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], q.shape[1]), jnp.float32))
        return call(x, q, scale, max_threads=max_threads, isa=isa)

    @op.def_vmap
    def _(axis_size, in_batched, x, q, scale):
        if in_batched[1] or in_batched[2]:  # a batch of kernels: one call per kernel
            q = q if in_batched[1] else jnp.broadcast_to(q, (axis_size, *q.shape))
            s = scale if in_batched[2] else jnp.broadcast_to(scale, (axis_size, *scale.shape))
            x = x if in_batched[0] else jnp.broadcast_to(x, (axis_size, *x.shape))
            return jax.lax.map(lambda a: op(*a), (x, q, s)), True
        m, k = x.shape[1:]
        y = op(x.reshape(axis_size * m, k), q, scale)  # the same kernel: rows of one call
        return y.reshape(axis_size, m, -1), True

    return op


def default_threads() -> int:
    """`AVJAX_NATIVE_THREADS` (read when a call is traced), else 0: all of XLA's pool."""
    return int(os.environ.get("AVJAX_NATIVE_THREADS", "0") or 0)


def int8_matmul(x, q, scale, max_threads: int | None = None, isa: str = "auto") -> jax.Array:
    """x float32 [M, in] @ q int8 [in, out] * scale float32 [out] -> float32 [M, out].

    CPU only (an XLA FFI call); builds the library if need be (RuntimeError if it
    cannot: check `available()` first). Each weight is read once for all
    M rows; sums accumulate in float32. Under `vmap` the rows of all examples go in one
    call (a batched kernel: one call per kernel). `max_threads` caps the threads used (0:
    all of XLA's intra-op pool; None: `default_threads()`); `isa` forces an instruction
    set ("portable", "avx2"; tests).
    """
    if x.ndim != 2 or q.ndim != 2 or q.shape[0] != x.shape[1] or scale.shape != (q.shape[1],):
        raise ValueError(f"int8_matmul: x {x.shape}, q {q.shape}, scale {scale.shape}")
    if q.dtype != jnp.int8:
        raise ValueError(f"int8_matmul: q must be int8, got {q.dtype}")
    if not _load():
        raise RuntimeError("the native int8 matmul could not be built (see the warning)")
    max_threads = default_threads() if max_threads is None else max_threads
    op = _op(int(max_threads), ISAS[isa])
    return op(x.astype(jnp.float32), q, scale.astype(jnp.float32))


def decode_attention(q, kn, vn, kc, vc, filled, scale: float, max_threads: int | None = None):
    """One decode step of attention over the filled slots of a KV cache; float32 [R, D].

    q, kn, vn [R, D] (the step's query, key, value; R = batch x heads); kc [R, D, S]
    (cached keys, transposed), vc [R, S, D]; `filled` the number of cache slots in use
    (int32 scalar, may be traced). Softmax over (q . k_j) * scale for the filled slots and
    the step's own key, as XLA's masked attention computes it, but only the filled slots
    are read. CPU only (an XLA FFI call); RuntimeError if the library cannot be built.
    """
    if not _load():
        raise RuntimeError("the native CPU kernels could not be built (see the warning)")
    max_threads = default_threads() if max_threads is None else max_threads
    call = jax.ffi.ffi_call(
        DECODE_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32), vmap_method="sequential"
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return call(
        f32(q),
        f32(kn),
        f32(vn),
        f32(kc),
        f32(vc),
        jnp.asarray(filled, jnp.int32),
        scale=np.float32(scale),
        max_threads=int(max_threads),
    )
