"""Convergence orders of the deterministic solvers against a tight diffrax reference solve.

Oracle: a 4-component Gaussian mixture in 2-D with its exact denoiser under the continuous
VP-linear process; reference: :func:`hso_jax.evaluation.reference_solve` (Tsit5, rtol = atol =
1e-12, float64). Schedules are uniform in lam from lam = -4 (high noise, where schedules start in
practice) to lam = 2.5. The slope of log(max error) vs log(NFE) over N = 64, 128, 256 steps
(128, 256, 512 for the fourth-order methods, whose asymptotic regime starts later) must be
within 0.3 of the expected order.

Expected orders, and why some differ from the method's nominal ``order``:

* The lower-order warm-up steps of multistep methods have local errors O(h^2) (first order) and
  O(h^3), so *asymptotically* a third-order multistep method converges with order 2; their error
  constant is proportional to how fast the data prediction moves at the start, ~SNR(start)
  = e^{-8} here (as in practice: samplers start at high noise), far below the other terms at
  these step counts, so the interior order is what is measured.
* DPM-Solver++(3M) with the reference code's D2 coefficient (``legacy_3m=True``) converges with
  order 2: its third-order term is half the Taylor one (see ``dpm_solver_pp``'s docstring).
* iPNDM with the published constant-step Adams-Bashforth weights is order 2 on any grid that is
  not uniform in sigma_edm (logSNR-uniform is geometric in sigma_edm); with
  ``variable_step=True`` it is order 4.
* UniPC-p with the corrector is order p + 1 (UniPC Thm. 3.1); UniP-p alone is order p.

Compilation dominates: each solver runs in one compiled ``fori_loop`` whose trip count is
traced (schedules padded to a fixed length; the static step count passed to ``step`` is >= 15,
so ``lower_order_final`` is inactive exactly as in ``sample`` for these N), instead of compiling
``sample`` once per schedule length; ``test_step_loop_matches_sample`` checks the loop against
``sample``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax import solvers as S
from hso_jax.evaluation import reference_solve

NS = hj.noise.preset("vp-linear")
GM = hj.models.GaussianMixture(
    np.array([[1.2, 0.6], [-1.0, -0.4], [0.4, -1.3], [-0.6, 1.1]]),
    np.array([0.3, 0.45, 0.25, 0.35]),
    np.array([0.3, 0.25, 0.25, 0.2]),
)
MODEL = GM.denoiser(NS)
LAM_START, LAM_END = -4.0, 2.5
STEPS = (64, 128, 256)
STEPS_ORDER4 = (128, 256, 512)
MAX_STEPS = 512
BIG_N = 10_000  # static step count passed to step(): >= 15, so no lower-order final steps

CASES = [
    # (id, solver, expected order)
    ("ddim", S.ddim(), 1),
    ("dpm_2m", S.dpm_solver_pp(2), 2),
    ("dpm_3m", S.dpm_solver_pp(3), 3),
    ("dpm_3m_legacy", S.dpm_solver_pp(3, legacy_3m=True), 2),
    ("dpm_2s", S.dpm_solver_pp(2, "singlestep"), 2),
    ("dpm_3s", S.dpm_solver_pp(3, "singlestep"), 3),
    ("unipc1_bh2", S.unipc(1, "bh2"), 2),
    ("unipc2_bh2", S.unipc(2, "bh2"), 3),
    ("unipc3_bh2", S.unipc(3, "bh2"), 4),
    ("unipc1_bh1", S.unipc(1, "bh1"), 2),
    ("unipc2_bh1", S.unipc(2, "bh1"), 3),
    ("unipc3_bh1", S.unipc(3, "bh1"), 4),
    ("unip3_bh1", S.unipc(3, "bh1", corrector=False), 3),
    ("ipndm", S.ipndm(), 2),
    ("ipndm_v", S.ipndm(variable_step=True), 4),
    ("euler", S.euler(), 1),
    ("heun", S.heun(), 2),
]


@pytest.fixture(scope="module")
def problem():
    x_T = jax.random.normal(jax.random.key(0), (4, 2), jnp.float64) * NS.sigma(1.0)
    t_start, t_end = NS.t_from_lam(LAM_START), NS.t_from_lam(LAM_END)
    # Start from the state the ODE actually passes through at t_start (not noise scaled to an
    # arbitrary level), then solve tightly to t_end.
    x_start = reference_solve(MODEL, x_T, NS.t_max, t_start, rtol=1e-12, atol=1e-12)
    x_ref = reference_solve(MODEL, x_start, t_start, t_end, rtol=1e-12, atol=1e-12)
    return x_start, x_ref


@functools.partial(jax.jit, static_argnums=0)
def _solve_padded(solver, model, x, ts, num_steps):
    # One compiled while loop per solver for every step count (num_steps is traced; ts is
    # padded to a fixed length), the step count passed to step() is static and >= 15.
    def body(i, carry):
        x, state = carry
        x, state, _ = solver.step(model, x, state, ts[i], ts[i + 1], i, BIG_N, None)
        return x, state

    state = solver.init(model, x, ts)
    return jax.lax.fori_loop(0, num_steps, body, (x, state))[0]


def _solve(solver, x, num_steps):
    ts = NS.t_from_lam(jnp.linspace(LAM_START, LAM_END, num_steps + 1))
    ts = jnp.concatenate([ts, jnp.full(MAX_STEPS - num_steps, ts[-1])])
    return _solve_padded(solver, MODEL, x, ts, num_steps)


@pytest.mark.parametrize("name, solver, order", CASES, ids=[c[0] for c in CASES])
def test_convergence_order(problem, name, solver, order):
    x_start, x_ref = problem
    steps = STEPS_ORDER4 if order == 4 else STEPS
    errors = np.array([float(jnp.max(jnp.abs(_solve(solver, x_start, n) - x_ref))) for n in steps])
    nfe = np.array([solver.nfe(n) for n in steps])
    slope = -np.polyfit(np.log(nfe), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (name, slope, errors)
    assert errors[-1] > 1e-11  # still far above the reference's own error


def test_step_loop_matches_sample(problem):
    """The loop used above is the driver's scan, step for step."""
    x_start, _ = problem
    ts = NS.t_from_lam(jnp.linspace(LAM_START, LAM_END, 16 + 1))
    for solver in (S.unipc(3), S.dpm_solver_pp(3, "singlestep")):
        np.testing.assert_allclose(
            _solve(solver, x_start, 16), hj.sample(MODEL, x_start, ts, solver), rtol=1e-12
        )
