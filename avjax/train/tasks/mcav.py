"""MCAV training, two stages (`config.stage`): "motion" trains MME, "refine" trains CAR.

Reference: docs/mcav.md, "Training". Batches: {"frames": uint8 [B, T, S, S, C], "audio":
float32 [B, T, Fa, Ta], "flow": float32 [B, T, S, S, 2] (backward flows, F[0] = 0)} (+ "mask"
[B] in eval); T = n_past + n_future in training.

* Stage 1, "motion": L_MME = sum over the T-1 predicted flows of [MSE(F_hat, F) +
  lambda_smooth * edge-aware smoothness(F_hat, V)] (per-step means over batch and pixels,
  lambda_smooth 0.01), Adam (`optim.motion_lr`, paper 1e-4). Every step i = 0..T-2 is
  supervised (the seen ones too, as Sound2Sight's steps).
* Stage 2, "refine": MME comes from the stage-1 run in `config.motion.workdir`
  (`avjax.runs.load_run`), is kept in the state under "frozen" (outside the optimizer, in
  eval mode, its outputs gradient-stopped: its parameters and BatchNorm statistics are
  bit-identical after training) and runs as at test time; CAR is trained with
  L_V = sum over the predicted frames V[n_past..T-1] of MSE(V_hat, V), Adam
  (`optim.refine_lr`, paper 1e-3).
Recurrent inputs (the paper is silent, `model.teacher_forcing`): False (default) trains as
it predicts: after the seen frames MME reads its own previous flow and warped frame, CAR its
own previous output (gradient stopped at the fed-back input); True feeds ground truth at
every step. In stage 2 the frozen MME always runs as at test time.

`predict` (state, frames, flows, audio) is the public rollout the evaluators use; a stage-1
state predicts by warping alone.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avjax.errors import UserError
from avjax.images import FRAME_SCALES, frames01
from avjax.losses.flow import flow_mse, smoothness
from avjax.metrics import image_quality as iq
from avjax.models.mcav import model as mcav_model
from avjax.models.mcav.model import make_model
from avjax.train.tasks import common
from avjax.video.flow import aepe

__all__ = ["MME_FIELDS", "STAGES", "MCAVTask", "load_motion"]

STAGES = ("motion", "refine")
# Config fields a refine run must share with the motion run it loads MME from.
MME_FIELDS = (
    "data.image_size",
    "data.channels",
    "data.audio_shape",
    "model.encoder_channels",
    "model.audio_nf",
    "model.lstm_features",
    "model.lstm_layers",
    "model.lstm_kernel",
    "model.decoder_channels",
    "model.attention_scale",
    "model.condense",
    "model.recall",
    "model.recall_keys",
)


def _field(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return json.loads(json.dumps(node, default=list))  # tuples and lists compare equal


def load_motion(config) -> dict:
    """MME's {"params", "batch_stats"} (host arrays) from the stage-1 run
    `config.motion.workdir`, checked to be an MCAV "motion" run with this config's MME.

    Raises:
      UserError naming `config.motion.workdir`: unset, not a run, another stage, or an MME
      of another shape (the differing fields listed).
    """
    from avjax.runs import load_run

    workdir = config.motion.workdir
    if not workdir:
        raise UserError(
            "config.motion.workdir is not set: stage 'refine' loads MME from a stage-1 run "
            "(train one with --config.stage=motion, then pass --config.motion.workdir=W)"
        )
    try:
        run = load_run(workdir, "mcav")
    except UserError as e:
        raise UserError(f"config.motion.workdir: {e}") from None
    if run.config.stage != "motion":
        raise UserError(
            f"config.motion.workdir: {workdir} is a stage {run.config.stage!r} run; "
            "give the stage-1 ('motion') run"
        )
    diffs = [
        f"{f}: {_field(run.config, f)} there, {_field(config, f)} here"
        for f in MME_FIELDS
        if _field(run.config, f) != _field(config, f)
    ]
    if diffs:
        raise UserError(
            f"config.motion.workdir: {workdir} trained another MME ({'; '.join(diffs)}); "
            "use the same model and data fields in both stages"
        )
    return jax.device_get(
        {"params": run.state["params"]["mme"], "batch_stats": run.state["batch_stats"]["mme"]}
    )


def _strip(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of frames [T, H, W, 3] in [0, 1] -> one image, time along the columns."""
    t, h, w, _ = rows[0].shape
    out = np.ones((len(rows) * (h + pad) + pad, t * (w + pad) + pad, 3), np.float32)
    for r, row in enumerate(rows):
        for j in range(t):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = row[j]
    return out


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


