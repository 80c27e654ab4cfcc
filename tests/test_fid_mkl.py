"""FID, MKL, ISC and KID (docs/specvqgan.md A7) against closed forms and hand-computed values."""

import math

import numpy as np
import pytest
import scipy.linalg

from avjax.metrics import fid, isc, kid, mkl


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


def _closed_form(mu1, s1, mu2, s2):
    """|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric eigh (not sqrtm)."""

    def sym_sqrt(s):
        w, v = np.linalg.eigh(s)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = sym_sqrt(s1)
    cross = np.trace(sym_sqrt(r1 @ s2 @ r1))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    assert abs(fid.frechet_distance(x, x)) < 1e-6


def test_fid_exact_stats_match_closed_form():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)  # non-commuting
    got = fid.frechet_distance_from_stats((mu1, s1), {"mu": mu2, "sigma": s2})
    assert got == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
    # Diagonal (commuting) case in closed form by hand: sum (m1-m2)^2 + (sqrt v1 - sqrt v2)^2.
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert fid.frechet_distance_from_stats((m1, np.diag(v1)), (m2, np.diag(v2))) == pytest.approx(
        want, abs=1e-10
    )


def test_fid_of_sampled_shifted_scaled_gaussians():
    """Samples from N(0, I) and N(mu, 4 I) in d=4: FID -> |mu|^2 + d (1 - 2)^2 = |mu|^2 + 4.

    Tolerance: with N = 100k the sample mean errs by ~sqrt(5/N) = 0.007 per dim and the
    covariance entries by ~sqrt(2/N) * var = 0.02 (var 4); the FID error is then a few 1e-2,
    so 0.1 is ~3 sigma while still 2% of the value.
    """
    rng = np.random.default_rng(2)
    d, n = 4, 100_000
    mu = np.array([1.0, -1.0, 2.0, 0.5])
    a = rng.normal(size=(n, d))
    b = mu + 2.0 * rng.normal(size=(n, d))
    want = float(mu @ mu) + d
    assert fid.frechet_distance(a, b) == pytest.approx(want, abs=0.1)
    # Precomputed stats give the same number as the features.
    stats = fid.feature_stats(a)
    assert fid.frechet_distance(stats, b) == pytest.approx(fid.frechet_distance(a, b), rel=1e-12)


def test_fid_stats_roundtrip_and_singular_fallback(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8))
    fid.save_stats(tmp_path / "s.npz", fid.feature_stats(x))
    loaded = fid.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.mu, x.mean(0))
    np.testing.assert_array_equal(loaded.sigma, np.cov(x, rowvar=False))
    # Rank-deficient covariances (fewer samples than dims): finite, >= 0 up to rounding.
    y = rng.normal(size=(5, 8)) + 1.0
    value = fid.frechet_distance(x[:5], y)
    assert math.isfinite(value) and value > -1e-6
    with pytest.raises(ValueError, match="mean vectors differ"):
        fid.frechet_distance(x, x[:, :4])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fid.frechet_distance(x[0], x)


