"""The ``hso-jax`` command, run in-process through ``main(argv)``."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

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
    assert rc == 0 and set(d) == {"timesteps", "sigmas"}
    assert d["timesteps"] == [999, 850, 736, 645, 545, 455, 343, 233, 125, 24, 0]
    rc, out, _ = run(capsys, "schedules", "--noise", "cosine", "--nfe", "10", "--kind", "ays",
                     "--format", "diffusers")  # default table for cosine: deepfloyd-if
    assert rc == 0 and json.loads(out)["timesteps"][0] == 995
    rc, out, _ = run(capsys, "schedules", "--noise", "edm", "--nfe", "5", "--kind", "ays",
                     "--table", "sdxl", "--format", "comfyui")
    assert rc == 0 and json.loads(out)[0] == pytest.approx(14.615)


def test_comfyui_ends(capsys):
    base = ["schedules", "--noise", "sd15", "--nfe", "3", "--kind", "karras", "--format", "comfyui"]
    rc, out, _ = run(capsys, *base)
    a = json.loads(out)
    assert rc == 0 and len(a) == 4 and a[-1] > 0
    rc, out, _ = run(capsys, *base, "--end", "zero")
    z = json.loads(out)
    assert rc == 0 and len(z) == 4 and z[-1] == 0.0 and z[:-1] == a[:-1]
    rc, out, _ = run(capsys, *base, "--end", "append_zero")
    ap = json.loads(out)
    assert rc == 0 and ap == a + [0.0]
    rc, out, _ = run(capsys, *base, "--end", "sigma_min")
    assert json.loads(out) == a


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
         "argument --nfe: must be an integer >= 1, got 0"),
        (["schedules", "--noise", "sd15", "--nfe", "x", "--kind", "karras"], "argument --nfe"),
        (["schedules", "--noise", "sd99", "--nfe", "5", "--kind", "karras"],
         "argument --noise: invalid choice: 'sd99'"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "cosine"],
         "argument --kind: invalid choice"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--rho", "-1"],
         "argument --rho: must be > 0"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--rho", "nan"],
         "argument --rho: must be finite"),
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
         "argument --end: only applies to --format comfyui"),
        (["schedules", "--noise", "sd15", "--nfe", "5", "--kind", "karras", "--format", "a1111"],
         "argument --format: invalid choice"),
        (["schedules", "--noise", "edm", "--nfe", "5", "--kind", "karras", "--format",
          "diffusers"], "to_diffusers needs a discrete-time process.*continuous"),
        (["schedules", "--noise", "sd15", "--nfe", "2000", "--kind", "uniform", "--format",
          "diffusers"], "duplicate diffusers timesteps"),
        (["schedules", "--noise", "sd15", "--betas-file", "b.txt", "--nfe", "5", "--kind",
          "karras"], "argument --betas-file: not allowed with argument --noise"),
    ],
)
def test_bad_arguments_exit_2(capsys, args, match):
    err = bad(capsys, *args)
    assert err.count("\n") <= 12
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
    assert p.returncode == 2 and "argument --rho: must be > 0" in p.stderr
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
    assert set(from_file) == {"timesteps", "sigmas"} and len(from_file["timesteps"]) == 5


@pytest.mark.parametrize(
    "args, match",
    [
        (["optimize", "--noise", "sd21", "--nfe", "1"], "argument --nfe: must be an integer >= 2"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--method", "ays"],
         "argument --method: invalid choice"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--method", "gits"],
         "argument --model: required by --method gits"),
        (["optimize", "--model", "mnist", "--nfe", "4"],
         "argument --model: only applies to --method direct / gits / mep-model"),
        (["optimize", "--model", "mnist", "--noise", "ddpm", "--nfe", "4", "--method", "direct"],
         "do not apply to --method direct"),
        (["optimize", "--model", "no-such-model", "--nfe", "4", "--method", "gits"],
         "argument --model: .*no-such-model"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--solver", "heun"],
         "argument --solver: invalid choice"),
        (["optimize", "--noise", "sd21", "--nfe", "4", "--end", "zero"],
         "argument --end: only applies to --format comfyui"),
        (["optimize", "--nfe", "4"], "--noise"),
    ],
)
def test_optimize_bad_arguments_exit_2(capsys, args, match):
    err = bad(capsys, *args)
    assert re.search(match, err), err


def test_optimize_model_based_methods(capsys, monkeypatch):
    """--model plumbing (a Gaussian-mixture stand-in for the zoo model keeps this fast)."""
    from hso_jax.models import zoo

    ddpm = hnoise.preset("ddpm")
    gm = hj.models.GaussianMixture(jnp.asarray([[1.0, 0.0], [-1.0, 0.0]]), 0.2)
    monkeypatch.setattr(zoo, "load", lambda name: gm.denoiser(ddpm))
    monkeypatch.setattr(zoo, "sample_shape", lambda name: (2,))
    for method in ("gits", "direct"):
        argv = ["optimize", "--model", "toy", "--method", method, "--nfe", "4"]
        rc, out, err = run(capsys, *argv, "--num-samples", "8")
        assert rc == 0, err
        rec = hio.validate_record(json.loads(out))
        assert rec["method"] == method and rec["nfe"] == 4 and len(rec["t"]) == 5
        assert rec["options"]["model"] == "toy" and rec["options"]["num_samples"] == 8
