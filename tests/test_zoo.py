"""The shipped MNIST model and classifier, FD-MNIST, and the zoo's error messages.

Thresholds are the values measured on the shipped checkpoints (see
``hso_jax/models/zoo/mnist-v3/MODEL_CARD.md``) with a margin. Full sample-quality numbers (100-step
DDIM samples judged by the classifier) are too slow for the suite; they are measured once by
``python -m hso_jax.models.train --evaluate hso_jax/models/zoo/mnist-v3`` and recorded in the model
card, and this file keeps cheaper checks of the same model.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.evaluation import fd_mnist
from hso_jax.models import classifier as clf
from hso_jax.models import load, load_mnist_digits
from hso_jax.models.train import MNIST_CONFIG, heldout_eps_mse
from hso_jax.models.unet import count_params, init_params, unet_fn
from hso_jax.models.zoo import MNIST_ID, ZOO_DIR

# Held-out eps-prediction MSE on the first 10 test digits of every class (100 digits, noise
# seed 1234): measured 0.0874, 0.0365, 0.0135, 0.000106 at steps 50, 200, 500, 900 (mnist-v3);
# thresholds are these x 1.25, rounded up. An untrained network scores ~1.0-1.4.
MSE_THRESHOLDS = {50: 0.110, 200: 0.046, 500: 0.017, 900: 0.000133}


@pytest.fixture(scope="module")
def model():
    return load("mnist")


@pytest.fixture(scope="module")
def test_digits():
    return load_mnist_digits("test")


def _subset(images, labels, per_class=10):
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return images[idx], labels[idx]


def test_load_mnist(model):
    assert isinstance(model, hj.Denoiser)
    assert model.noise is hj.noise.preset("ddpm")
    assert model.prediction == "eps"
    assert count_params(model.params) == 686_769  # diffusers' UNet2DModel(**config)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(model.params))
    assert load("mnist").fn is model.fn  # same function object -> shared jit caches


def test_mnist_digits_split():
    x_tr, y_tr = load_mnist_digits("train")
    x_te, y_te = load_mnist_digits("test")
    assert x_tr.shape == (4500, 28, 28, 1) and x_te.shape == (500, 28, 28, 1)
    assert np.all(np.bincount(y_te) == 50) and np.all(np.bincount(y_tr) == 450)
    assert x_tr.min() == -1.0 and x_tr.max() == 1.0 and x_tr.dtype == np.float32
    with pytest.raises(ValueError, match="split"):
        load_mnist_digits("val")


def test_heldout_eps_mse(model, test_digits):
    x, _ = _subset(*test_digits)
    mse = heldout_eps_mse(model.fn, model.params, x, steps=tuple(MSE_THRESHOLDS), batch=100)
    untrained = heldout_eps_mse(
        model.fn, init_params(MNIST_CONFIG, jax.random.key(0)), x, steps=(500,), batch=100
    )
    for k, thr in MSE_THRESHOLDS.items():
        assert mse[k] < thr, (k, mse[k], thr)
    assert mse[500] < 0.3 * untrained[500]


def test_denoised_digits_are_recognised(model, test_digits):
    """Cheap stand-in for the sample check: D(x_t) at step 300 keeps the digit's class.

    At step 300 (sigma = 0.78) the shipped model's denoised digits are classified correctly for
    49 of 50 (measured); threshold 90 %.
    """
    x, y = _subset(*test_digits, per_class=5)
    ns = model.noise
    t = jnp.float32(ns.t_from_index(300))
    eps = jax.random.normal(jax.random.key(0), x.shape, jnp.float32)
    xt = ns.alpha(t) * x + ns.sigma(t) * eps
    x0 = jax.jit(model.x0)(xt, t)
    probs = np.asarray(clf.mnist_probs(clf.load_classifier(), np.clip(x0, -1, 1)))
    assert np.mean(probs.argmax(-1) == y) >= 0.9


def test_ddim_samples_smoke(model):
    """A short DDIM run from noise is finite (quality is measured in the model card)."""
    ns = model.noise
    ts = ns.t_from_index(jnp.linspace(999.0, 0.0, 6)).astype(jnp.float32)
    x_T = ns.prior(jax.random.key(1), (4, 28, 28, 1), jnp.float32)
    x0 = jax.jit(lambda x: hj.sample(model, x, ts, hj.solvers.ddim()))(x_T)
    assert x0.shape == x_T.shape and x0.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x0)))


def test_classifier_accuracy(test_digits):
    x, y = test_digits
    probs = np.asarray(clf.mnist_probs(clf.load_classifier(), x))
    assert np.mean(probs.argmax(-1) == y) >= 0.97
    feats = clf.mnist_features(clf.load_classifier(), x[:7])
    assert feats.shape == (7, 128)


def test_fd_mnist(test_digits):
    x_te, _ = test_digits
    x_tr, _ = load_mnist_digits("train")
    fd_real = fd_mnist(x_tr[::9], x_te)  # class-balanced (the file is sorted by class)
    fd_noise = fd_mnist(np.random.default_rng(0).uniform(-1, 1, x_te.shape), x_te)
    assert 0.0 <= fd_real < 0.1 * fd_noise
    assert fd_mnist(x_te, x_te.transpose(0, 3, 1, 2)) < 1e-6 * fd_noise  # layouts agree


# --- errors ---------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(FileNotFoundError, match="mnist.*config.json"):
        load("cifar10")


def test_missing_checkpoint(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    shutil.rmtree(d / "params")
    with pytest.raises(FileNotFoundError, match=r"params.*Orbax"):
        load(d)


def test_missing_config(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(d)


def test_corrupt_checkpoint(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    for f in (d / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint .*params: corrupt checksum manifest"):
        load(d)
    (d / "params" / "MANIFEST.sha256").unlink()  # no manifest: orbax itself must fail clearly
    with pytest.warns(UserWarning, match="MANIFEST"):
        with pytest.raises(ValueError, match=r"corrupt or incompatible checkpoint at .*params"):
            load(d)


def test_checkpoint_config_mismatch(tmp_path):
    import json

    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["block_out_channels"] = [32, 64, 128]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json does not match its checksum"):
        load(d)
    (d / "MANIFEST.sha256").unlink()  # a directory from before the manifests covered configs
    with pytest.warns(UserWarning, match="no MANIFEST.sha256"):
        with pytest.raises(ValueError, match="does not match the architecture"):
            load(d)


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("scheduler_config.json", '"beta_end": 0.02', '"beta_end": 0.03'),
        ("scheduler_config.json", '"prediction_type": "epsilon"', '"prediction_type": "sample"'),
        ("config.json", '"norm_eps": 1e-05', '"norm_eps": 1e-04'),
    ],
)
def test_one_character_edits_of_the_configs_are_refused(tmp_path, name, old, new):
    """Every file the loader reads is covered by a checksum, not only the parameters: an
    edited beta_end, prediction_type or norm_eps would load and change every sample."""
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    text = (d / name).read_text()
    assert old in text, text
    (d / name).write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=f"{name} does not match its checksum"):
        load(d)


def test_unet_fn_reused_by_load(model):
    assert model.fn is unet_fn(MNIST_CONFIG)