def test_fid_matches_scipy_formula_on_features():
    """The official formula written out with scipy, on random features."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 6)), rng.gamma(2.0, size=(200, 6))
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * covmean)
    assert fid.frechet_distance(a, b) == pytest.approx(want, rel=1e-10)


# ---- MKL ----


def test_mkl_known_distributions():
    """p = (9, 12, 4)/25 against uniform q: KL(p || q) = sum p log(3 p) (+1e-6 in log q)."""
    p = np.array([9, 12, 4]) / 25
    q = np.ones(3) / 3
    got = mkl.mkl(np.log(p)[None], np.log(q)[None])
    want = float(np.sum(p * (np.log(p) - np.log(q + 1e-6))))
    assert got == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(0.0853, abs=1e-4)  # the value in the official kl.py comment
    # Direction: KL(p_real || p_fake), not the reverse.
    reverse = float(np.sum(q * (np.log(q) - np.log(p + 1e-6))))
    assert abs(got - reverse) > 1e-3


def test_mkl_groups_several_samples_per_video():
    rng = np.random.default_rng(5)
    c = 7
    real = rng.normal(size=(3, c))
    keys = ["vidA", "vidB", "vidC"]
    fakes, fake_keys, paths = [], [], []
    counts = {"vidA": 2, "vidB": 2, "vidC": 2}
    order = ["vidB", "vidA", "vidC", "vidA", "vidC", "vidB"]  # interleaved on purpose
    for i, k in enumerate(order):
        fakes.append(rng.normal(size=c))
        fake_keys.append(k)
        paths.append(f"/out/{k}_mel_sample_{i}.npy")
    fakes = np.stack(fakes)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    total = 0.0
    for f, k in zip(fakes, fake_keys):
        pr, pf = softmax(real[keys.index(k)]), softmax(f)
        total += np.sum(pr * (np.log(pr) - np.log(pf + 1e-6)))
    want = total / sum(counts.values())
    assert mkl.mkl(real, fakes, keys, fake_keys) == pytest.approx(want, rel=1e-9)
    # Keys from file names, as the official path_to_sharedkey.
    derived = [mkl.video_key(p) for p in paths]
    assert derived == fake_keys
    real_paths = [f"/data/melspec_10s_22050hz/{k}_mel.npy" for k in keys]
    assert [mkl.video_key(p) for p in real_paths] == keys
    # [R, S, C] positional form equals keyed grouping.
    grouped = np.stack([fakes[[i for i, k in enumerate(fake_keys) if k == r]] for r in keys])
    assert mkl.mkl(real, grouped) == pytest.approx(want, rel=1e-9)
    # Fakes of an unknown video are left out, as in the official code.
    extra = np.concatenate([fakes, rng.normal(size=(1, c))])
    assert mkl.mkl(real, extra, keys, [*fake_keys, "other"]) == pytest.approx(want, rel=1e-9)


def test_mkl_vas_keys_and_errors():
    classes = ["dog", "baby", "cough"]  # sorted: baby=cls_0, cough=cls_1, dog=cls_2
    fake = "/samples/cls_2/video_00001_mel_sample_3.npy"
    real = "/data/vas/features/dog/melspec_10s_22050hz/video_00001_mel.npy"
    assert mkl.video_key(fake, "vas", classes) == "dog_video_00001"
    assert mkl.video_key(real, "vas", classes) == "dog_video_00001"
    with pytest.raises(ValueError, match="class names"):
        mkl.video_key(fake, "vas")
    with pytest.raises(ValueError, match="no generated sample shares"):
        mkl.mkl(np.zeros((1, 3)), np.zeros((1, 3)), ["a"], ["b"])
    with pytest.raises(ValueError, match=r"\[R, S, C\]"):
        mkl.mkl(np.zeros((2, 3)), np.zeros((3, 3)))


# ---- ISC and KID ----


def test_inception_score_extremes():
    c = 10
    # Confident and uniformly spread over classes: IS -> number of classes.
    confident = np.tile(np.eye(c) * 50.0, (20, 1))  # each chunk of 20 holds every class twice
    mean, std = isc.inception_score(confident, splits=10, shuffle=False)
    assert mean == pytest.approx(c, rel=1e-6) and std < 1e-6
    # Shuffling uses RandomState(2020) before chunking.
    perm = np.random.RandomState(2020).permutation(len(confident))
    assert isc.inception_score(confident) == isc.inception_score(confident[perm], shuffle=False)
    # Identical predictions: IS = 1.
    same = np.tile(np.arange(c, dtype=float), (100, 1))
    assert isc.inception_score(same)[0] == pytest.approx(1.0, abs=1e-12)


def test_kid_unbiased_mmd_near_zero_and_positive_for_shift():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    mean_same, _ = kid.kernel_distance(a, b, subsets=10, subset_size=200)
    mean_shift, _ = kid.kernel_distance(a, b + 1.0, subsets=10, subset_size=200)
    assert abs(mean_same) < 0.02 and mean_shift > 0.5
    # Unbiased MMD^2 written out for one small pair.
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3
    m = 5
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    want = (sxx + syy) / (m * (m - 1)) - 2 * sxy / m**2
    assert kid.polynomial_mmd(x, y) == pytest.approx(want, rel=1e-10)
