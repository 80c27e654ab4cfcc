"""Reduced-precision Dense weights (avjax/nn/quantize.py): int8 quantisation by hand, the
converted tree, Dense against flax's and against the dequantised product on both routes,
int8 kept in the sampler's loop (no float copy of the weights hoisted out of it), and the
GPT sampled with bfloat16 / int8 kernels."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.models.specvqgan import sampling
from avjax.models.specvqgan.gpt import GPT
from avjax.nn import native, quantize


def test_quantize_int8_by_hand():
    w = np.array([[1.0, -2.0, 0.0], [0.5, 4.0, 0.0]], np.float32)
    q, s = quantize.quantize_int8(w)
    # Column scales max|w| / 127 (1 for an all-zero column); values rint(w / s).
    np.testing.assert_allclose(s, [1 / 127, 4 / 127, 1.0], rtol=1e-7)
    np.testing.assert_array_equal(q, [[127, -64, 0], [64, 127, 0]])  # 63.5 -> 64, -63.5 -> -64
    assert q.dtype == np.int8
    np.testing.assert_allclose(quantize.dequantize(q, s), [[1, -2.015748, 0], [0.503937, 4, 0]])


def test_convert_params_reduces_dense_kernels_only():
    params = {
        "dense": {"kernel": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)},
        "conv": {"kernel": np.ones((3, 3, 2, 2), np.float32)},
        "ln": {"scale": np.ones(3, np.float32)},
    }
    q = quantize.convert_params(params, "int8")
    assert q["dense"]["kernel"].dtype == jnp.int8 and q["dense"]["kernel_scale"].shape == (3,)
    assert q["dense"]["bias"].dtype == np.float32 and q["conv"]["kernel"].dtype == np.float32
    assert "kernel_scale" not in q["conv"] and q["ln"]["scale"].dtype == np.float32
    b = quantize.convert_params(params, "bfloat16")
    assert b["dense"]["kernel"].dtype == jnp.bfloat16 and b["conv"]["kernel"].dtype == np.float32
    assert quantize.convert_params(params, "float32") is params
    # int8 kernel 12 + scales 3 * 4 + bias 3 * 4 + conv 36 * 4 + ln 3 * 4 bytes
    assert quantize.param_bytes(q) == 12 + 12 + 12 + 36 * 4 + 12
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        quantize.convert_params(params, "float16")


@pytest.fixture(scope="module")
def dense():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 48))
    layer = quantize.Dense(40, kernel_init=nn.initializers.normal(0.05))
    params = layer.init(jax.random.PRNGKey(1), x)["params"]
    params["bias"] = 0.1 * jnp.arange(40.0)
    return x, params


def test_dense_with_float_kernel_is_flax_dense(dense):
    x, params = dense
    ours = quantize.Dense(40).apply({"params": params}, x)
    theirs = nn.Dense(40).apply({"params": params}, x)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("route", ["cpu", "plain"])
def test_dense_int8_and_bf16_match_the_dequantised_product(dense, route):
    x, params = dense
    layer = quantize.Dense(40, dtype=jnp.float32, route=route)
    q = quantize.convert_params(params, "int8")
    want = x @ quantize.dequantize(q["kernel"], q["kernel_scale"]) + params["bias"]
    for rows in (x, x[:1]):  # one row is padded to two on the CPU route
        got = layer.apply({"params": q}, rows)
        # "plain" dequantises the kernel exactly; "cpu" also rounds each row to int8
        # (relative step 1/254 per element, errors averaging over 48 terms).
        tol = 1e-5 if route == "plain" else 2e-2
        np.testing.assert_allclose(got, want[: len(rows)], atol=tol * float(jnp.abs(want).max()))
    b = quantize.convert_params(params, "bfloat16")
    want = x @ b["kernel"].astype(jnp.float32) + params["bias"]
    got = layer.apply({"params": b}, x)
    np.testing.assert_allclose(got, want, atol=1e-2 * float(jnp.abs(want).max()))


def _entry(hlo: str) -> str:
    """The ENTRY computation of an HLO module's text."""
    return re.search(r"^ENTRY .*?^}", hlo, flags=re.S | re.M).group(0)


