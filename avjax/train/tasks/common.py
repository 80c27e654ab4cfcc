"""Small helpers shared by the tasks: train-state assembly, optimizer updates, metrics.

Every task's state is a dict `{"step", "rng", "params", "opt_state", ...}` (extra entries
such as "batch_stats" per family); `init_state` / `next_state` build it the same way in each,
`apply_optimizer` is the one optax update, `float32_metrics` the metric form the loop logs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def init_state(rng: jax.Array, params: Any, opt_state: Any, **extra) -> dict:
    """The step-0 train state: {"step": int32 0, "rng", "params", "opt_state", **extra}."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
        "params": params,
        "opt_state": opt_state,
        **extra,
    }


def next_state(state: dict, params: Any, opt_state: Any, **extra) -> dict:
    """`state` one step on: step + 1, the new params and optimizer states, `extra` replaced."""
    return {
        **state,
        "step": state["step"] + 1,
        "params": params,
        "opt_state": opt_state,
        **extra,
    }


def apply_optimizer(
    tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
    """One optax step: (new params, new optimizer state)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def float32_metrics(metrics: dict) -> dict:
    """Every metric as a float32 scalar array (what the loop averages and writes)."""
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), metrics)
