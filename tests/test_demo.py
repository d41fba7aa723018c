"""The main job, ``hso-jax demo``, end to end on the shipped model with tiny settings."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.cli import main
from hso_jax.demo import DIRECT_NOISES, SHIPPED_REFERENCES, _seed_cache, run_demo
from hso_jax.models.zoo import MNIST_ID
from hso_jax.reference.cache import cached_reference, reference_cache_path


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    # a loose reference keeps the smoke test cheap; the default run uses rtol = atol = 1e-5
    run_demo(out, nfe=4, num_samples=4, rtol=1e-2, atol=1e-2, cache_dir=tmp_path / "cache",
             direct_noises=(2, 2), direct_steps=2)
    printed = capsys.readouterr()
    for name in ("results.md", "results.json", "samples.png", "schedules.png"):
        assert (out / name).stat().st_size > 0, name
        assert name in printed.out
    assert "Which schedule to use" in printed.out and "[1/4]" not in printed.out
    assert printed.err.splitlines()[0].startswith("[1/4] reference")  # progress: stderr
    res = json.loads((out / "results.json").read_text())
    schedules = {r["schedule"] for r in res["rows"]}
    solvers = {r["solver"] for r in res["rows"]}
    assert schedules == {"time-uniform", "logSNR", "Karras rho=7", "HSO", "DMN", "direct"}
    assert solvers == {"DDIM", "DPM-Solver++(2M)", "UniPC-bh2"}
    # direct is optimised for UniPC: the multistep solvers run it, DDIM does not
    assert {r["solver"] for r in res["rows"] if r["schedule"] == "direct"} == {
        "DPM-Solver++(2M)", "UniPC-bh2"}
    assert list(res["schedules"]["direct"]) == ["unipc"]
    for solver, w in res["winners"].items():  # the winner is the least RMSE of its solver
        mine = [r for r in res["rows"] if r["solver"] == solver]
        assert w["rmse"] == min(r["rmse"] for r in mine)
        assert w["baseline_rmse"] == min(r["rmse"] for r in mine
                                         if r["schedule"] in ("time-uniform", "logSNR",
                                                              "Karras rho=7"))
        assert np.isclose(w["gain"], 1 - w["rmse"] / w["baseline_rmse"])
    assert "Which schedule to use" in (out / "results.md").read_text()
    for r in res["rows"]:
        assert r["nfe"] == 4 and np.isfinite(r["rmse"]) and np.isfinite(r["rmse_x0"])
        assert r["rmse"] > 0 and np.isfinite(r["psnr"])
    assert res["fd_mnist"]["reference"] >= 0 and len(res["fd_mnist"]) == 7
    # the DDIM flavour of HSO ends with the fixed final step to t_min, the others do not
    assert len(res["schedules"]["HSO"]["ddim"]) == len(res["schedules"]["HSO"]["unipc"]) == 5
    assert "| UniPC-bh2 | HSO" in (out / "results.md").read_text()
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # the cached reference


def test_demo_cli_arguments(capsys):
    assert main(["demo", "--help"]) == 0
    assert "results.md" in capsys.readouterr().out
    assert main(["demo", "--num-samples", "0"]) == 2
    assert "argument --num-samples: must be an integer in [2, 65536]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2, got 1"):
        run_demo("unused", num_samples=1)
    bad = [
        (dict(direct="yes"), TypeError, r"direct must be True or False"),
        (dict(direct_noises=(0, 16)), ValueError, r"direct_noises\[0\] must be an integer >= 1"),
        (dict(direct_noises=(32,)), ValueError, r"direct_noises must be a pair .*\(32,\)"),
        (dict(direct_steps=0), ValueError, r"direct_steps must be an integer >= 1"),
        (dict(progress=1), TypeError, r"progress must be True or False"),
    ]
    for kwargs, error, match in bad:  # refused before any work or any file
        with pytest.raises(error, match=match):
            run_demo("unused", **kwargs)
    assert not Path("unused").exists()


@pytest.mark.parametrize("batch", ["evaluation", "direct"])
def test_shipped_reference_is_a_valid_cache_hit_and_the_models_solution(tmp_path, batch):
    model = hj.models.load("mnist")
    ns = model.noise
    key = jax.random.key(0)
    x_T = (  # the demo's default batches: its evaluation noises, direct's training noises
        ns.prior(key, (64, 28, 28, 1)) if batch == "evaluation"
        else ns.prior(jax.random.fold_in(key, 1), (sum(DIRECT_NOISES), 28, 28, 1))
    )
    where = dict(key_id=MNIST_ID, rtol=1e-5, atol=1e-5, cache_dir=tmp_path)
    path = reference_cache_path(x_T, ns.t_max, ns.t_min, **where)
    assert (SHIPPED_REFERENCES / path.name).is_file()
    _seed_cache(path, lambda *a: None)

    def no_solve(*args, **kwargs):
        raise AssertionError("the shipped reference was not used")

    ref = np.asarray(cached_reference(model, x_T, ns.t_max, ns.t_min, solve=no_solve, **where))
    # independent check on two samples: a looser solve from the same noise lands close by
    # (rtol 1e-3 differs from rtol 1e-5 by about 0.03 RMSE on this model)
    loose = hj.evaluation.reference_solve(model, x_T[:2], ns.t_max, ns.t_min, rtol=1e-3, atol=1e-3)
    assert np.sqrt(np.mean((np.asarray(loose) - ref[:2]) ** 2)) < 0.08


def test_unwritable_cache_reads_the_shipped_reference(tmp_path):
    """A cache that cannot take the shipped reference (a file where the folder should be):
    _seed_cache says so, and the shipped file itself is a valid cache entry to read."""
    model = hj.models.load("mnist")
    ns = model.noise
    x_T = ns.prior(jax.random.key(0), (64, 28, 28, 1))
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    where = dict(key_id=MNIST_ID, rtol=1e-5, atol=1e-5)
    path = reference_cache_path(x_T, ns.t_max, ns.t_min, cache_dir=blocker, **where)
    assert _seed_cache(path, lambda *a: None) is False

    def no_solve(*args, **kwargs):
        raise AssertionError("the shipped reference was not used")

    ref = cached_reference(
        model, x_T, ns.t_max, ns.t_min, solve=no_solve, cache_dir=SHIPPED_REFERENCES, **where
    )
    assert ref.shape == x_T.shape


@pytest.mark.parametrize("nfe, rounds", [(5, 0), (4, True)])
def test_full_runs_ays_at_the_validated_settings_and_gits(monkeypatch, nfe, rounds):
    """--full's plumbing (the searches themselves take minutes; timed in docs/results.md):
    AYS gets bench_ays's settings and skips subdivision only where it changes nothing, GITS
    gets the noises it is given, and both schedules serve every flavour."""
    import types

    from hso_jax import demo, optimization

    calls = []

    def fake(model, n, method, **kw):
        calls.append((method, n, kw))
        return types.SimpleNamespace(t=np.linspace(1.0, 1e-3, n + 1))

    monkeypatch.setattr(optimization, "optimize", fake)
    x = np.zeros((3, 28, 28, 1), np.float32)
    out = dict(demo._ays_and_gits("model", nfe, ["ddim", "unipc"], x, "key", lambda *a: None))
    assert list(out) == ["AYS", "GITS"]
    for by_flavour, seconds in out.values():
        assert list(by_flavour) == list(seconds) == ["ddim", "unipc"]
    (ays, n_a, kw_a), (gits, n_g, kw_g) = calls
    assert (ays, gits, n_a, n_g) == ("ays", "gits", nfe, nfe)
    assert {k: kw_a[k] for k in demo.AYS_SETTINGS} == demo.AYS_SETTINGS
    assert kw_a["subdivide"] == rounds and type(kw_a["subdivide"]) is type(rounds)
    assert kw_a["data"].shape == (1024, 28, 28, 1) and kw_g["x_T"] is x
    assert "variant" not in kw_g and callable(kw_g["callback"])  # official; its progress
