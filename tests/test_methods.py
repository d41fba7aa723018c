"""The method contract: one registry, typed options, and a user's own method."""

import dataclasses
import inspect

import numpy as np
import pytest

import hso_jax as hj
from hso_jax.optimizers import REGISTRY, Method, UnknownOptionError, base, register
from hso_jax.optimizers.ays import optimize_ays
from hso_jax.optimizers.direct import optimize_direct
from hso_jax.optimizers.gits import optimize_gits

SD15 = hj.noise.preset("sd15")


def test_the_built_in_methods_and_their_tables():
    assert set(REGISTRY) == {
        "hso", "hso-dmn", "mep-local", "dmn", "ays", "direct", "gits", "mep-model",
    }  # fmt: skip
    assert hj.optimize.METHODS == base.names() == hj.optimize.MODEL_FREE + hj.optimize.MODEL_BASED
    for name in hj.optimize.MODEL_BASED:
        assert REGISTRY[name].needs_model and REGISTRY[name].inputs
    for name in hj.optimize.MODEL_FREE:
        assert not REGISTRY[name].needs_model and REGISTRY[name].summary


def test_the_command_line_offers_every_registered_method():
    from hso_jax.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    (method,) = [a for a in sub.choices["optimize"]._actions if a.dest == "method"]
    assert tuple(method.choices) == base.names()


@pytest.mark.parametrize(
    "fn, options, skip",
    [
        (optimize_direct, "direct", {"solver", "end", "grid", "start_max"}),
        (optimize_ays, "ays", {"solver", "end", "grid", "_include_normaliser"}),
    ],
)
def test_options_are_the_functions_keywords(fn, options, skip):
    """The Options dataclass and the implementation agree on every name and default."""
    params = {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in skip
    }
    fields = {f.name: f.default for f in dataclasses.fields(REGISTRY[options].options)}
    if options == "ays":  # key is required by the function; the method makes it from the seed
        params["key"] = None
    assert fields == params


def test_gits_options_are_its_keywords_and_the_teachers():
    from hso_jax.optimizers.model_inputs import TEACHER_OPTIONS

    names = [f.name for f in dataclasses.fields(REGISTRY["gits"].options)]
    assert names == ["coeff", "variant", "metric", *TEACHER_OPTIONS]
    params = inspect.signature(optimize_gits).parameters
    opts = REGISTRY["gits"].options()
    assert (opts.coeff, opts.variant) == (params["coeff"].default, params["variant"].default)
    # the options a variant sets are None (= the variant's) until given
    assert opts.metric is opts.teacher_points is opts.teacher_grid is opts.teacher_solver is None


def test_unknown_and_bad_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['popsiz'\].*'popsize'"):
        hj.optimize(SD15, 5, popsiz=3)
    with pytest.raises(UnknownOptionError):
        hj.optimize(SD15, 5, method="dmn", popsize=3)  # a bi-level option
    with pytest.raises(ValueError, match="popsize"):
        hj.optimize(SD15, 5, popsize=1)  # validated when the options are built
    with pytest.raises(ValueError, match=r"method must be one of \('mep-local'"):
        hj.optimize(SD15, 5, method="nope")


@dataclasses.dataclass(frozen=True)
class _ShrinkOptions:
    power: float = 2.0

    def __post_init__(self):
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power!r}")


def _shrink(problem, nfe, solver, options, seed):
    """A toy method: time-uniform points pulled towards the data end."""
    noise = problem.noise
    s = np.linspace(1.0, 0.0, nfe + 1) ** options.power
    t = noise.t_min + s * (noise.t_max - noise.t_min)
    return hj.optimizers.OptimizeResult.from_t(
        t, noise, objective=0.0, penalty=None, method="shrink", solver=str(solver), nfe=nfe
    )


def test_a_users_method_registers_and_runs():
    m = register(Method("shrink", needs_model=False, options=_ShrinkOptions, run=_shrink))
    try:
        assert REGISTRY["shrink"] is m and "shrink" in base.names()
        res = hj.optimize(SD15, 4, method="shrink", power=3.0)
        s = np.linspace(1.0, 0.0, 5) ** 3
        np.testing.assert_allclose(res.t, SD15.t_min + s * (SD15.t_max - SD15.t_min))
        assert res.info["end"] == "t_min" and "sample" in res.info
        with pytest.raises(UnknownOptionError, match="'power'"):
            hj.optimize(SD15, 4, method="shrink", rho=2.0)
        with pytest.raises(ValueError, match="power must be > 0"):
            hj.optimize(SD15, 4, method="shrink", power=0.0)
        with pytest.raises(ValueError, match="registered already"):
            register(m)
    finally:
        base._METHODS.pop("shrink")
