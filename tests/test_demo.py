"""The main job, ``hso-jax demo``, end to end on the shipped model with tiny settings."""

import json

import numpy as np

import pytest

from hso_jax.cli import main
from hso_jax.demo import run_demo


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    # a loose reference keeps the smoke test cheap; the default run uses rtol = atol = 1e-5
    run_demo(out, nfe=4, num_samples=4, rtol=1e-2, atol=1e-2, cache_dir=tmp_path / "cache")
    printed = capsys.readouterr().out
    for name in ("results.md", "results.json", "samples.png", "schedules.png"):
        assert (out / name).stat().st_size > 0, name
        assert name in printed
    res = json.loads((out / "results.json").read_text())
    schedules = {r["schedule"] for r in res["rows"]}
    solvers = {r["solver"] for r in res["rows"]}
    assert schedules == {"time-uniform", "logSNR", "Karras rho=7", "HSO", "DMN"}
    assert solvers == {"DDIM", "DPM-Solver++(2M)", "UniPC-bh2"}
    for r in res["rows"]:
        assert r["nfe"] == 4 and np.isfinite(r["rmse"]) and np.isfinite(r["rmse_x0"])
        assert r["rmse"] > 0 and np.isfinite(r["psnr"])
    assert res["fd_mnist"]["reference"] >= 0 and len(res["fd_mnist"]) == 6
    # the DDIM flavour of HSO ends with the fixed final step to t_min, the others do not
    assert len(res["schedules"]["HSO"]["ddim"]) == len(res["schedules"]["HSO"]["unipc"]) == 5
    assert "| UniPC-bh2 | HSO" in (out / "results.md").read_text()
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # the cached reference


def test_demo_cli_arguments(capsys):
    assert main(["demo", "--help"]) == 0
    assert "results.md" in capsys.readouterr().out
    assert main(["demo", "--num-samples", "0"]) == 2
    assert "argument --num-samples: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2, got 1"):
        run_demo("unused", num_samples=1)
