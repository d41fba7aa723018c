"""README's API tour runs as written.

The tour's code block is executed statement by statement in a namespace that supplies only
what a user brings (a network ``fn`` / ``model_fn``, betas, noises, data, a Gaussian mixture),
on tiny shapes; every schedule it produces must pass :func:`hso_jax.schedules.check_schedule`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour_block() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## A tour\n.*?^```python\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no '## A tour' section with a python block"
    return m.group(1)


def _user_inputs() -> dict:
    """What the tour assumes the user has: a 2-D eps network, DDPM betas, data, a mixture."""
    sample_shape = (2,)
    means = jnp.array([[-1.0, 0.5], [1.0, -0.5]])
    stds, weights = jnp.array([0.3, 0.4]), jnp.array([0.5, 0.5])
    gm = hj.models.GaussianMixture(means, stds, weights)
    sd21 = hj.noise.preset("sd21")

    def fn(x, t):  # eps of a standard Gaussian in the network's time input (any t): x * sigma
        return 0.5 * x

    return {
        "betas": np.linspace(1e-4, 0.02, 1000),
        "fn": fn,
        "model_fn": fn,
        "sample_shape": sample_shape,
        "x_T": sd21.prior(jax.random.key(3), (4, *sample_shape)),
        "x_data": gm.sample(jax.random.key(4), 64),
        "means": means,
        "stds": stds,
        "weights": weights,
        "hso_result": hj.optimize(sd21, nfe=5),
        "pipe": _pipeline(),
    }


def _pipeline():
    """A diffusers pipeline's stand-in: its scheduler, for the tour's DDPM betas."""
    diffusers = pytest.importorskip("diffusers")

    class Pipe:
        scheduler = diffusers.DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

    return Pipe()


@pytest.mark.filterwarnings("ignore")
def test_api_tour_runs_as_written():
    code = _tour_block()
    ns = _user_inputs()
    results = []
    for stmt in ast.parse(code).body:
        exec(compile(ast.Module([stmt], []), "README.md", "exec"), ns)
        if isinstance(ns.get("res"), hj.optimizers.OptimizeResult) and (
            not results or ns["res"] is not results[-1]
        ):
            results.append(ns["res"])
    methods = [r.method for r in results]
    assert {"hso", "ays", "direct", "gits", "mep-model"} <= set(methods), methods
    for r in results:  # every method reports the same info keys
        hj.schedules.check_schedule(r.t)
        assert np.isfinite(r.objective) and r.info["timings"]["total_s"] > 0, r.method
    assert np.all(np.isfinite(np.asarray(ns["x0"])))
    assert isinstance(ns["model"], hj.Denoiser)  # the last line loads the shipped model
    assert type(ns["pipe"].scheduler).__name__ == "UniPCMultistepScheduler"
    assert ns["pipe"].scheduler.config.final_sigmas_type == "zero"