@pytest.mark.parametrize("route", ["cpu", "plain"])
def test_int8_kernel_stays_int8_in_the_loop(dense, route):
    """A scan over steps reuses the same int8 kernel: no float32 copy of it outside the loop."""
    x, params = dense
    q = quantize.convert_params(params, "int8")
    layer = quantize.Dense(40, route=route)

    def steps(p, x0):
        def body(h, _):
            y = layer.apply({"params": p}, h)
            return h + 1e-3 * y[:, :1], None

        return jax.lax.scan(body, x0, None, length=4)[0]

    hlo = jax.jit(steps).lower(q, x[:1]).compile().as_text()
    assert "s8[48,40]" in hlo
    # A float copy of the whole kernel before the loop is what the barrier prevents.
    assert "f32[48,40]" not in _entry(hlo) and "bf16[48,40]" not in _entry(hlo)
    if route == "cpu":  # int8 x int8 -> int32: the kernel is never converted at all
        assert "f32[48,40]" not in hlo


@pytest.fixture(scope="module")
def tiny_gpt():
    model = GPT(32, 6 + 20, n_layer=2, n_head=2, n_embd=32, feat_dim=8)
    feats = jax.random.normal(jax.random.PRNGKey(1), (1, 6, 8))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32), feats)
    params = params["params"]
    # Larger logits than the N(0, 0.02) init, so the next-token ranking is clear-cut.
    params["head"]["kernel"] = params["head"]["kernel"] * 50.0
    return model, params, feats


@pytest.mark.parametrize("weights_dtype", ["bfloat16", "int8"])
def test_gpt_samples_with_reduced_weights(tiny_gpt, weights_dtype):
    model, params, feats = tiny_gpt
    m, p = sampling.for_inference(model, params, weights_dtype, platform="cpu")
    assert m.dtype == jnp.float32 and m.cache_dtype == jnp.float32
    assert jax.tree.leaves(m.init_cache(1))[0].dtype == jnp.float32
    kernel = p["blocks_0"]["mlp_0"]["kernel"]
    assert kernel.dtype == jnp.dtype(weights_dtype) and p["pos_emb"].dtype == jnp.float32
    toks = jax.random.randint(jax.random.PRNGKey(2), (1, 19), 0, 32)
    ref = model.apply({"params": params}, toks, feats)
    got = m.apply({"params": p}, toks, feats)
    assert float(jnp.abs(got - ref).max()) < 0.05 * float(jnp.abs(ref).max())
    assert float((got.argmax(-1) == ref.argmax(-1)).mean()) > 0.9
    codes = sampling.sample(m, p, jax.random.PRNGKey(0), feats, num_tokens=20, temperature=0.0)
    want = sampling.sample(
        model, params, jax.random.PRNGKey(0), feats, num_tokens=20, temperature=0.0
    )
    assert codes.shape == (1, 20) and float((codes == want).mean()) > 0.5
    # Accelerators compute and cache in bfloat16.
    gpu = sampling.for_inference(model, params, weights_dtype, "gpu")[0]
    assert gpu.dtype == jnp.bfloat16 and gpu.cache_dtype == jnp.bfloat16
    assert sampling.for_inference(model, params, "float32")[1] is params
    assert m.fused_qkv and set(p["blocks_0"]["attn"]) == {"qkv", "proj"}


def test_fused_qkv_is_the_same_attention(tiny_gpt):
    model, params, feats = tiny_gpt
    fused = sampling.fuse_qkv(params)
    attn, qkv = params["blocks_1"]["attn"], fused["blocks_1"]["attn"]["qkv"]
    c = attn["query"]["kernel"].shape[0]
    for i, name in enumerate(("query", "key", "value")):  # [C, 3C] in q, k, v order
        np.testing.assert_array_equal(qkv["kernel"][:, i * c : (i + 1) * c], attn[name]["kernel"])
        np.testing.assert_array_equal(qkv["bias"][i * c : (i + 1) * c], attn[name]["bias"])
    toks = jax.random.randint(jax.random.PRNGKey(2), (1, 19), 0, 32)
    ref = model.apply({"params": params}, toks, feats)
    got = model.clone(fused_qkv=True).apply({"params": fused}, toks, feats)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(jnp.abs(ref).max()))
    # int8 per-output-channel scales: quantising the fused kernel = quantising each part.
    q = quantize.convert_params(fused, "int8")["blocks_1"]["attn"]["qkv"]
    parts = [
        quantize.quantize_int8(np.asarray(attn[n]["kernel"])) for n in ("query", "key", "value")
    ]
    np.testing.assert_array_equal(q["kernel"], np.concatenate([a for a, _ in parts], axis=1))
    np.testing.assert_array_equal(q["kernel_scale"], np.concatenate([b for _, b in parts]))


