"""Training: exact resume, signals, and verified checkpoints (tiny config, a few steps)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hso_jax.models.train import (
    MNIST_CONFIG,
    RECIPES,
    Recipe,
    load_run,
    train,
)

TINY = {
    **MNIST_CONFIG,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [8, 16],
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}
RECIPE = dataclasses.replace(RECIPES["v2"], steps=6, warmup=2, batch_size=4)


def _bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6-step run straight, and as 3 steps + resume for 3."""
    d = tmp_path_factory.mktemp("runs")
    straight = train(d / "straight", recipe=RECIPE, config=TINY, progress=False, log_every=1)
    first = train(d / "split", recipe=RECIPE, config=TINY, progress=False, max_steps=3, log_every=1)
    shutil.copytree(d / "split", d / "split.step3")  # the state after 3 steps, kept
    second = train(d / "split", resume=True, progress=False, log_every=1)
    return d, straight, first, second


def test_resume_is_bit_identical(runs):
    d, straight, first, second = runs
    assert straight["finished"] and second["finished"]
    assert not first["finished"] and first["step"] == 3 and first["stopped_by"] is None
    a, _ = load_run(d / "straight")
    b, _ = load_run(d / "split")
    assert int(a.step) == int(b.step) == 6
    assert _bits(a) == _bits(b)
    log_a = np.loadtxt(d / "straight" / "loss_log.csv", delimiter=",", skiprows=1)
    log_b = np.loadtxt(d / "split" / "loss_log.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(log_a[:, :3], log_b[:, :3])  # step, loss, lr (not wall time)


def test_different_seed_differs(runs, tmp_path, capsys):
    d, *_ = runs
    other = dataclasses.replace(RECIPE, seed=1)
    # progress into a pipe (not a terminal): plain lines on stderr, the last at the end
    train(tmp_path / "seed1", recipe=other, config=TINY, max_steps=3, log_every=1)
    err = capsys.readouterr().err.splitlines()
    assert err and err[-1].startswith("train: step 3 of ") and "loss" in err[-1]
    s1, _ = load_run(tmp_path / "seed1")
    s0, _ = load_run(d / "split.step3")
    assert int(s1.step) == int(s0.step) == 3
    assert _bits(s1.params) != _bits(s0.params)


def test_corrupted_state_is_refused(runs, tmp_path):
    d, *_ = runs
    run = tmp_path / "run"
    shutil.copytree(d / "straight", run)
    files = sorted(p for p in (run / "state").rglob("*") if p.is_file() and p.stat().st_size > 64)
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for i in (17, 33, 65):  # flip three bits
        data[len(data) // 2 + i] ^= 1 << (i % 8)
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=victim.name):
        load_run(run)
    with pytest.raises(ValueError, match="checksum"):
        train(run, resume=True, progress=False)


def test_foreign_and_missing_runs(runs, tmp_path):
    d, *_ = runs
    with pytest.raises(FileNotFoundError, match="run.json"):
        load_run(tmp_path)
    run = tmp_path / "foreign"
    shutil.copytree(d / "straight", run)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        load_run(run)
    (run / "run.json").write_text(json.dumps({**meta, "step": 2}))
    with pytest.raises(ValueError, match="step"):
        load_run(run)
    # An edited configuration is refused by name (issue: an lr of 0.9 resumed silently).
    recipe = {**meta["recipe"], "lr": 0.9}
    (run / "run.json").write_text(json.dumps({**meta, "recipe": recipe}))
    with pytest.raises(ValueError, match=r"changed since it was saved \(recipe\.lr\)"):
        load_run(run)
    config = {**meta["config"], "norm_eps": 1e-3}
    (run / "run.json").write_text(json.dumps({**meta, "config": config, "out": "elsewhere"}))
    with pytest.raises(ValueError, match=r"\(config, out\)"):
        load_run(run)
    (run / "run.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    with pytest.raises(ValueError, match="no fingerprint"):
        load_run(run)
    # A new run never overwrites an existing one; resume takes its recipe from the directory.
    with pytest.raises(FileExistsError, match="--resume"):
        train(d / "straight", recipe=RECIPE, config=TINY, progress=False)
    with pytest.raises(ValueError, match="recipe"):
        train(d / "straight", resume=True, recipe=RECIPE)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"decay": "linear"}, "decay"),
        ({"weighting": "p2"}, "weighting"),
        ({"warmup": 10}, "warmup"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_recipe_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**{"steps": 5, "warmup": 0, **kw})


def test_min_snr_weights_formula():
    """Min-SNR-5 on the DDPM process: w_k = min(SNR_k, 5) / SNR_k, from the betas directly."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    snr = abar / (1 - abar)
    w = np.minimum(snr, 5.0) / snr
    # High noise (SNR < 5): weight 1; low noise: 5 / SNR, e.g. k = 0 has SNR ~ 1e4.
    assert w[-1] == 1.0 and w[0] == pytest.approx(5.0 / (0.9999 / 1e-4), rel=1e-6)


def test_sigterm_saves_state_and_exits_143(tmp_path):
    """A real training process stopped by SIGTERM saves a resumable state and exits 143."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "hso_jax.models.train",
        "--run-dir",
        str(run),
        "--config",
        str(cfg),
        "--steps",
        "100000",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    log = run / "loss_log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) > 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert time.time() - t0 < 30
    assert "Traceback" not in err and "--resume" in err
    state, meta = load_run(run)
    assert int(state.step) == meta["step"] >= 25


def test_shipped_checkpoints_are_verified(tmp_path):
    """Bits flipped in a copy of a shipped model are caught by its manifest, naming the file."""
    from hso_jax.models import load
    from hso_jax.models.zoo import MNIST_ID, ZOO_DIR, restore_checkpoint

    src = ZOO_DIR / MNIST_ID
    dst = tmp_path / "mnist"
    shutil.copytree(src, dst)
    files = [
        p
        for p in (dst / "params").rglob("*")
        if p.is_file() and "ocdbt.process_0/d" in p.as_posix()
    ]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for i in (5, 50, 500):
        data[-i] ^= 0b100
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=victim.name):
        load(dst)
    (dst / "params" / "MANIFEST.sha256").unlink()
    with pytest.warns(UserWarning, match="MANIFEST"):
        restore_checkpoint(dst / "params")
    with pytest.raises(ValueError, match="MANIFEST"):
        restore_checkpoint(dst / "params", require_manifest=True)


def test_load_run_in_a_fresh_process_restores_the_state(runs):
    """load_run builds its abstract state under eval_shape before anything was compiled."""
    d, *_ = runs
    code = (
        "import sys, jax; from hso_jax.models.train import load_run; "
        "s, r = load_run(sys.argv[1]); print(int(s.step))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(d / "straight")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"
