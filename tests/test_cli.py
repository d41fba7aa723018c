"""The ``hso-jax`` command, run in-process through ``main(argv)``."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _signals import assert_stopped, spawn, stop

import hso_jax as hj
from hso_jax import io as hio
from hso_jax import noise as hnoise
from hso_jax import schedules as S
from hso_jax.cli import main

KINDS = ["ays", "karras", "logsnr", "uniform", "quadratic", "kl-optimal", "polyexponential"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def bad(capsys, *argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert out == "" and "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_json(capsys, kind):
    rc, out, err = run(capsys, "schedules", "--noise", "sd15", "--nfe", "4", "--kind", kind)
    assert rc == 0 and err == ""
    rec = hio.validate_record(json.loads(out))
    assert len(rec["t"]) == 5 and rec["nfe"] == 4 and rec["method"] == kind
    assert rec["noise"] == "sd15" and len(rec["timesteps"]) == 5
    assert rec["options"]["kind"] == kind
    if kind != "ays":
        assert rec["t"][0] == 1.0 and rec["t"][-1] == 0.001


def test_json_matches_library(capsys):
    rc, out, _ = run(capsys, "schedules", "--noise", "edm", "--nfe", "6", "--kind", "karras",
                     "--rho", "5")
    rec = json.loads(out)
    assert rc == 0 and rec["options"]["rho"] == 5.0 and rec["timesteps"] is None
    np.testing.assert_allclose(rec["t"], np.asarray(S.karras(hnoise.preset("edm"), 6, rho=5.0)))
    rc, out, _ = run(capsys, "schedules", "--noise", "edm", "--nfe", "3", "--kind", "kl-optimal",
                     "--c", "0.5", "--t-start", "40", "--t-end", "0.01")
    rec = json.loads(out)
    assert rc == 0 and rec["t"][0] == 40.0 and rec["t"][-1] == 0.01 and rec["options"]["c"] == 0.5
    rc, out, _ = run(capsys, "schedules", "--noise", "sd15", "--nfe", "3", "--kind", "karras")
    assert json.loads(out)["options"]["rho"] == 7.0  # library default recorded


def test_ays_diffusers(capsys):
    rc, out, _ = run(capsys, "schedules", "--noise", "sd15", "--nfe", "10", "--kind", "ays",
                     "--format", "diffusers")
    d = json.loads(out)
    # the published table's 10 network points; its last point (t_min) becomes the data end,
    # diffusers' default final_sigmas_type="zero" (as ComfyUI's AYS node sets the last sigma 0)
    assert rc == 0 and d["target"] == "diffusers:UniPCMultistepScheduler" and d["nfe"] == 10
    assert d["timesteps"] == [999, 850, 736, 645, 545, 455, 343, 233, 125, 24]
    assert d["sigmas"][-1] == 0.0 and d["config"]["final_sigmas_type"] == "zero"
    rc, out, _ = run(capsys, "schedules", "--noise", "sd15", "--nfe", "10", "--kind", "ays",
                     "--format", "diffusers", "--end", "t_min")
    d = json.loads(out)
    assert d["config"]["final_sigmas_type"] == "sigma_min" and len(d["timesteps"]) == 10
    rc, out, _ = run(capsys, "schedules", "--noise", "cosine", "--nfe", "10", "--kind", "ays",
                     "--format", "diffusers")  # default table for cosine: deepfloyd-if
    assert rc == 0 and json.loads(out)["timesteps"][0] == 995
    rc, out, _ = run(capsys, "schedules", "--noise", "edm", "--nfe", "5", "--kind", "ays",
                     "--table", "sdxl", "--format", "comfyui")
    sig = json.loads(out)
    assert rc == 0 and sig[0] == pytest.approx(14.615) and sig[-1] == 0.0 and len(sig) == 6


def test_comfyui_ends(capsys):
    base = ["schedules", "--noise", "sd15", "--nfe", "3", "--kind", "karras", "--format", "comfyui"]
    ns = hnoise.preset("sd15")
    rc, out, _ = run(capsys, *base)
    z = json.loads(out)  # default: ComfyUI's convention, the last sigma 0
    assert rc == 0 and len(z) == 4 and z[-1] == 0.0
    # ComfyUI evaluates a discrete model at the nearest training step: the network points are
    # there already
    steps = np.asarray(ns.index_from_t(np.asarray(S.karras(ns, 3))[:-1]))
    ac = ns.alphas_cumprod[steps]
    np.testing.assert_allclose(z[:-1], np.sqrt((1 - ac) / ac), rtol=1e-12)
    rc, out, _ = run(capsys, *base, "--end", "free")
    free = json.loads(out)  # the baseline's own last point, sigma(t_min)
    sigma_min = float(np.sqrt((1 - ns.alphas_cumprod[0]) / ns.alphas_cumprod[0]))
    assert rc == 0 and free[:-1] == z[:-1] and free[-1] == pytest.approx(sigma_min, rel=1e-12)
    err = bad(capsys, *base, "--end", "append_zero")
    assert "argument --end: invalid choice" in err

def test_out_file(capsys, tmp_path):
    path = tmp_path / "s.json"
    rc, out, err = run(capsys, "schedules", "--noise", "sd21", "--nfe", "5", "--kind", "logsnr",
                       "--out", str(path))
    assert rc == 0 and out == "" and err == ""
    rec = hio.load_schedule(path)
    assert rec["noise"] == "sd21" and len(rec["t"]) == 6
    path2 = tmp_path / "c.json"
    assert main(["schedules", "--noise", "sd21", "--nfe", "5", "--kind", "logsnr",
                 "--format", "comfyui", "--out", str(path2)]) == 0
    assert len(json.loads(path2.read_text())) == 6


def test_betas_and_alphas_cumprod_files(capsys, tmp_path):
    betas = hnoise.scaled_linear_betas()
    lines = "\n".join(repr(float(b)) for b in betas)
    (tmp_path / "betas.txt").write_text("# SD betas\n" + lines + "\n")
    np.save(tmp_path / "betas.npy", betas)
    np.save(tmp_path / "ac.npy", np.cumprod(1 - betas))
    want = np.asarray(S.karras(hnoise.preset("sd15"), 4))
    for option, name in (("--betas-file", "betas.txt"), ("--betas-file", "betas.npy"),
                         ("--alphas-cumprod-file", "ac.npy")):
        rc, out, err = run(capsys, "schedules", option, str(tmp_path / name), "--nfe", "4",
                           "--kind", "karras")
        assert rc == 0, err
        rec = json.loads(out)
        np.testing.assert_allclose(rec["t"], want, rtol=1e-9)
        assert rec["noise"] == f"custom:{name}"
        assert rec["options"][option.lstrip("-").replace("-", "_")] == str(tmp_path / name)
    rc, out, err = run(capsys, "schedules", "--betas-file", str(tmp_path / "betas.txt"), "--nfe",
                       "10", "--kind", "ays", "--table", "sd15", "--format", "diffusers")
    assert rc == 0 and json.loads(out)["timesteps"][0] == 999


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert main(["schedules", "--help"]) == 0
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert "--betas-file" in out and "nfe + 1" in out


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["schedules", "--nfe", "5", "--kind", "karras"], "--noise"),
        (["schedules", "--noise", "sd15", "--kind", "karras"], "--nfe"),
        (["schedules", "--noise", "sd15", "--nfe", "0", "--kind", "karras"],
         r"argument --nfe: must be an integer in \[1, 1000\], got 0"),
        (["schedules", "--noise", "sd15", "--nfe", "x", "--kind", "karras"], "argument --nfe"),
        (["schedules", "--noise", "sd99", "--nfe", "5", "--kind", "karras"],
         "argument --noise: invalid choice: 'sd99'"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "cosine"],
         "argument --kind: invalid choice"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--rho", "-1"],
         r"argument --rho: must be a number in \[0.01, 100\], got '-1'"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--rho", "nan"],
         r"argument --rho: must be a number in \[0.01, 100\], got 'nan'"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "uniform", "--rho", "3"],
         "argument --rho: only applies to --kind karras / polyexponential"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--c", "2"],
         "argument --c: only applies to --kind kl-optimal"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--table", "sd15"],
         "argument --table: only applies to --kind ays"),
        (["schedules", "--noise", "edm", "--nfe", "5", "--kind", "ays"],
         "argument --table: required with --kind ays for noise 'edm'"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "ays", "--table", "svd"],
         "argument --table: model='svd'.*not clipped"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "ays", "--table", "sd14"],
         "argument --table: invalid choice"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--t-start", "2"],
         r"argument --t-start: t_start must lie in \[t_min, t_max\]"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--t-start", "0.1",
          "--t-end", "0.2"], "argument --t-start: t_start must be greater than t_end"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--end", "zero"],
         "argument --end: applies to a target"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--format", "a1111"],
         "argument --format: invalid choice"),
        (["schedules", "--noise", "edm", "--nfe", "5", "--kind", "karras", "--format",
          "diffusers"], "argument --format: target diffusers:UniPC.* cannot run a continuous"),
        (["schedules", "--noise", "sd15", "--nfe", "1000", "--kind", "karras", "--format",
          "diffusers"], "argument --nfe: .*do not fit on distinct training steps"),
        (["schedules", "--noise", "sd15", "--betas-file", "b.txt", "--nfe", "5", "--kind",
          "karras"], "argument --betas-file: not allowed with argument --noise"),
    ],
)
def test_bad_arguments_exit_2(capsys, args, match):
    err = bad(capsys, *args)
    assert err.count("\n") <= 16
    assert re.search(match, err), err


def test_bad_schedule_files_exit_2(capsys, tmp_path):
    base = ["--nfe", "3", "--kind", "karras"]
    err = bad(capsys, "schedules", "--betas-file", str(tmp_path / "none.txt"), *base)
    assert "argument --betas-file: cannot read" in err
    (tmp_path / "neg.txt").write_text("0.1\n-0.2\n0.3\n")
    err = bad(capsys, "schedules", "--betas-file", str(tmp_path / "neg.txt"), *base)
    assert "argument --betas-file: betas must lie in (0, 1)" in err
    (tmp_path / "two.txt").write_text("0.1 0.2\n0.3 0.4\n")
    err = bad(capsys, "schedules", "--betas-file", str(tmp_path / "two.txt"), *base)
    assert "argument --betas-file: expected one value per line" in err
    (tmp_path / "text.txt").write_text("a\nb\n")
    err = bad(capsys, "schedules", "--alphas-cumprod-file", str(tmp_path / "text.txt"), *base)
    assert "argument --alphas-cumprod-file: cannot read" in err
    np.save(tmp_path / "inc.npy", np.linspace(0.1, 0.9, 10))
    err = bad(capsys, "schedules", "--alphas-cumprod-file", str(tmp_path / "inc.npy"), *base)
    assert "argument --alphas-cumprod-file: alphas_cumprod must be strictly decreasing" in err


def test_unwritable_out_exits_1(capsys, tmp_path):
    rc, out, err = run(capsys, "schedules", "--noise", "sd15", "--nfe", "3", "--kind", "karras",
                       "--out", str(tmp_path / "no" / "such" / "dir.json"))
    assert rc == 1 and "cannot write output" in err and "Traceback" not in err


def test_console_script():
    exe = Path(sys.executable).with_name("hso-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hso_jax.cli"]
    p = subprocess.run(cmd + ["schedules", "--noise", "sd15", "--nfe", "2", "--kind", "karras",
                              "--rho", "0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "argument --rho: must be a number in [0.01, 100]" in p.stderr
    assert "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- optimize


def test_optimize_json_ddim_nfe4(capsys):
    rc, out, err = run(capsys, "optimize", "--noise", "sd21", "--nfe", "4", "--solver", "ddim")
    assert rc == 0 and err == ""
    rec = hio.validate_record(json.loads(out))
    assert rec["method"] == "hso" and rec["solver"] == "ddim" and rec["nfe"] == 4
    # the HSO paper's SD 2.1 DDIM NFE-4 schedule [959, 716, 370, 30], then the final step to 0
    np.testing.assert_allclose(rec["timesteps"][:4], [959, 716, 370, 30], atol=10)
    assert rec["timesteps"][-1] == 0
    assert set(rec["options"]["params"]) == {"rho", "t_eps", "T_max"}
    assert rec["options"]["seed"] == 66 and rec["options"]["warnings"] == []
    assert rec["objective"] > 0 and rec["options"]["penalty"] >= 0


def test_optimize_diffusers_from_betas_file(capsys, tmp_path):
    betas = hnoise.scaled_linear_betas()  # Stable Diffusion 2.1's betas
    np.save(tmp_path / "betas.npy", betas)
    argv = ["optimize", "--nfe", "4", "--solver", "ddim", "--format", "diffusers"]
    rc, out, err = run(capsys, *argv, "--betas-file", str(tmp_path / "betas.npy"))
    assert rc == 0 and err == ""
    from_file = json.loads(out)
    rc, out, _ = run(capsys, *argv, "--noise", "sd21")
    assert rc == 0 and json.loads(out) == from_file  # the same process, the same schedule
    # DDIMScheduler takes no custom timesteps: first-order DPM-Solver++ is the same update
    assert from_file["target"] == "diffusers:DDIMScheduler" and from_file["nfe"] == 4
    assert from_file["runs_as"] == "DPMSolverMultistepScheduler"
    assert from_file["config"]["solver_order"] == 1 and len(from_file["timesteps"]) == 4
    assert from_file["sigmas"][-1] == 0.0  # diffusers' default end: the data


def test_dmn_on_a_flow_model_takes_its_ends_from_the_command_line(capsys):
    argv = ["optimize", "--noise", "flow", "--shift", "3", "--nfe", "4", "--method", "dmn"]
    rc, out, err = run(capsys, *argv, "--t-start", "0.999", "--format", "comfyui")
    sig = json.loads(out)
    assert rc == 0 and sig[0] == 0.999 and sig[-1] == 0.0 and len(sig) == 5
    assert "the same schedule for every flow model" in err


def test_optimize_for_a_target_and_export_it(capsys, tmp_path):
    """The README's path: optimise for diffusers' UniPC, export, check in diffusers itself."""
    path = tmp_path / "s.json"
    rc, out, err = run(capsys, "optimize", "--noise", "sd15", "--nfe", "5", "--target",
                       "diffusers:unipc", "--out", str(path))
    assert rc == 0 and err == ""
    rec = hio.load_schedule(path)
    assert rec["options"]["target"] == "diffusers:UniPCMultistepScheduler"
    assert rec["t"][-1] == 0.0 and rec["timesteps"][-1] == -1 and len(rec["t"]) == 6
    assert all(round(1000 * t) == 1000 * t for t in rec["t"])  # on training steps
    rc, out, err = run(capsys, "export", str(path), "--to", "diffusers:unipc")
    assert rc == 0 and err == "" and "diffusers_scheduler(" in out
    assert "num_inference_steps=5" in out
    pytest.importorskip("diffusers")
    rc, out, err = run(capsys, "export", str(path), "--to", "diffusers:unipc", "--check")
    assert rc == 0 and "5 network calls (optimised for 5)" in out and "OK" in out
    # another end is another trajectory: refused, with what to run instead
    err = bad(capsys, "export", str(path), "--to", "diffusers:unipc", "--end", "t_min")
    assert "argument --to: the schedule ends at t = 0" in err and "--target" in err
    # a schedule made for another target runs there, but says it is another sampler
    rc, out, err = run(capsys, "export", str(path), "--to", "comfyui:heun")
    assert rc == 0 and "another sampler" in err and "SIGMAS" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["optimize", "--noise", "sd21", "--nfe", "1"],
         r"argument --nfe: must be an integer in \[2, 1000\]"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--method", "ays"],
         "argument --model: required by --method ays"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--method", "nope"],
         "argument --method: invalid choice"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--method", "gits"],
         "argument --model: required by --method gits"),
        (["optimize", "--model", "mnist", "--nfe", "4"],
         "argument --model: only applies to --method ays / direct / gits / mep-model"),
        (["optimize", "--model", "mnist", "--noise", "ddpm", "--nfe", "4", "--method", "direct"],
         "do not apply to --method direct"),
        (["optimize", "--model", "no-such-model", "--nfe", "4", "--method", "gits"],
         "argument --model: .*no-such-model"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--solver", "heun"],
         "argument --solver: invalid choice"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--end", "never"],
         "argument --end: invalid choice"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--target", "diffusers:unipc", "--solver",
          "ddim"], "argument --solver: the target diffusers:unipc fixes the solver"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--target", "diffusers:nope"],
         "argument --target: unknown target 'diffusers:nope'"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--t-start", "0.9"],
         "argument --t-start: only applies to --method mep-local / dmn / direct"),
        (["optimize", "--noise", "flow", "--shift", "3", "--nfe", "4", "--method", "dmn"],
         "argument --t-start: --method dmn needs finite log-SNR.*pass --t-start 0.999"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--format", "comfyui", "--solver",
          "unipc"], "argument --solver: ComfyUI's uni_pc sampler is its own port"),
        (["optimize", "--nfe", "4"], "--noise"),
    ],
)
def test_optimize_bad_arguments_exit_2(capsys, args, match):
    err = bad(capsys, *args)
    assert re.search(match, err), err


def test_optimize_model_based_methods(capsys, monkeypatch, tmp_path):
    """--model plumbing (a Gaussian-mixture stand-in for the zoo model keeps this fast)."""
    from hso_jax.models import zoo

    ddpm = hnoise.preset("ddpm")
    gm = hj.models.GaussianMixture(jnp.asarray([[1.0, 0.0], [-1.0, 0.0]]), 0.2)
    monkeypatch.setattr(zoo, "load", lambda name: gm.denoiser(ddpm))
    monkeypatch.setattr(zoo, "sample_shape", lambda name: (2,))
    monkeypatch.setattr(zoo, "is_conditional", lambda name: False)
    np.save(tmp_path / "data.npy", np.asarray(gm.sample(jax.random.key(0), 32)))
    monkeypatch.setattr(sys.modules["hso_jax._progress"], "EVERY_S", 0.0)  # every line
    progress = {  # what each search reports on stderr while it runs
        "gits": r"gits: solves from 8 noises, then the search\n.*gits: teacher \d+ %, elapsed",
        "direct": r"direct: reference \d+ %, elapsed [\d.]+\n(?:.*\n)*?"
        r".*direct: iteration \d+, train [\d.]+, val [\d.]+, elapsed",
        "ays": r"ays: level 10, sweep 1, klub [\d.]+, elapsed",
    }
    for method, pattern in progress.items():
        argv = ["optimize", "--model", "toy", "--method", method, "--nfe", "4"]
        data = ["--data", str(tmp_path / "data.npy")] if method == "ays" else []
        rc, out, err = run(capsys, *argv, "--num-samples", "8", *data)
        assert rc == 0, err
        rec = hio.validate_record(json.loads(out))
        assert rec["method"] == method and rec["nfe"] == 4 and len(rec["t"]) == 5
        assert rec["options"]["model"] == "toy" and rec["options"]["num_samples"] == 8
        lines = err.splitlines()
        assert lines[0].startswith(f"hso-jax optimize: {method}: ") and re.search(pattern, err)
        assert all(line.startswith("hso-jax optimize: ") for line in lines), err
        rc, quiet_out, err = run(capsys, *argv, "--num-samples", "8", *data, "--quiet")
        assert rc == 0 and err == "" and quiet_out == out  # silent, and the same result
    err = bad(capsys, "optimize", "--model", "toy", "--method", "gits", "--nfe", "4", "--data",
              str(tmp_path / "data.npy"))
    assert "argument --data: does not apply to --method gits" in err
    os.mkfifo(tmp_path / "fifo.npy")  # refused at once, never waited on
    err = bad(capsys, "optimize", "--model", "toy", "--method", "ays", "--nfe", "4", "--data",
              str(tmp_path / "fifo.npy"))
    assert "argument --data: cannot read" in err and "named pipe" in err


# ----------------------------------------------------------------------------- --out targets


SCHED = ["schedules", "--noise", "sd21", "--nfe", "5", "--kind", "karras"]


def test_out_dash_is_stdout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, *SCHED, "--out", "-")
    assert rc == 0 and err == "" and list(tmp_path.iterdir()) == []
    assert hio.validate_record(json.loads(out))["nfe"] == 5


def test_out_writes_through_symlink(capsys, tmp_path):
    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    rc, out, err = run(capsys, *SCHED, "--out", str(link))
    assert rc == 0 and out == "" and err == ""
    assert link.is_symlink() and hio.load_schedule(target)["nfe"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]


def test_out_refuses_non_regular_targets_before_working(capsys, tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "null").symlink_to("/dev/null")

    def never(*a, **k):
        raise AssertionError("optimised before checking --out")

    monkeypatch.setattr(sys.modules["hso_jax.optimization"], "optimize", never)
    for name, kind in (("fifo", "a named pipe"), (".", "a directory"),
                       ("null", "a character device")):
        for argv in (SCHED, ["optimize", "--noise", "sd21", "--nfe", "4"]):
            err = bad(capsys, *argv, "--out", str(tmp_path / name))
            assert re.search(f"argument --out: .*is {kind}.*not a regular file.*--out -", err), err
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and (tmp_path / "null").is_symlink()


# ----------------------------------------------------------------------------- smaller ones


def test_nfe_minimum_is_stated_correctly(capsys):
    assert main(["optimize", "--help"]) == 0
    assert main(["demo", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "network evaluations (2 to 1000)" in helptext and ">= 1" not in helptext
    for argv in (["optimize", "--noise", "sd21", "--nfe", "0"], ["demo", "--nfe", "1"],
                 ["optimize", "--noise", "sd21", "--nfe", "x"]):
        assert "argument --nfe: must be an integer in [2, 1000]" in bad(capsys, *argv)
    assert "argument --num-samples: must be an integer in [2, 65536], got 1" in bad(
        capsys, "demo", "--num-samples", "1")


def test_betas_npy_must_be_real_and_a_npy_file(capsys, tmp_path):
    betas = hnoise.scaled_linear_betas()
    np.save(tmp_path / "complex.npy", betas + 1e-3j)
    base = ["--nfe", "3", "--kind", "karras"]
    err = bad(capsys, "schedules", "--betas-file", str(tmp_path / "complex.npy"), *base)
    assert "argument --betas-file: cannot read" in err and "complex128" in err
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(0).bytes(256))
    err = bad(capsys, "schedules", "--betas-file", str(tmp_path / "random.npy"), *base)
    assert "not a NumPy .npy file" in err and "pickle" not in err
    np.save(tmp_path / "bool.npy", np.ones(10, bool))
    err = bad(capsys, "schedules", "--alphas-cumprod-file", str(tmp_path / "bool.npy"), *base)
    assert "expected real numbers" in err and "bool" in err


# ----------------------------------------------------------------------------- Ctrl-C


def _cli():
    exe = Path(sys.executable).with_name("hso-jax")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hso_jax.cli"]


def _spawn(argv, **env):
    return spawn(_cli() + argv, **env)


def test_sigint_during_compilation_stops_at_once(tmp_path):
    """A real run, signalled while XLA compiles (seen in JAX's compile log): exit 130 within
    about a second (not at the end of the compilation), one line, no traceback, no file."""
    out = tmp_path / "s.json"
    p, err = _spawn(["optimize", "--noise", "sd21", "--nfe", "8", "--out", str(out)],
                    JAX_LOG_COMPILES="1", HSO_JAX_COMPILE_CACHE="0")  # a cold search to interrupt
    pending, deadline = {}, time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        for _, line in err.lines[len(pending.get("seen", [])):]:
            m = re.search(r"Finished jaxpr to MLIR module conversion (jit\(\w+\))", line)
            if m:
                pending[m.group(1)] = time.monotonic()
            m = re.search(r"Finished XLA compilation of (jit\(\w+\))", line)
            if m:
                pending.pop(m.group(1), None)
        pending["seen"] = list(err.lines)
        # a compilation that has run for 0.3 s: signal it now
        if any(time.monotonic() - t > 0.3 for k, t in pending.items() if k != "seen"):
            break
        time.sleep(0.02)
    else:
        p.kill()
        pytest.skip("the run ended before any compilation took 0.3 s")
    rc, took = stop(p, signal.SIGINT)
    lines = err.join()
    assert rc == 130, lines[-5:]
    assert took < 5.0  # grace 1 s; an XLA compilation is not waited for
    assert not any("Traceback" in line or "Exception ignored" in line for line in lines)
    assert [line for line in lines if "interrupted" in line] == [
        "hso-jax optimize: interrupted by SIGINT, stopped"]
    assert p.stdout.read() == "" and list(tmp_path.iterdir()) == []


def test_sigint_while_importing_stops_at_once():
    """Signalled while Python imports JAX (seen in ``-X importtime``'s log): the same one line
    and exit status as later, no traceback (``python -m hso_jax`` is what ``hso-jax`` runs)."""
    p, err = spawn([sys.executable, "-X", "importtime", "-m", "hso_jax", "optimize",
                    "--noise", "sd21", "--nfe", "8"])
    err.until(p, r"\| +jax\.", timeout=60)
    assert not any(re.search(r"\| +hso_jax\.cli$", line) for _, line in err.lines)
    assert_stopped(p, err, signal.SIGINT, "hso-jax")
    assert p.stdout.read() == ""


def test_python_m_hso_jax_runs_the_cli():
    p = subprocess.run([sys.executable, "-m", "hso_jax", "schedules", "--noise", "sd15", "--nfe",
                        "2", "--kind", "karras", "--rho", "0"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "argument --rho: must be a number in [0.01, 100]" in p.stderr


@pytest.mark.parametrize("argv", [
    ["demo", "--no-fd", "--out", "{tmp}/demo"],
    ["optimize", "--model", "mnist", "--method", "direct", "--nfe", "4", "--out", "{tmp}/s.json"],
], ids=["demo", "optimize"])
def test_long_commands_report_at_once_and_quiet_silences_them(tmp_path, argv):
    """A command that runs for minutes says what it is doing within 5 s of its start (on
    stderr); with --quiet it says nothing while it works."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    t0 = time.monotonic()
    p, err = _spawn(argv)
    err.until(p, r"\S", timeout=60)
    took = err.lines[0][0] - t0
    p.kill()
    p.wait()
    first = err.lines[0][1]
    assert "Traceback" not in first and took < 5.0, (first, took)
    q, quiet = _spawn([*argv, "--quiet"])
    time.sleep(took + 3.0)  # well past where the first line came
    assert q.poll() is None  # still working
    q.kill()
    q.wait()
    assert quiet.join() == []


def test_sigterm_demo_removes_its_output_folder(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    p, lines = _spawn(["demo", "--out", str(out), "--num-samples", "2", "--no-fd"],
                      HSO_JAX_CACHE=str(cache), PYTHONUNBUFFERED="1")  # progress on stderr
    lines.until(p, r"^\[1/4\]", timeout=240)
    time.sleep(0.5)  # inside the reference solve (the folder is made when results land)
    rc, took = stop(p, signal.SIGTERM)
    err = "\n".join(lines.join())
    assert rc == 143 and took < 5.0, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1] == "hso-jax demo: interrupted by SIGTERM, stopped"
    assert not out.exists()  # the folder the run created is gone
    assert not list(cache.rglob("*.tmp")) if cache.exists() else True
