"""Hostile input: what a careless user or a broken machine hands the commands and the library.

A generated corpus -- special files for every file flag, extreme numbers for every numeric
flag and keyword, damaged and swapped stored programs, edited model folders, wrong model
output shapes, a closed standard output, a failing disk, signals while a command starts --
each answered by one line, the documented exit status, no partial file, and a next run that
works. Never a traceback, a hang, or a silently wrong result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _signals import assert_stopped, spawn

import hso_jax as hj
from hso_jax import _validate, cli, demo
from hso_jax import io as hio
from hso_jax import noise as hnoise
from hso_jax import schedules as S
from hso_jax.cli import main
from hso_jax.models import train as T
from hso_jax.models.zoo import MNIST_ID, ZOO_DIR
from hso_jax.optimizers import programs

SD21 = ["--noise", "sd21"]
SCHED = ["schedules", *SD21, "--nfe", "4", "--kind", "karras"]
OPT = ["optimize", *SD21, "--nfe", "4"]
BIG = str(2**63)


def _cli(capsys, argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, argv, pattern, rc=2):
    """``argv`` ends with exit status ``rc``, no output and a last stderr line matching."""
    got, out, err = _cli(capsys, argv)
    assert got == rc, (argv, got, err)
    assert out == "" and "Traceback" not in err, (argv, err)
    last = err.strip().splitlines()[-1]
    assert re.search(pattern, last), (argv, last)


# ------------------------------------------------------------------ special files as inputs


@pytest.fixture
def special_files(tmp_path):
    """Paths that must never be read to the end or waited on: a device that never ends, a
    named pipe without writer, a directory, a missing file."""
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    (tmp_path / "zero.npy").symlink_to("/dev/zero")  # the suffix the flags expect
    (tmp_path / "folder.npy").mkdir()
    return {
        "/dev/zero": r"character device.*not a regular file",
        str(tmp_path / "zero.npy"): r"character device.*not a regular file",
        str(fifo): r"named pipe.*not a regular file",
        str(tmp_path / "folder.npy"): r"directory.*not a regular file",
        str(tmp_path / "missing.npy"): r"No such file",
    }


def _sparse(path: Path, size: int) -> str:
    """A file of ``size`` bytes that takes no room on disk."""
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def test_every_file_flag_refuses_special_files(capsys, special_files, tmp_path, monkeypatch):
    rows = _toy_model(monkeypatch, tmp_path, conditional=True)
    model = ["optimize", "--model", "toy", "--nfe", "4", "--method"]
    flags = [  # (argv, flag, its size cap or None when it is too large to probe cheaply)
        (["schedules", "--nfe", "4", "--kind", "karras"], "--betas-file", cli.MAX_TABLE_BYTES),
        (["schedules", "--nfe", "4", "--kind", "karras"], "--alphas-cumprod-file",
         cli.MAX_TABLE_BYTES),
        (["optimize", "--nfe", "4"], "--betas-file", cli.MAX_TABLE_BYTES),
        (["optimize", "--nfe", "4"], "--alphas-cumprod-file", cli.MAX_TABLE_BYTES),
        ([*model, "gits"], "--cond", None),
        ([*model, "gits", "--cond", rows], "--uncond", None),
        ([*model, "ays", "--cond", rows], "--data", None),
        (["export", "--to", "diffusers:ddim"], None, hio.MAX_FILE_BYTES),
    ]
    probes = 0
    for argv, flag, cap in flags:
        paths = dict(special_files)
        if cap is not None:
            paths[_sparse(tmp_path / "huge.npy", cap + 1)] = "larger than"
        for path, why in paths.items():
            if path == "/dev/zero" and flag in ("--cond", "--uncond", "--data"):
                continue  # refused by its name (.npy / .npz expected) before it is opened
            full = [*argv, flag, path] if flag else [argv[0], path, *argv[1:]]
            where = re.escape(flag) if flag else "schedule"
            _refused(capsys, full, rf"(?i)({where}|{re.escape(path)}).*{why}")
            probes += 1
    assert probes == 8 * 5 - 3 + 5


# ---------------------------------------------------------------------------- extreme numbers

EXTREME_FLAGS = [
    # (argv, the refusing line); every bound is stated in the message
    ([*SCHED[:3], "--nfe", "100000000", "--kind", "karras"], r"--nfe: .*\[1, 1000\]"),
    ([*OPT[:3], "--nfe", "100000000"], r"--nfe: .*\[2, 1000\]"),
    (["demo", "--nfe", "100000000"], r"--nfe: .*\[2, 1000\]"),
    ([*OPT, "--seed", BIG], r"--seed: .*\[0, 4294967295\]"),
    ([*OPT, "--seed=-1"], r"--seed: .*\[0, 4294967295\]"),
    ([*OPT, "--sample-seed", str(2**70)], r"--sample-seed: .*\[0, 4294967295\]"),
    (["demo", "--seed", BIG], r"--seed: .*\[0, 4294967295\]"),
    ([*OPT, "--num-samples", "1000000000"], r"--num-samples: .*\[1, 65536\]"),
    (["demo", "--num-samples", "1000000000"], r"--num-samples: .*\[2, 65536\]"),
    (["schedules", "--noise", "flux-dev", "--resolution", "40000", "--nfe", "4", "--kind",
      "default"], r"--resolution: .*\[1, 4096\]"),
    (["schedules", "--noise", "flux-dev", "--resolution", "1024x40000", "--nfe", "4", "--kind",
      "default"], r"--resolution: .*\[1, 4096\]"),
    (["schedules", "--noise", "flux-dev", "--resolution", "0", "--nfe", "4", "--kind",
      "default"], r"--resolution: .*\[1, 4096\]"),
    (["schedules", "--noise", "flux-dev", "--image-seq-len", "5000000", "--nfe", "4", "--kind",
      "default"], r"--image-seq-len: .*\[1, 65536\]"),
    *[
        ([*SCHED[:5], "--kind", kind, f"{flag}={value}"], rf"{flag}: .*in \[")
        for kind, flag in (("karras", "--rho"), ("polyexponential", "--rho"),
                           ("kl-optimal", "--c"))
        for value in ("1e308", "1e-308", "-1e308", "nan", "inf", "0")
    ],
    *[
        (["schedules", "--noise", noise, f"--shift={value}", "--nfe", "4", "--kind", "default"],
         r"--shift: .*\[0.001, 1000\]")
        for noise in ("wan", "flow")
        for value in ("1e308", "1e-308", "nan", "-inf")
    ],
    ([*SCHED[:5], "--kind", "polyexponential", "--rho", "50"], r"rho must lie in \[0.01, 10\]"),
    ([*SCHED, "--t-start", "1e308"], r"t_start|--t-start"),
    ([*OPT, "--guidance", "1e309"], r"--guidance: .*finite"),
]


def test_extreme_numbers_are_refused_by_the_parser(capsys):
    for argv, pattern in EXTREME_FLAGS:
        _refused(capsys, argv, pattern)


def test_extreme_numbers_are_refused_by_the_library():
    sd21 = hnoise.preset("sd21")
    cases = [
        (lambda: S.karras(sd21, 10**8), r"nfe must be an integer in \[1, 1000\]"),
        (lambda: S.karras(sd21, 4, rho=1e308), r"rho must lie in \[0.01, 100\]"),
        (lambda: S.karras(sd21, 4, rho=1e-308), r"rho must lie in \[0.01, 100\]"),
        (lambda: S.polyexponential(sd21, 4, rho=1e308), r"rho must lie in \[0.01, 10\]"),
        (lambda: S.kl_optimal(sd21, 4, c=1e308), r"c must lie in \[0.001, 1000\]"),
        (lambda: hnoise.preset("wan", shift=1e308), r"shift must lie in \[0.001, 1000\]"),
        (lambda: hnoise.preset("flow", shift=1e-308), r"shift must lie in \[0.001, 1000\]"),
        (lambda: hnoise.preset("flux-dev", resolution=40000), r"resolution must be .*4096"),
        (lambda: hnoise.preset("flux-dev", image_seq_len=5_000_000), r"image_seq_len .*65536"),
        (lambda: hj.optimize(sd21, nfe=10**8), r"nfe must be an integer in \[2, 1000\]"),
        (lambda: hj.optimize(sd21, nfe=4, seed=2**70), r"seed must be an integer in \[0, "),
        (lambda: hj.optimize(sd21, nfe=4, seed=-1), r"seed must be an integer in \[0, "),
        (lambda: demo.run_demo("unused", seed=2**64), r"seed must be an integer in \[0, "),
        (lambda: T.Recipe(steps=10, warmup=1, seed=2**40), r"seed must be an integer in \[0, "),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    assert not Path("unused").exists()  # run_demo refused before touching its folder


def test_a_largest_allowed_value_works():
    """The bounds are not off by one: the largest seed and NFE, the widest flux image."""
    sd21 = hnoise.preset("sd21")
    assert len(S.karras(sd21, _validate.MAX_NFE)) == _validate.MAX_NFE + 1
    ts = S.flow_default(hnoise.preset("flux-dev", resolution=4096), 4)
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) < 0)
    key = jax.random.key(_validate.MAX_SEED)  # the largest seed is a valid key
    assert jax.random.normal(key, ()).shape == ()


# ------------------------------------------------------------------- stored programs, via CLI


def test_damaged_and_swapped_stored_programs(capsys, tmp_path):
    """Flipped bytes in a stored search and an entry of another search copied over it: the run
    reports it in one warning line, computes the right schedule, and the next run is clean."""
    old = programs.store()
    store = tmp_path / "programs"
    try:
        argv = [*OPT[:3], "--nfe", "5", "--method", "dmn"]
        assert _cli(capsys, SCHED)[0] == 0  # the command line has set up its caches
        programs.use_store(store)
        programs.clear()
        rc, want, err = _cli(capsys, argv)
        assert rc == 0, err
        dmn_entry = set(store.iterdir())
        rc, mep, err = _cli(capsys, [*argv[:-1], "mep-local"])
        assert rc == 0 and mep != want
        (mep_entry,) = set(store.iterdir()) - dmn_entry
        (dmn_file,) = [p for p in dmn_entry if p.suffix == ".jaxprog"]

        raw = bytearray(dmn_file.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:][:8])
        for damage in (bytes(raw), mep_entry.read_bytes()):  # flipped, then foreign
            dmn_file.write_bytes(damage)
            programs.clear()
            rc, got, err = _cli(capsys, argv)
            assert rc == 0 and got == want, err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert re.match(r"hso-jax optimize: warning: ignoring the damaged program cache "
                            r"entry .*; tracing again and replacing it$", err.strip()), err
            programs.clear()
            rc, got, err = _cli(capsys, argv)  # replaced: the next run is clean
            assert rc == 0 and got == want and err == "", err
    finally:
        programs.use_store(old)
        programs.clear()


# ----------------------------------------------------------------------- edited model folders


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("scheduler_config.json", '"beta_end": 0.02', '"beta_end": 0.03'),
        ("config.json", '"norm_eps": 1e-05', '"norm_eps": 1e-04'),
        ("hso_jax.json", "{", "{ "),
    ],
)
def test_edited_model_folder_via_the_cli(capsys, tmp_path, name, old, new):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / MNIST_ID, d)
    text = (d / name).read_text()
    assert old in text
    (d / name).write_text(text.replace(old, new, 1))
    _refused(capsys, ["optimize", "--model", str(d), "--method", "gits", "--nfe", "4"],
             rf"{re.escape(name)} does not match its checksum")


# ------------------------------------------------------------------------ model output shapes

def _toy_model(monkeypatch, tmp_path, conditional=False) -> str:
    """``--model toy``: a two-point Gaussian mixture; returns a one-row condition file."""
    from hso_jax.models import zoo

    ddpm = hnoise.preset("ddpm")
    gm = hj.models.GaussianMixture(jnp.asarray([[1.0, 0.0], [-1.0, 0.0]]), 0.2)
    monkeypatch.setattr(zoo, "load", lambda name: gm.denoiser(ddpm))
    monkeypatch.setattr(zoo, "sample_shape", lambda name: (2,))
    monkeypatch.setattr(zoo, "is_conditional", lambda name: conditional)
    np.save(tmp_path / "rows.npy", np.zeros((1, 2), np.float32))
    return str(tmp_path / "rows.npy")


@pytest.mark.parametrize("shape", [(8, 1), (), (1, 2)], ids=["B1", "scalar", "1D"])
def test_wrong_output_shapes_are_refused(shape):
    ns = hnoise.preset("ddpm")
    model = hj.Denoiser(lambda x, t: jnp.zeros(shape) + jnp.sum(x) * 0, ns)
    x = jnp.ones((8, 2))
    ts = S.karras(ns, 4)
    with pytest.raises(hj.denoiser.OutputShapeError, match=r"returned shape .*\(8, 2\)"):
        hj.sample(model, x, ts, hj.solvers.ddim())
    with pytest.raises(hj.denoiser.OutputShapeError, match="the network's output"):
        hj.optimize(model, nfe=4, method="direct", x_T=x, steps=1)


def test_cond_on_an_unconditional_model(capsys, tmp_path, monkeypatch):
    rows = _toy_model(monkeypatch, tmp_path, conditional=False)
    _refused(capsys, ["optimize", "--model", "toy", "--method", "gits", "--nfe", "4", "--cond",
                      rows], r"--cond: toy is an unconditional model \(it takes no condition")


# --------------------------------------------------------------------- output that cannot land


def _spawn(*argv, stdout, preexec_fn=None):
    exe = Path(sys.executable).with_name("hso-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hso_jax"]
    return subprocess.run(cmd + list(argv), stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=180, preexec_fn=preexec_fn)


def test_closed_and_full_standard_output():
    closed = _spawn(*SCHED, stdout=None, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 1
    assert closed.stderr == "hso-jax schedules: error: cannot write output: standard output is " \
                            "closed\n"
    with open("/dev/full", "w") as full:
        p = _spawn(*SCHED, stdout=full)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "No space left" in p.stderr


def test_a_failing_disk_leaves_no_partial_demo_set(tmp_path):
    """demo writes results.md / .json and two PNGs as one set: all of them or none."""

    def fill(stage):
        (stage / "results.md").write_text("new")
        (stage / "results.json").write_text("{}")
        raise OSError(28, "No space left on device")

    new = tmp_path / "new"
    with pytest.raises(OSError), demo._writing_set(new) as stage:
        fill(stage)
    assert not new.exists()  # created for the set, removed with it

    old = tmp_path / "old"
    old.mkdir()
    (old / "results.md").write_text("old")
    with pytest.raises(OSError), demo._writing_set(old) as stage:
        fill(stage)
    assert [p.name for p in old.iterdir()] == ["results.md"]
    assert (old / "results.md").read_text() == "old"

    with demo._writing_set(old) as stage:  # and the next run lands whole
        (stage / "results.md").write_text("new")
        (stage / "samples.png").write_bytes(b"png")
    assert sorted(p.name for p in old.iterdir()) == ["results.md", "samples.png"]
    assert (old / "results.md").read_text() == "new"


# --------------------------------------------------------------------------- training options


@pytest.mark.parametrize("flag", ["--checkpoint-minutes", "--max-minutes"])
@pytest.mark.parametrize("value", ["-1", "nan", "0", "inf"])
def test_training_minutes_are_checked(capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as e:
        T.main(["--run-dir", str(tmp_path / "run"), flag, value])
    assert e.value.code == 2
    assert re.search(rf"argument {flag}: must be a number in \(0, ", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kw", [{"checkpoint_minutes": float("nan")}, {"max_minutes": -1.0}])
def test_training_minutes_are_checked_by_the_library(tmp_path, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        T.train(tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_training_config_file_must_be_regular(capsys, tmp_path):
    for path in ("/dev/zero", str(tmp_path)):
        with pytest.raises(SystemExit) as e:
            T.main(["--run-dir", str(tmp_path / "run"), "--config", path])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert re.search(r"--config .*not a regular file", err) and "Traceback" not in err


# ------------------------------------------------------------------------------- early signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_command_starts(signum):
    """Signalled while the package itself is imported, before the command line is loaded
    (the console script's own process, not ``python -m``)."""
    exe = Path(sys.executable).with_name("hso-jax")
    if not exe.exists():
        pytest.skip("the hso-jax console script is not installed")
    p, err = spawn([sys.executable, "-X", "importtime", str(exe), *SCHED])
    err.until(p, r"\| +hso_jax\._lazy$")  # imported right after the handlers are set
    assert_stopped(p, err, signum, "hso-jax")


def _train_cmd(run, *extra):
    cfg = run.parent / "tiny.json"
    cfg.write_text(json.dumps({**T.MNIST_CONFIG, "block_out_channels": [8, 16],
                               "norm_num_groups": 4, "attention_head_dim": 8,
                               "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                               "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}))
    return [sys.executable, *extra, "-m", "hso_jax.models.train", "--run-dir", str(run),
            "--config", str(cfg), "--steps", "100000", "--warmup", "2", "--batch-size", "4",
            "--no-progress"]


def test_training_signalled_while_importing(tmp_path):
    """While JAX loads: one line and 130, not a traceback nor a signal swallowed by JAX's gc
    callback (which let training run to the end)."""
    run = tmp_path / "run"
    p, err = spawn(_train_cmd(run, "-X", "importtime"))
    err.until(p, r"\| +jax\.")
    assert_stopped(p, err, signal.SIGINT, "python -m hso_jax.models.train")
    assert not run.exists()


def test_training_signalled_during_its_first_compilation(tmp_path):
    """While the first step compiles (nothing to save yet): exit 143 within the grace
    second, one line, no segfault, and the new run folder is gone."""
    run = tmp_path / "run"
    p, err = spawn(_train_cmd(run))
    deadline = time.monotonic() + 180
    while not (run / "loss_log.csv").exists():  # the state is initialised; the step compiles
        assert p.poll() is None and time.monotonic() < deadline, err.lines[-5:]
        time.sleep(0.01)
    if len((run / "loss_log.csv").read_text().splitlines()) > 1:
        p.kill()
        pytest.skip("the first step finished before the signal")
    assert_stopped(p, err, signal.SIGTERM, "python -m hso_jax.models.train")
    assert not run.exists()