# ------------------------------------------------------------------ native int8 matmul
needs_native = pytest.mark.skipif(
    not native.available(), reason="native int8 matmul not built (no C++ compiler?)"
)


def _int8_problem(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    s = (0.5 + rng.random(n)).astype(np.float32) / 127
    ref = (x.astype(np.float64) @ q.astype(np.float64)) * s.astype(np.float64)
    return x, q, s, ref


def _close(got, ref):
    """float32 sums of K terms against float64: within 1e-5 of the largest |sum| term bound."""
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@needs_native
@pytest.mark.parametrize("k,n", [(37, 45), (1024, 3072)])
def test_native_int8_matmul_matches_float64(k, n):
    """Sizes that are no multiple of the 16 / 8 vector widths, rows 1 .. 40, inside jit."""
    f = jax.jit(native.int8_matmul)
    for m in (1, 2, 5, 16, 40):
        x, q, s, ref = _int8_problem(m, k, n, seed=m)
        _close(f(x, q, s), ref)


@needs_native
@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_native_int8_matmul_narrower_instruction_sets(isa):
    """The AVX2 and portable loops (AVX-512 machines run them when forced) agree too."""
    for m, k, n in ((1, 37, 45), (5, 130, 77), (3, 256, 1030)):
        x, q, s, ref = _int8_problem(m, k, n, seed=k)
        _close(jax.jit(lambda x, q, s: native.int8_matmul(x, q, s, isa=isa))(x, q, s), ref)


@needs_native
def test_native_int8_matmul_threads_and_vmap():
    x, q, s, ref = _int8_problem(3, 512, 1000)
    # One thread, and the pool's split into column chunks (1000 columns: a partial chunk).
    for threads in (1, 0):
        f = functools.partial(native.int8_matmul, q=q, scale=s, max_threads=threads)
        _close(jax.jit(f)(x), ref)
    # vmap over activations folds the batch into rows; over kernels, one call per kernel.
    xb = np.stack([x, 2 * x])
    _close(jax.jit(jax.vmap(lambda x: native.int8_matmul(x, q, s)))(xb), np.stack([ref, 2 * ref]))
    qb = np.stack([q, -q])
    got = jax.jit(jax.vmap(lambda q: native.int8_matmul(x, q, s)))(qb)
    _close(got, np.stack([ref, -ref]))


@needs_native
def test_native_route_in_the_sampler_loop(monkeypatch):
    """Dense with an int8 kernel, one row, in a scan: the FFI call sits in the loop body
    (no float copy of the kernel anywhere), and the numbers match float64; with
    AVJAX_NATIVE=0 the same code takes XLA's int8 x int8 dot."""
    x, q, s, _ = _int8_problem(1, 48, 40)
    p = {"kernel": jnp.asarray(q), "kernel_scale": jnp.asarray(s), "bias": jnp.zeros(40)}
    layer = quantize.Dense(40)
    w = q.astype(np.float64) * s.astype(np.float64)

    def steps(p, x0):
        def body(h, _):
            y = layer.apply({"params": p}, h)
            return h + 1e-2 * y[:, :1], y

        return jax.lax.scan(body, x0, None, length=4)

    want, h = [], x.astype(np.float64)
    for _ in range(4):
        y = h @ w
        want.append(y)
        h = h + 1e-2 * y[:, :1]
    want = np.stack(want)

    hlo = jax.jit(steps).lower(p, x).compile().as_text()
    assert 'custom_call_target="avjax_int8_matmul"' in hlo
    assert "f32[48,40]" not in hlo
    body = hlo[: hlo.index("ENTRY")]  # the loop body is a computation before ENTRY
    assert "avjax_int8_matmul" in body and "avjax_int8_matmul" not in _entry(hlo)
    _close(jax.jit(steps)(p, x)[1], want)

    monkeypatch.setenv("AVJAX_NATIVE", "0")
    steps_xla = lambda p, x0: steps(p, x0)  # a new function: traced again, env read again
    hlo = jax.jit(steps_xla).lower(p, x).compile().as_text()
    assert "avjax_int8_matmul" not in hlo and "s32" in hlo  # int8 x int8 -> int32 dot
    got = jax.jit(steps_xla)(p, x)[1]
    # Activations quantised to int8 per row: errors up to ~1/254 of each term.
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())
    assert not np.allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _decode_attention_float64(q, kn, vn, kc, vc, n, scale):
    """softmax([q . kc[:, j] for j < n] + [q . kn]) * scale) weighting [vc[j]] + [vn]; [R, D]."""
    q, kn, vn, kc, vc = (np.asarray(a, np.float64) for a in (q, kn, vn, kc, vc))
    out = []
    for r in range(q.shape[0]):
        keys = np.concatenate([kc[r, :, :n].T, kn[r][None]])  # [n + 1, D]
        vals = np.concatenate([vc[r, :n], vn[r][None]])
        s = keys @ q[r] * scale
        p = np.exp(s - s.max())
        out.append(p @ vals / p.sum())
    return np.stack(out)


