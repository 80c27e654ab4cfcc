"""Video features -> codebook codes -> log-mel: a trained SpecVQGAN transformer + codebook.

  v2s = Video2Sound.from_workdir("workdirs/transformer_vggsound")
  mels = v2s.sample_mels(feats, jax.random.PRNGKey(0), num_samples=4)   # [4B, 80, 848]
  waves = avjax.audio.vocoder.load_vocoder(None)(mels)                  # Griffin-Lim

Codes are column-major sequences (`permuter`), `rows` (5) tokens per time column; one
column of the paper's codebook is 16 mel frames and 4 video-feature frames (21.5 fps).
`num_columns=53` is the paper's 10 s (848 frames); more columns slide the window
(`sampling.sample_long`) over per-frame features, `feature_frames_per_column` per column.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from avjax.errors import UserError
from avjax.models.specvqgan import permuter, sampling
from avjax.models.specvqgan.codec import Codec
from avjax.models.specvqgan.gpt import GPT, make_model
from avjax.nn import quantize
from avjax.runs import load_run, read_config


@dataclasses.dataclass
class Video2Sound:
    """A transformer (`model`, `params`), its condition length and the frozen codebook."""

    model: GPT
    params: dict
    codec: Codec
    feat_len: int  # feature rows of the condition (data.feat_sample_size), 0 without features
    rows: int = 5  # code rows (frequency) of the codebook grid
    window_columns: int = 53  # code columns of one training window (10 s)
    sampling_defaults: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._decode = jax.jit(
            lambda p, i: self.codec.model.apply({"params": p}, i, method="decode_code")[..., 0]
        )

    @classmethod
    def from_workdir(
        cls,
        transformer_workdir: str | pathlib.Path,
        codebook_workdir: str | pathlib.Path | None = None,
        weights_dtype: str | None = None,
    ) -> Video2Sound:
        """Loads a transformer run (config.json + latest checkpoint) and its codebook.

        Args:
          transformer_workdir: a `task='transformer'` run (trained, or imported with
            `launch/convert_checkpoint.py --kind transformer`).
          codebook_workdir: the codebook run; default the run's `codebook.workdir`.
          weights_dtype: "float32", "bfloat16" or "int8" Dense kernels for sampling (fewer
            bytes read per token; `sampling.for_inference`); default bfloat16 on GPU / TPU,
            float32 on CPU. The checkpoint stays float32; conversion happens here.
        """
        config = read_config(transformer_workdir, "transformer")
        codebook_workdir = codebook_workdir or config.codebook.workdir
        if not codebook_workdir:
            raise UserError(
                f"{transformer_workdir}/config.json names no codebook.workdir; pass "
                "codebook_workdir (--codebook_workdir)"
            )
        model = make_model(config.model)
        params = load_run(transformer_workdir, "transformer").params
        weights_dtype = weights_dtype or quantize.default_weights_dtype()
        return cls.from_parts(
            config, model, params, Codec.from_workdir(codebook_workdir), weights_dtype
        )

    @classmethod
    def from_parts(
        cls, config, model: GPT, params: dict, codec: Codec, weights_dtype: str = "float32"
    ) -> Video2Sound:
        """A transformer run's `config`, its model and (float32) params, and its codebook.

        The trainer's in-loop evaluator builds one from the current state this way.
        """
        try:
            model, params = sampling.for_inference(model, params, weights_dtype)
        except ValueError as e:
            raise UserError(str(e)) from None
        grid = jax.eval_shape(
            lambda p, x: codec.model.apply({"params": p}, x, method="encode")[2]["indices"],
            codec.params,
            jax.ShapeDtypeStruct((1, codec.spec.n_mels, codec.crop_frames, 1), jnp.float32),
        ).shape[1:]
        if codec.n_embed != model.vocab_size:
            raise ValueError(
                f"the codebook has {codec.n_embed} codes, the transformer's "
                f"vocab_size is {model.vocab_size}"
            )
        s = config.sampling
        return cls(
            model,
            params,
            codec,
            feat_len=int(config.data.feat_sample_size) if model.feat_dim else 0,
            rows=int(grid[0]),
            window_columns=int(grid[1]),
            sampling_defaults={k: s[k] for k in ("temperature", "top_k", "top_p") if k in s},
        )

    @property
    def frames_per_column(self) -> int:
        """Mel frames per code column (16 for the paper's codebook, 4 for `:tiny`)."""
        return self.codec.crop_frames // self.window_columns

    @property
    def feature_frames_per_column(self) -> float:
        """Video-feature frames (21.5 fps) in the seconds of one code column: 3.99 for the
        paper's codebook (16 hops of 256 samples at 22050 Hz), 1.0 for `:tiny` (4 hops)."""
        spec = self.codec.spec
        seconds = self.frames_per_column * spec.hop_length / spec.sample_rate
        return seconds * sampling.FEATURE_FPS

    @property
    def window_seconds(self) -> float:
        """Seconds of audio in one training window (9.85 s for the paper's 848 frames)."""
        spec = self.codec.spec
        return self.codec.crop_frames * spec.hop_length / spec.sample_rate

    def num_columns(self, seconds: float | None = None) -> int:
        """Code columns for `seconds` of audio (None: one window, 53 columns = 848 frames)."""
        if seconds is None:
            return self.window_columns
        if not seconds > 0:
            raise ValueError(f"seconds={seconds} must be positive")
        spec = self.codec.spec
        hops = seconds * spec.sample_rate / spec.hop_length
        return max(1, int(hops / self.frames_per_column + 1e-6))  # + rounding error

    def sample_codes(
        self,
        feats,
        rng,
        num_samples: int = 1,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        prime=None,
        labels=None,
        num_columns: int | None = None,
        hop_columns: int | None = None,
    ) -> np.ndarray:
        """Samples code sequences for B conditions.

        Args:
          feats: [B, Tc, D] (the model's condition, e.g. 212 frames) or per-frame features
            [B, >= feature_frames_per_column * num_columns, D] for long audio (see
            `sampling.sample_long`); None for a class-only model.
          rng: PRNG key (same key, same samples).
          num_samples: samples per condition, drawn in parallel.
          temperature, top_k, top_p: default to the run's `config.sampling`.
          prime: [B, P] column-major codes every sample starts with (e.g. a real clip's first
            columns), or None.
          labels: [B] class ids for class-conditioned models.
          num_columns: code columns to generate (default one window, 53 = 10 s).
          hop_columns: window hop for long audio (default half a window).

        Returns:
          int32 [B * num_samples, rows * num_columns]; row b * num_samples + s is sample s of
          condition b.
        """
        d = self.sampling_defaults
        kw = dict(
            temperature=d.get("temperature", 1.0) if temperature is None else temperature,
            top_k=d.get("top_k", 0) if top_k is None else top_k,
            top_p=d.get("top_p", 1.0) if top_p is None else top_p,
        )
        if feats is not None:
            feats = jnp.asarray(feats, jnp.float32)
            if feats.ndim != 3 or feats.shape[-1] != self.model.feat_dim:
                raise ValueError(
                    f"features must be [B, T, {self.model.feat_dim}], got {feats.shape}"
                )
        codes = sampling.sample_long(
            self.model,
            self.params,
            rng,
            feats,
            labels,
            prime,
            num_columns=num_columns or self.window_columns,
            rows=self.rows,
            window_columns=self.window_columns,
            hop_columns=hop_columns or max(1, self.window_columns // 2),
            num_samples=num_samples,
            feat_len=self.feat_len,
            frames_per_column=self.feature_frames_per_column,
            **kw,
        )
        return np.asarray(codes)

    def decode(self, codes) -> np.ndarray:
        """[N, rows * W] column-major codes -> mel01 [N, 80, 16 * W] in [0, 1] (clipped)."""
        codes = np.asarray(codes, np.int32)
        if codes.ndim != 2 or codes.shape[1] % self.rows:
            raise ValueError(f"codes must be [N, {self.rows} * W], got {codes.shape}")
        maps = permuter.from_sequence(codes, self.rows, codes.shape[1] // self.rows)
        x = self._decode(self.codec.params, jnp.asarray(maps))
        return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)

    def sample_mels(self, feats, rng, **kwargs) -> np.ndarray:
        """`decode(sample_codes(feats, rng, **kwargs))`: mel01 [B * num_samples, 80, T]."""
        return self.decode(self.sample_codes(feats, rng, **kwargs))
