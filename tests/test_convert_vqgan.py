"""Torch -> Flax import of SpecVQGAN codebook checkpoints, checked on outputs.

The state dicts are built from a description of the torch module structure (the
`__init__` loops of `specvqgan/modules/diffusionmodules/model.py` and the discriminator),
and the converted Flax model is compared with an independent NCHW numpy forward pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.convert.specvqgan import vqgan_from_torch
from avjax.models.specvqgan.discriminator import NLayerDiscriminator
from avjax.models.specvqgan.vqgan import VQGAN

TINY = dict(
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=32,
    in_channels=1,
    out_ch=1,
    z_channels=8,
    embed_dim=4,
    n_embed=16,
    num_groups=4,
)
FULL = dict(
    ch=128,
    ch_mult=(1, 1, 2, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(53,),
    resolution=848,
    in_channels=1,
    out_ch=1,
    z_channels=256,
    embed_dim=256,
    n_embed=1024,
)


# --- torch key layout -----------------------------------------------------------------------


def torch_vqgan_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Torch `VQModel` state-dict keys and shapes (without the loss), as built by torch."""
    keys = {}

    def conv(name, o, i, k):
        keys[f"{name}.weight"] = (o, i, k, k)
        keys[f"{name}.bias"] = (o,)

    def norm(name, c):
        keys[f"{name}.weight"] = (c,)
        keys[f"{name}.bias"] = (c,)

    def res(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", o, i, 3)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o, 3)
        if i != o:
            conv(f"{name}.nin_shortcut", o, i, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{n}", c, c, 1)

    ch, mult, nrb, attn_res = (
        cfg["ch"],
        cfg["ch_mult"],
        cfg["num_res_blocks"],
        cfg["attn_resolutions"],
    )
    n = len(mult)
    # Encoder.
    conv("encoder.conv_in", ch, cfg["in_channels"], 3)
    curr, in_mult = cfg["resolution"], (1, *mult)
    for i in range(n):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if curr in attn_res:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            curr //= 2
    res("encoder.mid.block_1", block_in, block_in)
    attn("encoder.mid.attn_1", block_in)
    res("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", cfg["z_channels"], block_in, 3)
    # Decoder.
    block_in, curr = ch * mult[-1], cfg["resolution"] // 2 ** (n - 1)
    conv("decoder.conv_in", block_in, cfg["z_channels"], 3)
    res("decoder.mid.block_1", block_in, block_in)
    attn("decoder.mid.attn_1", block_in)
    res("decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(n)):
        block_out = ch * mult[i]
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if curr in attn_res:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            curr *= 2
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", cfg["out_ch"], block_in, 3)
    keys["quantize.embedding.weight"] = (cfg["n_embed"], cfg["embed_dim"])
    conv("quant_conv", cfg["embed_dim"], cfg["z_channels"], 1)
    conv("post_quant_conv", cfg["z_channels"], cfg["embed_dim"], 1)
    return keys


def torch_disc_shapes(ndf=64, n_layers=3, in_ch=1) -> dict[str, tuple[int, ...]]:
    """`loss.discriminator.main.*` keys of torch's NLayerDiscriminator (BatchNorm2d)."""
    p = "loss.discriminator.main"
    keys = {f"{p}.0.weight": (ndf, in_ch, 4, 4), f"{p}.0.bias": (ndf,)}
    idx, mult = 2, 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        keys[f"{p}.{idx}.weight"] = (ndf * mult, ndf * prev, 4, 4)
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            keys[f"{p}.{idx + 1}.{leaf}"] = () if leaf == "num_batches_tracked" else (ndf * mult,)
        idx += 3
    keys[f"{p}.{idx}.weight"] = (1, ndf * mult, 4, 4)
    keys[f"{p}.{idx}.bias"] = (1,)
    return keys


def random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if key.endswith("num_batches_tracked"):
            sd[key] = np.array(7, np.int64)
        elif key == "quantize.embedding.weight":
            sd[key] = rng.standard_normal(shape).astype(np.float32)
        elif leaf == "weight" and len(shape) == 4:
            fan_in = np.prod(shape[1:])
            sd[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        elif leaf == "weight":  # GroupNorm / BatchNorm scale
            sd[key] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif leaf == "running_var":
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return sd


def test_key_layout_matches_official_counts():
    shapes = torch_vqgan_shapes(FULL)
    assert sum(k.startswith("encoder.") for k in shapes) == 144
    assert sum(k.startswith("decoder.") for k in shapes) == 194
    assert len(torch_disc_shapes()) == 22
    assert shapes["encoder.down.4.attn.0.q.weight"] == (512, 512, 1, 1)
    assert shapes["decoder.up.3.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)


# --- numpy reference of the torch forward (NCHW, float64) ------------------------------------


def np_conv(x, w, b=None, stride=1, pad=((1, 1), (1, 1))):
    """torch Conv2d (cross-correlation) with explicit (top, bottom), (left, right) padding."""
    xp = np.pad(x, ((0, 0), (0, 0), *pad))
    o, _, kh, kw = w.shape
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += np.einsum("nihw,oi->nohw", patch, w[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def np_group_norm(x, groups, w, b, eps=1e-6):
    n, c, h, wd = x.shape
    g = x.reshape(n, groups, c // groups, h, wd)
    g = (g - g.mean((2, 3, 4), keepdims=True)) / np.sqrt(g.var((2, 3, 4), keepdims=True) + eps)
    return g.reshape(n, c, h, wd) * w[None, :, None, None] + b[None, :, None, None]


def swish(x):
    return x / (1 + np.exp(-x))


class TorchRef:
    """The official forward pass, written against the torch state dict in NCHW."""

    def __init__(self, sd, cfg):
        self.sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
        self.cfg = cfg

    def conv(self, name, x, **kw):
        return np_conv(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], **kw)

    def norm(self, name, x):
        g = self.cfg["num_groups"]
        return np_group_norm(x, g, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"])

    def res(self, name, x):
        h = self.conv(f"{name}.conv1", swish(self.norm(f"{name}.norm1", x)))
        h = self.conv(f"{name}.conv2", swish(self.norm(f"{name}.norm2", h)))
        if f"{name}.nin_shortcut.weight" in self.sd:
            x = self.conv(f"{name}.nin_shortcut", x, pad=((0, 0), (0, 0)))
        return x + h

    def attn(self, name, x):
        b, c, hh, ww = x.shape
        h = self.norm(f"{name}.norm", x)
        q, k, v = (self.conv(f"{name}.{n}", h, pad=((0, 0), (0, 0))) for n in "qkv")
        q = q.reshape(b, c, hh * ww).transpose(0, 2, 1)  # b, hw, c
        w_ = q @ k.reshape(b, c, hh * ww) * c**-0.5  # b, hw(q), hw(k)
        w_ = np.exp(w_ - w_.max(2, keepdims=True))
        w_ = w_ / w_.sum(2, keepdims=True)
        h = (v.reshape(b, c, hh * ww) @ w_.transpose(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.conv(f"{name}.proj_out", h, pad=((0, 0), (0, 0)))

    def mid(self, name, x):
        x = self.res(f"{name}.block_1", x)
        return self.res(f"{name}.block_2", self.attn(f"{name}.attn_1", x))

    def encoder(self, x):
        cfg, n = self.cfg, len(self.cfg["ch_mult"])
        h = self.conv("encoder.conv_in", x)
        for i in range(n):
            for j in range(cfg["num_res_blocks"]):
                h = self.res(f"encoder.down.{i}.block.{j}", h)
                if f"encoder.down.{i}.attn.{j}.q.weight" in self.sd:
                    h = self.attn(f"encoder.down.{i}.attn.{j}", h)
            if i != n - 1:  # F.pad(x, (0, 1, 0, 1)): right and bottom
                h = self.conv(
                    f"encoder.down.{i}.downsample.conv", h, stride=2, pad=((0, 1), (0, 1))
                )
        h = self.mid("encoder.mid", h)
        return self.conv("encoder.conv_out", swish(self.norm("encoder.norm_out", h)))

    def decoder(self, z):
        cfg, n = self.cfg, len(self.cfg["ch_mult"])
        h = self.mid("decoder.mid", self.conv("decoder.conv_in", z))
        for i in reversed(range(n)):
            for j in range(cfg["num_res_blocks"] + 1):
                h = self.res(f"decoder.up.{i}.block.{j}", h)
                if f"decoder.up.{i}.attn.{j}.q.weight" in self.sd:
                    h = self.attn(f"decoder.up.{i}.attn.{j}", h)
            if i != 0:
                h = h.repeat(2, axis=2).repeat(2, axis=3)
                h = self.conv(f"decoder.up.{i}.upsample.conv", h)
        return self.conv("decoder.conv_out", swish(self.norm("decoder.norm_out", h)))

    def quantize(self, z):
        """Returns z_q (NCHW), loss, indices [B, h, w] and the smallest argmin margin."""
        e = self.sd["quantize.embedding.weight"]
        zh = z.transpose(0, 2, 3, 1)
        flat = zh.reshape(-1, e.shape[1])
        d = (flat**2).sum(1, keepdims=True) + (e**2).sum(1) - 2 * flat @ e.T
        idx = d.argmin(1)
        srt = np.sort(d, axis=1)
        z_q = e[idx].reshape(zh.shape)
        loss = (1 + 0.25) * np.mean((z_q - zh) ** 2)
        return (
            z_q.transpose(0, 3, 1, 2),
            loss,
            idx.reshape(zh.shape[:3]),
            (srt[:, 1] - srt[:, 0]).min(),
        )

    def vqgan(self, x):
        h = self.conv("quant_conv", self.encoder(x), pad=((0, 0), (0, 0)))
        z_q, loss, idx, margin = self.quantize(h)
        xrec = self.decoder(self.conv("post_quant_conv", z_q, pad=((0, 0), (0, 0))))
        return xrec, loss, idx, margin

    def disc(self, x, n_layers=3):
        p = "loss.discriminator.main"
        sd = self.sd
        lrelu = lambda t: np.where(t > 0, t, 0.2 * t)
        h = lrelu(np_conv(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], stride=2))
        idx = 2
        for n in range(1, n_layers + 1):
            h = np_conv(h, sd[f"{p}.{idx}.weight"], stride=2 if n < n_layers else 1)
            bn = lambda leaf, i=idx: sd[f"{p}.{i + 1}.{leaf}"][None, :, None, None]
            h = (h - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-5)
            h = lrelu(h * bn("weight") + bn("bias"))
            idx += 3
        return np_conv(h, sd[f"{p}.{idx}.weight"], sd[f"{p}.{idx}.bias"])


# --- tests ------------------------------------------------------------------------------------


def test_tiny_outputs_match_torch_reference():
    shapes = {**torch_vqgan_shapes(TINY), **torch_disc_shapes(ndf=8)}
    sd = random_state_dict(shapes)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = np.ones((1, 64, 1, 1), np.float32)
    model = VQGAN(**TINY)
    disc = NLayerDiscriminator(ndf=8)
    out = vqgan_from_torch({"state_dict": sd}, model, disc)

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 16, 32, 1)).astype(np.float32)
    xd = rng.standard_normal((2, 32, 32, 1)).astype(np.float32)

    @jax.jit
    def run(ae, dv, x, xd):
        xrec, qloss, info = model.apply({"params": ae}, x)
        return xrec, qloss, info["indices"], disc.apply(dv, xd)

    xrec, qloss, indices, logits = run(out["ae"], out["disc"], x, xd)

    ref = TorchRef(sd, TINY)
    ref_xrec, ref_loss, ref_idx, margin = ref.vqgan(x.transpose(0, 3, 1, 2))
    assert margin > 1e-4, "reference argmin too close to a tie for a float32 comparison"
    np.testing.assert_array_equal(indices, ref_idx)
    np.testing.assert_allclose(qloss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(xrec, ref_xrec.transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    ref_logits = ref.disc(xd.transpose(0, 3, 1, 2))
    assert logits.shape == (2, 2, 2, 1)
    np.testing.assert_allclose(logits, ref_logits.transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_full_config_conversion_vas():
    """Official layout at full size (VAS, n_embed 128 inferred); zero-stride arrays, no compute."""
    shapes = {**torch_vqgan_shapes({**FULL, "n_embed": 128}), **torch_disc_shapes()}
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    out = vqgan_from_torch(sd)
    model = VQGAN(n_embed=128)
    want = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 80, 848, 1), jnp.float32)
    )
    got_shapes = jax.tree.map(lambda a: a.shape, out["ae"])
    assert got_shapes == jax.tree.map(lambda a: a.shape, want["params"])
    assert out["ae"]["encoder"]["down_0"]["block_1"]["norm1"]["scale"].shape == (128,)
    assert out["ae"]["encoder"]["mid"]["attn_1"]["q"]["kernel"].shape == (1, 1, 512, 512)
    assert out["ae"]["decoder"]["conv_out"]["kernel"].shape == (3, 3, 128, 1)
    assert set(out["disc"]["batch_stats"]) == {"main_3", "main_6", "main_9"}
    assert out["disc"]["params"]["main_11"]["kernel"].shape == (4, 4, 512, 1)


def test_no_discriminator_keys():
    sd = random_state_dict(torch_vqgan_shapes(TINY))
    assert vqgan_from_torch(sd, VQGAN(**TINY))["disc"] is None


def test_errors_name_the_keys():
    sd = random_state_dict({**torch_vqgan_shapes(TINY), **torch_disc_shapes(ndf=8)})
    model, disc = VQGAN(**TINY), NLayerDiscriminator(ndf=8)
    bad = dict(sd)
    del bad["encoder.down.1.attn.0.q.bias"]
    del bad["loss.discriminator.main.3.running_var"]
    bad["decoder.conv_out.weight"] = np.zeros((1, 16, 3, 2), np.float32)
    bad["encoder.extra.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(ValueError) as err:
        vqgan_from_torch(bad, model, disc)
    msg = str(err.value)
    assert "missing keys (2)" in msg
    assert "encoder.down.1.attn.0.q.bias" in msg
    assert "loss.discriminator.main.3.running_var" in msg
    assert "unexpected keys (1)" in msg and "encoder.extra.weight" in msg
    assert "decoder.conv_out.weight: got (1, 16, 3, 2), expected (1, 16, 3, 3)" in msg