@needs_native
def test_native_decode_attention_reads_the_filled_slots_only():
    """Against float64 by hand for 0, 1, some and all slots filled; the unfilled slots hold
    NaN, so a kernel that read them would return NaN. One thread and the pool's split."""
    rng = np.random.default_rng(0)
    rows, d, s = 7, 24, 40
    q, kn, vn = (rng.standard_normal((rows, d)).astype(np.float32) for _ in range(3))
    kc = rng.standard_normal((rows, d, s)).astype(np.float32)
    vc = rng.standard_normal((rows, s, d)).astype(np.float32)
    f = jax.jit(native.decode_attention, static_argnums=(6, 7))
    for n in (0, 1, 17, s):
        kc_n, vc_n = kc.copy(), vc.copy()
        kc_n[:, :, n:], vc_n[:, n:] = np.nan, np.nan
        want = _decode_attention_float64(q, kn, vn, kc_n, vc_n, n, 0.2)
        for threads in (1, 0):
            got = f(q, kn, vn, kc_n, vc_n, np.int32(n), 0.2, threads)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@needs_native
def test_gpt_decode_step_takes_the_native_attention(monkeypatch):
    """A cached one-token GPT step: the FFI call in the CPU program, logits as XLA's route
    (AVJAX_NATIVE=0) within float32 rounding, and the same next cache."""
    model = GPT(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=16)
    toks = jnp.array([[3, 1, 4, 1, 5]])
    params = jax.jit(model.init)(jax.random.PRNGKey(0), toks)["params"]

    def step(params, toks):
        _, cache = model.apply({"params": params}, toks, cache=model.init_cache(1), pos=0)
        return model.apply({"params": params}, toks[:, :1], cache=cache, pos=toks.shape[1])

    assert "avjax_decode_attention" in jax.jit(step).lower(params, toks).as_text()
    logits, cache = jax.jit(step)(params, toks)
    monkeypatch.setenv("AVJAX_NATIVE", "0")
    step_xla = lambda p, t: step(p, t)  # traced again: the environment is read again
    assert "avjax_decode_attention" not in jax.jit(step_xla).lower(params, toks).as_text()
    want, want_cache = jax.jit(step_xla)(params, toks)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_native_build_failure_falls_back(monkeypatch, tmp_path):
    """No compiler: `build` raises, loading logs a warning and reports unavailable."""
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.build(tmp_path)
    monkeypatch.setattr(native, "build", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert native._load.__wrapped__() is False
    monkeypatch.setenv("AVJAX_NATIVE", "0")
    assert not native.available()


@needs_native
def test_native_build_is_cached():
    """Building again finds the library this process loaded (same hash), untouched."""
    lib = native.build()
    mtime = lib.stat().st_mtime_ns
    assert native.build() == lib and lib.stat().st_mtime_ns == mtime
    assert lib.parent == native.cache_dir() and lib.name.startswith("avjax_native-")