class MCAVTask:
    """Init / train_step / eval_step / samples / predict of one MCAV stage."""

    def __init__(
        self,
        mme,
        car,
        stage: str,
        tx: optax.GradientTransformation,
        *,
        n_past: int,
        train_frames: int,
        frame_scale: str = "per_frame_max",
        smooth_weight: float = 0.01,
        teacher_forcing: bool = False,
        frozen_mme: dict | None = None,
        sample_clips: int = 2,
        fps: float = 10.0,
        unroll: int = 1,
    ):
        if stage not in STAGES:
            raise UserError(f"config.stage must be one of {STAGES}, got {stage!r}")
        if frame_scale not in FRAME_SCALES:
            raise UserError(
                f"config.data.frame_scale must be one of {FRAME_SCALES}, got {frame_scale!r}"
            )
        if not 1 <= n_past < train_frames:
            raise UserError(
                f"config.data.n_past={n_past} must leave frames to predict (clips of "
                f"{train_frames} frames in training)"
            )
        self.mme, self.car, self.stage, self.tx = mme, car, stage, tx
        self.n_past, self.train_frames = n_past, train_frames
        self.frame_scale, self.smooth_weight = frame_scale, smooth_weight
        self.teacher_forcing = teacher_forcing
        self.frozen_mme = frozen_mme
        self.sample_clips, self.fps = sample_clips, fps
        self.unroll = unroll
        if unroll < mcav_model.AUTO_UNROLL:
            raise UserError(
                f"config.model.scan_unroll={unroll} must be >= -1 (steps per loop iteration; "
                "0 unrolls the time loops, -1 unrolls them on CPU only)"
            )
        self._predict_first = jax.jit(self._first_clips, static_argnums=2)

    @classmethod
    def from_config(
        cls, config, stats=None, *, load_mme: bool = True, dry_run: bool = False
    ) -> MCAVTask:
        """Builds the stage `config.stage` of an experiment config (`configs/mcav_*.py`).

        Stage "refine" reads MME from `config.motion.workdir` (`load_motion`) unless
        `load_mme` is False: enough to predict from a trained state, which carries its MME
        (evaluation), but such a task cannot `init`. `dry_run` (compiling only,
        `launch/compile_check.py`): with no `config.motion.workdir`, a zero MME of the
        right shapes stands in (`stand_in_mme`).
        """
        del stats  # MCAV needs no dataset statistics
        if config.stage not in STAGES:
            raise UserError(f"config.stage must be one of {STAGES}, got {config.stage!r}")
        mme, car = make_model(config, jnp.dtype(config.dtype))
        o = config.optim
        lr = o.motion_lr if config.stage == "motion" else o.refine_lr
        if not lr > 0:
            field = "motion_lr" if config.stage == "motion" else "refine_lr"
            raise UserError(f"config.optim.{field}={lr!r}: the learning rate must be > 0")
        tx = optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
        needs_mme = config.stage == "refine" and load_mme
        stand_in = needs_mme and dry_run and not config.motion.workdir
        frozen = load_motion(config) if needs_mme and not stand_in else None
        d = config.data
        task = cls(
            mme,
            car,
            config.stage,
            tx,
            n_past=d.n_past,
            train_frames=d.n_past + d.n_future,
            frame_scale=d.frame_scale,
            smooth_weight=config.loss.smooth_weight,
            teacher_forcing=config.model.teacher_forcing,
            frozen_mme=frozen,
            sample_clips=config.train.sample_clips,
            fps=d.fps,
            unroll=config.model.scan_unroll,
        )
        if stand_in:
            task.frozen_mme = task.stand_in_mme()
        return task

    # ----------------------------------------------------------------------------- state
    def _dummy(self):
        m, t = self.mme, self.train_frames
        s = m.image_size
        x = jnp.zeros((1, t, s, s, m.channels), jnp.float32)
        f = jnp.zeros((1, t, s, s, 2), jnp.float32)
        a = jnp.zeros((1, t, *m.audio_shape), jnp.float32)
        return x, f, a

    def init(self, rng) -> dict:
        k_model, k_state = jax.random.split(rng)
        x, f, a = self._dummy()
        if self.stage == "motion":
            v = self.mme.init(k_model, x, f, a, train=False)
            return common.init_state(
                k_state,
                {"mme": v["params"]},
                self.tx.init({"mme": v["params"]}),
                batch_stats={"mme": v["batch_stats"]},
            )
        if self.frozen_mme is None:
            raise ValueError("stage 'refine' starts from a trained MME (`frozen_mme`)")
        motion = jnp.zeros((1, 2 * self.mme.dim), jnp.float32)
        v = self.car.init(k_model, x[:, 0], x[:, 0], motion, train=False)
        frozen = jax.tree.map(jnp.asarray, self.frozen_mme)
        return common.init_state(
            k_state,
            {"car": v["params"]},
            self.tx.init({"car": v["params"]}),
            batch_stats={"car": v["batch_stats"]},
            frozen={"mme": frozen},
        )

    def stand_in_mme(self) -> dict:
        """Zeros in the shapes of MME's {"params", "batch_stats"}: for compiling stage 2
        without a stage-1 run (`launch/compile_check.py`); set as `frozen_mme`."""
        x, f, a = self._dummy()
        shapes = jax.eval_shape(lambda: self.mme.init(jax.random.PRNGKey(0), x, f, a, train=False))
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))

    def trainable_params(self, state) -> dict:
        return state["params"]

    @staticmethod
    def variables(state) -> dict:
        """{"mme": {"params", "batch_stats"}, "car": ... (stage 2 only)} of a state."""
        if "frozen" in state:
            car = {"params": state["params"]["car"], "batch_stats": state["batch_stats"]["car"]}
            return {"mme": state["frozen"]["mme"], "car": car}
        return {
            "mme": {"params": state["params"]["mme"], "batch_stats": state["batch_stats"]["mme"]}
        }

    # ------------------------------------------------------------------------------ steps
    def _inputs(self, batch):
        x = frames01(batch["frames"], self.frame_scale)
        return x, batch["flow"].astype(jnp.float32), batch["audio"].astype(jnp.float32)

    def _use_gt(self, n: int, seen: int) -> jax.Array:
        return jnp.arange(n) < (n if self.teacher_forcing else seen)

    def train_step(self, state, batch):
        x, flow, audio = self._inputs(batch)
        step = self._motion_step if self.stage == "motion" else self._refine_step
        params, opt_state, stats, metrics = step(state, x, flow, audio)
        name = "mme" if self.stage == "motion" else "car"
        new = common.next_state(state, params, opt_state, batch_stats={name: stats})
        return new, common.float32_metrics(metrics)

    def _motion_step(self, state, x, flow, audio):
        t = x.shape[1]
        use_gt = self._use_gt(t - 1, self.n_past)
        target, on = flow[:, 1:], x[:, 1:]

        def loss_fn(params):
            v = {"params": params["mme"], "batch_stats": state["batch_stats"]["mme"]}
            out, stats = mcav_model.run_motion(
                self.mme, v, x, flow, audio, use_gt, train=True, unroll=self.unroll
            )
            pred = out["flow"]
            mse, smooth = flow_mse(pred, target), smoothness(pred, on)
            loss = (t - 1) * (mse + self.smooth_weight * smooth)
            err = aepe(pred, target)
            future = aepe(pred[:, self.n_past - 1 :], target[:, self.n_past - 1 :])
            metrics = dict(
                loss=loss,
                flow_mse=mse,
                smoothness=smooth,
                aepe=jnp.mean(err),
                aepe_future=jnp.mean(future),
            )
            return loss, (stats, metrics)

        (_, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        params, opt_state = common.apply_optimizer(
            self.tx, grads, state["opt_state"], state["params"]
        )
        return params, opt_state, stats, {**metrics, "grad_norm": optax.global_norm(grads)}

    def _refine_step(self, state, x, flow, audio):
        t, k = x.shape[1], self.n_past
        mme_v = state["frozen"]["mme"]
        use_gt_mme = jnp.arange(t - 1) < k
        m, _ = mcav_model.run_motion(
            self.mme, mme_v, x, flow, audio, use_gt_mme, unroll=self.unroll
        )
        m = jax.lax.stop_gradient(m)
        use_gt = self._use_gt(t - k, 1)
        target = x[:, k:]

        def loss_fn(params):
            v = {"params": params["car"], "batch_stats": state["batch_stats"]["car"]}
            out, stats = mcav_model.run_refine(
                self.car,
                v,
                self.mme,
                mme_v,
                x,
                m["flow"],
                m["audio"],
                k,
                use_gt,
                train=True,
                unroll=self.unroll,
            )
            mse = jnp.mean(jnp.square(out["frame"] - target))
            metrics = dict(
                loss=(t - k) * mse,
                mse=mse,
                warped_mse=jnp.mean(jnp.square(out["warped"] - target)),
                mme_mse=jnp.mean(jnp.square(m["frame"][:, k - 1 :] - target)),
            )
            return (t - k) * mse, (stats, metrics)

        (_, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        params, opt_state = common.apply_optimizer(
            self.tx, grads, state["opt_state"], state["params"]
        )
        return params, opt_state, stats, {**metrics, "grad_norm": optax.global_norm(grads)}

    # ---------------------------------------------------------------------- prediction
    def _first_clips(self, state, batch, clips: int):
        """The first `clips` clips of `batch` in [0, 1], their flows and their rollout."""
        x, flow, audio = self._inputs({k: batch[k][:clips] for k in ("frames", "flow", "audio")})
        return x, flow, self.predict(state, x, flow, audio)

    def predict(self, state, frames, flow, audio) -> dict:
        """The rollout: seen frames, their flows and all audio -> the future (eval mode).

        Args:
          state: a train state of either stage (or a run's restored state).
          frames: [B, T, S, S, C] in [0, 1] (only the first n_past read); flow: [B, T, S, S,
            2] ground-truth backward flows (only the first n_past read); audio [B, T, Fa, Ta].

        Returns:
          {"frames": [B, T-n_past, S, S, C], "flows": [B, T-n_past, S, S, 2], "warped"}
          (`avjax.models.mcav.model.predict`); a stage-1 state predicts by warping alone.
        """
        v = self.variables(state)
        car = self.car if "car" in v else None
        return mcav_model.predict(
            self.mme, car, v, frames, flow, audio, self.n_past, unroll=self.unroll
        )

    def sample_futures(self, state, frames, audio, rng, num_samples: int = 1, *, flow):
        """The evaluators' sampler form (`avjax.evals.video_prediction.SampleFn`): MCAV is
        deterministic, so the S "samples" are one prediction repeated: {"frames": [S, B,
        T-n_past, H, W, C], "flow": [S, B, T-n_past, H, W, 2]}. `flow` [B, T, H, W, 2] (the
        batch's ground truth; only the seen frames' are read) is required."""
        del rng
        out = self.predict(state, frames, flow.astype(jnp.float32), audio)
        rep = lambda v: jnp.broadcast_to(v, (num_samples, *v.shape))
        return {"frames": rep(out["frames"]), "flow": rep(out["flows"])}

    def eval_step(self, state, batch):
        """Over the eval length: frame MSE / SSIM (both ranges) / PSNR of the prediction and
        of the copy-last-frame baseline, AEPE of the predicted flows. Padding clips (`mask`
        0) are left out."""
        x, flow, audio = self._inputs(batch)
        k = self.n_past
        out = self.predict(state, x, flow, audio)
        gt = x[:, k:]
        copy = jnp.broadcast_to(x[:, k - 1 : k], gt.shape)
        mask = batch.get("mask", jnp.ones(x.shape[0], jnp.float32)).astype(jnp.float32)
        denom = jnp.maximum(mask.sum(), 1.0)
        mean = lambda v: jnp.sum(jnp.mean(v, axis=1) * mask) / denom
        res = {"aepe": mean(aepe(out["flows"], flow[:, k:], per_frame=True))}
        for name, p in (("", out["frames"]), ("copy_last_", copy)):
            res[f"{name}mse"] = mean(jnp.mean(jnp.square(p - gt), axis=(2, 3, 4)))
            res[f"{name}ssim"] = mean(iq.ssim_correct(p, gt))
            res[f"{name}ssim_paper"] = mean(iq.ssim_paper(p, gt))
            res[f"{name}psnr"] = mean(iq.psnr(p, gt))
        return common.float32_metrics(res)

    # --------------------------------------------------------------------------- samples
    def write_samples(self, state, batch, writer, step, out_dir: pathlib.Path):
        """Per clip: `clip<j>.png` (rows: true frames, predicted frames, true flow, predicted
        flow; time along the columns; seen frames are the truth in every row) and
        `clip<j>.gif` (the four side by side, green border on seen frames, red on predicted).
        """
        from avjax import images, multihost
        from avjax.video import io as video_io
        from avjax.video.flow import flow_to_rgb

        # Every process runs the rollout over the (global) batch; process 0 writes.
        x, true_flow, out = multihost.to_host(self._predict_first(state, batch, self.sample_clips))
        if not multihost.is_main():
            return
        n = self.n_past
        pred = np.concatenate([x[:, :n], np.asarray(out["frames"])], axis=1)
        pred_flow = np.concatenate([true_flow[:, :n], np.asarray(out["flows"])], axis=1)
        # One colour scale for both flows of all clips (a shared call).
        rgb = flow_to_rgb(np.stack([true_flow, pred_flow])).astype(np.float32) / 255.0
        out_dir.mkdir(parents=True, exist_ok=True)
        for j in range(len(x)):
            rows = [_rgb(x[j]), _rgb(pred[j]), rgb[0, j], rgb[1, j]]
            strip = _strip(rows)
            images.save_png(out_dir / f"clip{j}.png", strip, scale=2)
            grid = images.frame_grid(np.stack(rows)[None], n)  # [T, ...]: the four side by side
            video_io.write_gif(out_dir / f"clip{j}.gif", grid, fps=self.fps)
            if j == 0:
                writer.image(step, "samples/clip0", strip)
