"""MCAV end to end: MME and CAR over whole clips (one `lax.scan` each), `predict`, `make_model`.

Reference: docs/mcav.md. Arrays are batch-major: frames [B, T, S, S, C] in [0, 1], backward
flows [B, T, S, S, 2] in pixels (F[t] maps frame t to t-1, F[0] = 0), audio patches
[B, T, Fa, Ta]. Variables are `{"params", "batch_stats"}` per module; BatchNorm statistics
are threaded through the scans in training (one PyTorch-style update per step, as the
per-step calls of a recurrent PyTorch model) and read-only otherwise.

`predict` is the public rollout: given the seen frames, their flows and the whole audio, it
returns the predicted frames and flows of every future step (MME's warps when no CAR is
given, i.e. after stage 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avjax.models.mcav.motion import MotionEstimator
from avjax.models.mcav.refine import ContextRefiner
from avjax.nn import cpu_kernels
from avjax.video.flow import warp

__all__ = [
    "AUTO_UNROLL",
    "make_model",
    "predict",
    "run_motion",
    "run_refine",
    "scan_unroll",
    "time_scan",
]

# `unroll` value (config.model.scan_unroll): the time loops fully unrolled in programs lowered
# for CPU, one step per loop iteration elsewhere (`time_scan`).
AUTO_UNROLL = -1


def _apply(module, variables: dict, method, *args, train: bool):
    """(output, batch_stats): statistics updated in train mode, passed through otherwise."""
    if train:
        out, upd = module.apply(
            variables, *args, train=True, method=method, mutable=["batch_stats"]
        )
        return out, upd["batch_stats"]
    return module.apply(variables, *args, train=False, method=method), variables["batch_stats"]


def scan_unroll(unroll: int) -> int | bool:
    """`lax.scan`'s `unroll` from a config value: n >= 1 steps per loop iteration, 0 the
    whole loop unrolled (no loop left; the results agree up to float rounding).
    `AUTO_UNROLL` (-1) is resolved per platform by `time_scan`, not here."""
    if unroll < 0:
        raise ValueError(f"scan_unroll must be >= 0, got {unroll}")
    return True if unroll == 0 else int(unroll)


def time_scan(body, init, xs, unroll: int):
    """`lax.scan(body, init, xs)` over time with `unroll` (`scan_unroll`), or, with
    `AUTO_UNROLL`, fully unrolled when lowered for CPU and one step per iteration elsewhere.

    Why unroll on CPU: XLA:CPU emits the gradients of a convolution inside a loop body (its
    input and kernel gradients) with a generic loop nest instead of its Eigen kernels, 10-50x
    slower (3x3 32->32 conv at [2, 48, 48], 15 steps: kernel gradient 796 ms in a `scan`
    against 17 ms unrolled), which made the paper CAR training step 12x slower. Both
    branches are traced (`lax.platform_dependent`); only the lowered platform's is compiled.
    """
    if unroll != AUTO_UNROLL:
        return jax.lax.scan(body, init, xs, unroll=scan_unroll(unroll))

    def unrolled_body(carry, x):  # each step's carry written once (`fusion_barrier`)
        carry, y = body(carry, x)
        return cpu_kernels.fusion_barrier(carry), y

    def run(body, u):
        return lambda init, xs: jax.lax.scan(body, init, xs, unroll=u)

    return jax.lax.platform_dependent(init, xs, cpu=run(unrolled_body, True), default=run(body, 1))


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 1, 0)


def run_motion(
    mme: MotionEstimator,
    variables: dict,
    frames: jax.Array,
    flows: jax.Array,
    audio: jax.Array,
    use_gt: jax.Array,
    train: bool = False,
    unroll: int = 1,
) -> tuple[dict, dict]:
    """MME over a clip, steps i = 0..T-2 in one `lax.scan` (docstring of `motion`).

    Args:
      mme: the motion estimator.
      variables: its {"params", "batch_stats"}.
      frames: [B, T, S, S, C] in [0, 1]; V[i] is read at the steps where `use_gt[i]`.
      flows: [B, T, S, S, 2] ground-truth backward flows; F[i] read where `use_gt[i]`.
      audio: [B, T, Fa, Ta] (every step's patch: the memory holds x_a[0..i+1] at step i).
      use_gt: bool [T-1]; `use_gt[0]` must be True (nothing was predicted before step 0).
      train: BatchNorm batch statistics (and their running averages updated).
      unroll: time steps per iteration of the compiled loop (`time_scan`).

    Returns:
      ({"flow": F_hat[1..T-1] [B, T-1, S, S, 2], "frame": warp(E_m's frame i, F_hat[i+1])
      [B, T-1, S, S, C], "audio": x_a [B, T, c]}, the new batch_stats).
    """
    params = variables["params"]
    xa, stats = _apply(
        mme, variables, MotionEstimator.encode_audio, audio.astype(jnp.float32), train=train
    )
    xt = mme.apply({"params": params}, xa, method=MotionEstimator.condense_memory)
    b, t = frames.shape[:2]
    xs = {
        "frame": _time_major(frames[:, :-1].astype(jnp.float32)),
        "flow": _time_major(flows[:, :-1].astype(jnp.float32)),
        "use_gt": jnp.asarray(use_gt, bool),
        "audio": _time_major(xt),
        "pos": jnp.arange(t - 1, dtype=jnp.int32),
    }

    def body(c, inp):
        stats, carry = c
        inp = {**inp, "memory": xa}  # the fixed buffer; `step` masks the slots after i+1
        (carry, out), stats = _apply(
            mme,
            {"params": params, "batch_stats": stats},
            MotionEstimator.step,
            carry,
            inp,
            train=train,
        )
        return (stats, carry), out

    init = (stats, mme.initial_carry(b))
    (stats, _), outs = time_scan(body, init, xs, unroll)
    out = {k: jnp.moveaxis(v, 0, 1) for k, v in outs.items()}
    return {**out, "audio": xa}, stats


def run_refine(
    car: ContextRefiner,
    car_variables: dict,
    mme: MotionEstimator,
    mme_variables: dict,
    frames: jax.Array,
    flows_hat: jax.Array,
    xa: jax.Array,
    n_past: int,
    use_gt: jax.Array,
    train: bool = False,
    unroll: int = 1,
) -> tuple[dict, dict]:
    """CAR over the predicted steps i = n_past-1..T-2 in one `lax.scan` (`refine`).

    Args:
      car, car_variables: the refiner and its {"params", "batch_stats"}.
      mme, mme_variables: the (frozen) motion estimator, for M's E_m part (eval mode).
      frames: [B, T, S, S, C] in [0, 1]: V[n_past-1] (the context frame and the first
        frame warped) and V[i] at the steps where `use_gt`.
      flows_hat: [B, T-1, S, S, 2] MME's F_hat[1..T-1] (`run_motion`'s "flow").
      xa: [B, T, c] MME's audio features; M = E_m(V[i], F_hat[i+1]) || E_a(A[i]).
      n_past: seen frames K.
      use_gt: bool [T - n_past]; `use_gt[0]` True (V[n_past-1] is given), then CAR's own
        previous output (gradient stopped) where False.
      train: BatchNorm batch statistics of CAR (MME always in eval mode).
      unroll: time steps per iteration of the compiled loop (`time_scan`).

    Returns:
      ({"frame": refined V_hat[n_past..T-1] [B, T-n_past, S, S, C], "warped": the frames
      before refinement, same shape}, CAR's new batch_stats).
    """
    params = car_variables["params"]
    frames = frames.astype(jnp.float32)
    context, stats = _apply(
        car, car_variables, ContextRefiner.encode_context, frames[:, n_past - 1], train=train
    )
    xs = {
        "frame": _time_major(frames[:, n_past - 1 : -1]),
        "flow": _time_major(flows_hat[:, n_past - 1 :].astype(jnp.float32)),
        "audio": _time_major(xa[:, n_past - 1 : -1]),
        "use_gt": jnp.asarray(use_gt, bool),
    }

    def body(c, inp):
        stats, prev = c
        v = jnp.where(inp["use_gt"], inp["frame"], jax.lax.stop_gradient(prev))
        warped = warp(v, inp["flow"])
        e_m = mme.apply(mme_variables, v, inp["flow"], method=MotionEstimator.motion_feature)
        motion = jax.lax.stop_gradient(jnp.concatenate([e_m, inp["audio"]], axis=-1))
        out, stats = _apply(
            car,
            {"params": params, "batch_stats": stats},
            ContextRefiner.refine,
            warped,
            context,
            motion,
            train=train,
        )
        return (stats, out), {"frame": out, "warped": warped}

    init = (stats, jnp.zeros_like(frames[:, 0]))
    (stats, _), outs = time_scan(body, init, xs, unroll)
    return {k: jnp.moveaxis(v, 0, 1) for k, v in outs.items()}, stats


def predict(
    mme: MotionEstimator,
    car: ContextRefiner | None,
    variables: dict,
    frames: jax.Array,
    flows: jax.Array,
    audio: jax.Array,
    n_past: int,
    unroll: int = 1,
) -> dict:
    """Predicts frames n_past..T-1 of a clip from its seen frames and flows and all its audio.

    Eval mode, autoregressive: MME reads the ground truth of steps 0..n_past-1 and its own
    flows and warps afterwards; CAR warps V[n_past-1], then its own outputs. Frames and flows
    after the seen ones are never read (zeroed here).

    Args:
      mme, car: the modules (`make_model`); car None: MME alone (stage 1), frames by warping.
      variables: {"mme": {"params", "batch_stats"}, "car": {...} (when `car`)}.
      frames: [B, T, S, S, C] in [0, 1]; flows: [B, T, S, S, 2] ground-truth backward flows
        (F[0] = 0); audio: [B, T, Fa, Ta].
      n_past: seen frames K, 1 <= K < T.
      unroll: time steps per iteration of the compiled loops (`time_scan`).

    Returns:
      {"frames": [B, T-K, S, S, C] predicted V[K..T-1], "flows": [B, T-K, S, S, 2]
      F_hat[K..T-1], "warped": [B, T-K, S, S, C] the frames CAR refined (MME's warp chain
      when car is None)}.
    """
    t = frames.shape[1]
    if not 1 <= n_past < t:
        raise ValueError(f"n_past={n_past} must be in [1, {t - 1}] for clips of {t} frames")
    seen = (jnp.arange(t) < n_past)[None, :, None, None, None]
    frames = jnp.where(seen, frames.astype(jnp.float32), 0.0)
    flows = jnp.where(seen, flows.astype(jnp.float32), 0.0)
    use_gt = jnp.arange(t - 1) < n_past
    m, _ = run_motion(mme, variables["mme"], frames, flows, audio, use_gt, unroll=unroll)
    flows_hat = m["flow"][:, n_past - 1 :]
    if car is None:
        warped = m["frame"][:, n_past - 1 :]
        return {"frames": warped, "flows": flows_hat, "warped": warped}
    first = jnp.arange(t - n_past) == 0
    r, _ = run_refine(
        car,
        variables["car"],
        mme,
        variables["mme"],
        frames,
        m["flow"],
        m["audio"],
        n_past,
        first,
        unroll=unroll,
    )
    return {"frames": r["frame"], "flows": flows_hat, "warped": r["warped"]}


def make_model(config, dtype=jnp.float32) -> tuple[MotionEstimator, ContextRefiner]:
    """MME and CAR an experiment config describes (`configs/mcav_*.py`: its `model` and
    `data` fields; frame and audio sizes come from `data`)."""
    m, d = config.model, config.data
    mme = MotionEstimator(
        image_size=d.image_size,
        channels=d.channels,
        audio_shape=tuple(d.audio_shape),
        encoder_channels=tuple(m.encoder_channels),
        audio_nf=m.audio_nf,
        lstm_features=m.lstm_features,
        lstm_layers=m.lstm_layers,
        lstm_kernel=m.lstm_kernel,
        decoder_channels=tuple(m.decoder_channels),
        attention_scale=m.attention_scale,
        condense=m.condense,
        recall=m.recall,
        recall_keys=m.recall_keys,
        dtype=dtype,
    )
    car = ContextRefiner(
        image_size=d.image_size,
        channels=d.channels,
        widths=tuple(m.car_widths),
        mlp_hidden=m.mlp_hidden,
        context=m.context,
        modulation=m.modulation,
        merge=m.context_merge,
        dtype=dtype,
    )
    return mme, car
