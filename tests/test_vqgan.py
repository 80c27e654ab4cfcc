"""SpecVQGAN autoencoder, quantizer and patch discriminator: hand values, shapes, counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from avjax.models.specvqgan.discriminator import NLayerDiscriminator
from avjax.models.specvqgan.vqgan import VQGAN, VectorQuantizer
from avjax.nn.blocks import ResnetBlock

TINY = dict(
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=32,
    z_channels=16,
    embed_dim=8,
    n_embed=16,
)
# RngBitGenerator keys: init compiles several times faster on CPU than with threefry.
KEY = jax.random.key(0, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --- quantizer ---------------------------------------------------------------------------

CODEBOOK = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
Z = jnp.array([[[[0.9, 0.2], [0.1, 0.8]]]])  # [B=1, h=1, w=2, C=2]


def test_quantizer_hand_values_and_gradients():
    vq = VectorQuantizer(n_e=3, e_dim=2, beta=0.25)

    def run(emb, z):
        return vq.apply({"params": {"embedding": emb}}, z)

    z_q, loss, info = run(CODEBOOK, Z)
    # Nearest codes: (0.9, 0.2) -> e1 (d 0.05), (0.1, 0.8) -> e2 (d 0.05).
    np.testing.assert_array_equal(info["indices"], [[[1, 2]]])
    assert info["indices"].dtype == jnp.int32
    np.testing.assert_allclose(z_q, [[[[1.0, 0.0], [0.0, 1.0]]]], atol=1e-7)
    # z_q - z = [[.1, -.2], [-.1, .2]]: mean square 0.025; loss = 0.025 + 0.25 * 0.025.
    np.testing.assert_allclose(loss, 0.03125, rtol=1e-6)
    np.testing.assert_allclose(info["perplexity"], 2.0, rtol=1e-5)  # two codes, equal use
    np.testing.assert_allclose(
        vq.apply(
            {"params": {"embedding": CODEBOOK}}, info["indices"], method=VectorQuantizer.embed
        ),
        z_q,
        atol=1e-7,
    )

    # Straight-through: a downstream loss sum(w * z_q) has gradient w wrt z, none wrt codes.
    w = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    g_emb, g_z = jax.grad(lambda e, z: jnp.sum(w * run(e, z)[0]), argnums=(0, 1))(CODEBOOK, Z)
    np.testing.assert_allclose(g_z, w, atol=1e-7)
    np.testing.assert_allclose(g_emb, 0.0, atol=1e-7)

    # VQ loss gradients (N = 4 elements): commitment d/dz = -2 (z_q - z) / N,
    # codebook d/de_k = beta * 2 (e_k - z) / N summed over the vectors assigned to e_k.
    g_emb, g_z = jax.grad(lambda e, z: run(e, z)[1], argnums=(0, 1))(CODEBOOK, Z)
    diff = np.array([[0.1, -0.2], [-0.1, 0.2]])
    np.testing.assert_allclose(g_z[0, 0], -2 * diff / 4, atol=1e-6)
    want_emb = np.zeros((3, 2))
    want_emb[1] = 0.25 * 2 * diff[0] / 4
    want_emb[2] = 0.25 * 2 * diff[1] / 4
    np.testing.assert_allclose(g_emb, want_emb, atol=1e-6)


def test_quantizer_init_range():
    vq = VectorQuantizer(n_e=128, e_dim=4)
    emb = vq.init(KEY, jnp.zeros((1, 1, 1, 4)))["params"]["embedding"]
    assert emb.shape == (128, 4)
    assert float(jnp.max(jnp.abs(emb))) <= 1 / 128


# --- tiny autoencoder ----------------------------------------------------------------------


def _numpy_init(module, x_shape, seed=0):
    """Variables with the module's shapes, filled from numpy: no init compile (slow on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, KEY, jax.ShapeDtypeStruct(x_shape, jnp.float32))

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            bound = 1 / np.sqrt(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)
        if name == "scale":
            return jnp.asarray(1 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_torch_default_conv_init():
    block = ResnetBlock(16, num_groups=4)
    variables = block.init(KEY, jnp.zeros((1, 4, 4, 8)))["params"]
    for name, fan_in in (("conv1", 8 * 9), ("conv2", 16 * 9), ("nin_shortcut", 8)):
        for leaf in ("kernel", "bias"):
            w = variables[name][leaf]
            assert float(jnp.max(jnp.abs(w))) <= 1 / np.sqrt(fan_in) + 1e-7
            assert float(jnp.std(w)) > 0.3 / np.sqrt(fan_in)  # U(±b) has std b / sqrt(3)


@pytest.fixture(scope="module")
def tiny():
    model = VQGAN(**TINY)
    x = jax.random.uniform(jax.random.key(1, impl="rbg"), (2, 16, 32, 1), minval=-1.0, maxval=1.0)
    variables = _numpy_init(model, x.shape)

    @jax.jit
    def run(variables, x):
        def f(m, x):
            z_q, _, info = m.encode(x)
            return (
                m(x),
                z_q,
                m.decode(z_q),
                m.decode_code(info["indices"]),
                m.quantize.embed(info["indices"]),
            )

        return model.apply(variables, x, method=f)

    return model, variables, run(variables, x)


def test_tiny_shapes_and_names(tiny):
    _, variables, ((xrec, qloss, info), z_q, *_) = tiny
    assert xrec.shape == (2, 16, 32, 1)
    assert qloss.shape == ()
    assert z_q.shape == (2, 8, 16, 8)
    assert info["indices"].shape == (2, 8, 16)
    assert info["indices"].dtype == jnp.int32
    assert info["perplexity"].shape == ()
    flat = {
        "/".join(k): v.shape for k, v in traverse_util.flatten_dict(variables["params"]).items()
    }
    # Width 32 at level 0, 16 at level 1 -> attention only at encoder down_1 / decoder up_1.
    assert "encoder/down_1/attn_0/q/kernel" in flat
    assert "decoder/up_1/attn_1/proj_out/kernel" in flat
    assert not any(k.startswith(("encoder/down_0/attn", "decoder/up_0/attn")) for k in flat)
    assert flat["encoder/down_0/block_0/norm1/scale"] == (32,)
    assert flat["encoder/down_1/block_0/nin_shortcut/kernel"] == (1, 1, 32, 64)
    assert flat["encoder/down_0/downsample/conv/kernel"] == (3, 3, 32, 32)
    assert flat["encoder/mid/attn_1/q/kernel"] == (1, 1, 64, 64)
    assert flat["decoder/up_1/upsample/conv/kernel"] == (3, 3, 64, 64)
    assert flat["decoder/up_0/block_0/nin_shortcut/kernel"] == (1, 1, 64, 32)
    assert flat["decoder/conv_out/kernel"] == (3, 3, 32, 1)
    assert flat["quantize/embedding"] == (16, 8)
    assert flat["quant_conv/kernel"] == (1, 1, 16, 8)
    assert flat["post_quant_conv/kernel"] == (1, 1, 8, 16)


def test_tiny_round_trip(tiny):
    _, _, ((xrec, _, _), z_q, dec, dec_code, emb) = tiny
    np.testing.assert_allclose(emb, z_q, atol=1e-6)  # straight-through forward value
    np.testing.assert_allclose(dec, xrec, atol=1e-6)
    np.testing.assert_allclose(dec_code, dec, atol=1e-5)
    assert np.isfinite(np.asarray(xrec)).all()


# --- full configs, shapes only ---------------------------------------------------------------


@pytest.mark.parametrize("n_embed,total", [(1024, 72_137_089), (128, 71_907_713)])
def test_full_config_param_counts(n_embed, total):
    model = VQGAN(n_embed=n_embed)
    x = jax.ShapeDtypeStruct((2, 80, 848, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    p = variables["params"]
    assert _count(p) == total
    assert _count(p["encoder"]) == 29_295_872
    assert _count(p["decoder"]) == 42_447_489
    assert _count(p["quant_conv"]) == _count(p["post_quant_conv"]) == 65_792
    # Attention at the 5x53 level only (tracked width 53): encoder down_4, decoder up_4.
    assert set(p["encoder"]["down_4"]) == {"block_0", "attn_0", "block_1", "attn_1"}
    assert "attn_0" not in p["encoder"]["down_3"]
    assert {f"attn_{j}" for j in range(3)} <= set(p["decoder"]["up_4"])
    assert "attn_0" not in p["decoder"]["up_3"]
    xrec, _, info = jax.eval_shape(model.apply, variables, x)
    assert xrec.shape == (2, 80, 848, 1)
    assert info["indices"].shape == (2, 5, 53)


def test_bf16_compute_keeps_f32_params():
    model = VQGAN(**TINY, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 16, 32, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    xrec, qloss, _ = jax.eval_shape(model.apply, variables, x)
    assert xrec.dtype == jnp.bfloat16
    assert qloss.dtype == jnp.float32


def test_bad_input_channels():
    with pytest.raises(ValueError, match="in_channels=1"):
        jax.eval_shape(VQGAN(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 32, 2)))


# --- discriminator --------------------------------------------------------------------------


def test_discriminator_full_shape_and_count():
    disc = NLayerDiscriminator()
    x = jax.ShapeDtypeStruct((2, 80, 848, 1), jnp.float32)
    variables = jax.eval_shape(disc.init, jax.random.key(0), x)
    assert _count(variables["params"]) == 2_763_585
    assert set(variables["params"]) == {f"main_{i}" for i in (0, 2, 3, 5, 6, 8, 9, 11)}
    assert set(variables["batch_stats"]) == {"main_3", "main_6", "main_9"}
    assert jax.eval_shape(disc.apply, variables, x).shape == (2, 8, 104, 1)


def test_discriminator_train_updates_batch_stats():
    disc = NLayerDiscriminator(ndf=8)
    x = jax.random.normal(KEY, (2, 32, 32, 1))

    @jax.jit
    def run(x):
        variables = disc.init(KEY, x)
        return variables, disc.apply(variables, x, train=True, mutable=["batch_stats"])

    variables, (logits, updates) = run(x)
    p = variables["params"]
    assert float(jnp.std(p["main_2"]["kernel"])) == pytest.approx(0.02, rel=0.2)
    assert float(jnp.mean(p["main_3"]["scale"])) == pytest.approx(1.0, abs=0.02)
    assert logits.shape == (2, 2, 2, 1)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    # Running mean moves 10% of the way (torch momentum 0.1) towards the batch mean.
    conv = lambda h, w: jax.lax.conv_general_dilated(
        h, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.leaky_relu(conv(x, p["main_0"]["kernel"]) + p["main_0"]["bias"], 0.2)
    h = conv(h, p["main_2"]["kernel"])
    np.testing.assert_allclose(
        updates["batch_stats"]["main_3"]["mean"], 0.1 * h.mean((0, 1, 2)), atol=1e-6
    )
