"""Solvers on flow-matching models: the ends sigma = 1 / sigma = 0, and parity with diffusers.

The oracle is a Gaussian mixture under rectified flow (alpha = 1 - t, sigma = t), wrapped as a
flow-matching network: it returns the exact velocity v = eps - x0 (``prediction="flow"``), so
every solver goes through the flow parametrisation. Diffusers' schedulers are run step by step
on the same oracle (called from torch on their own sigmas) and compared with our solvers on the
same sigmas; the schedules start at t = 1 (or diffusers' 1 - 1e-6) and end at t = 0 exactly, as
flow pipelines do.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.noise import RectifiedFlow

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

FLOW = RectifiedFlow(t_min=0.0, t_max=1.0, name="flow-closed")  # both ends reachable
GM = hj.models.GaussianMixture(
    np.array([[1.0, -0.5, 0.3], [-1.2, 0.4, -0.2], [0.1, 1.0, 0.8]]),
    np.array([0.3, 0.5, 0.2]),
    weights=np.array([0.5, 0.3, 0.2]),
)
MODEL = GM.denoiser(FLOW, prediction="flow")
X_T = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
SHIFT = 3.0


def torch_velocity(x, sigma):
    """The oracle as a torch network: exact velocity at (x, sigma), float64."""
    v = GM.velocity(jnp.asarray(x.numpy()), FLOW, float(sigma))
    return torch.from_numpy(np.array(v, np.float64))


def run_diffusers(sched, sigma_of_step):
    """Step a diffusers scheduler (``set_timesteps`` done) through its timesteps on the oracle;
    ``sigma_of_step(k)`` is the sigma the network sees at call k. Returns every state."""
    x = torch.from_numpy(np.array(X_T))
    states = [x.numpy()]
    for k, t in enumerate(sched.timesteps):
        x = sched.step(torch_velocity(x, sigma_of_step(k)), t, x, return_dict=False)[0]
        states.append(x.numpy().astype(np.float64))
    return states


def our_states(ts, solver):
    traj = hj.sample_trajectory(MODEL, X_T, jnp.asarray(ts, jnp.float64), solver)
    return np.asarray(traj.x)


# --- the ends of the schedule ----------------------------------------------------------------


def test_gaussian_mixture_eps_and_velocity_are_exact():
    # Independent check: for one Gaussian N(mu, s^2) under x = (1 - t) x0 + t eps, the
    # posterior of eps given x is Gaussian with mean t (x - (1 - t) mu) / ((1 - t)^2 s^2 + t^2).
    mu, s = np.array([0.7, -1.1]), 0.4
    gm = hj.models.GaussianMixture(mu[None], s)
    x = np.array([[0.3, 0.2], [-1.0, 2.0]])
    for t in (0.0, 0.25, 0.9, 1.0):
        var = (1 - t) ** 2 * s**2 + t**2
        eps = t * (x - (1 - t) * mu) / var
        x0 = mu + (1 - t) * s**2 * (x - (1 - t) * mu) / var
        np.testing.assert_allclose(gm.eps(x, FLOW, t), eps, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gm.velocity(x, FLOW, t), eps - x0, rtol=1e-12, atol=1e-14)
    # the flow-parametrised denoiser returns the same data prediction as the x0 one
    for t in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(
            MODEL.x0(X_T, t), GM.denoiser(FLOW).x0(X_T, t), rtol=1e-12, atol=1e-12
        )


# the variants whose masked higher-order branches, histories and ends differ (the forward
# paths of Euler, DDIM, 2M and UniPC-2 bh1 / bh2 are covered by the diffusers parity tests)
SOLVERS = {
    "ddim-eta1": hj.solvers.ddim(eta=1.0),
    "heun": hj.solvers.heun(),
    "dpm3m": hj.solvers.dpm_solver_pp(3, lower_order_final=False),
    "unipc3-nolof": hj.solvers.unipc(3, lower_order_final=False),
    "ipndm-v": hj.solvers.ipndm(variable_step=True),
    "sde-dpm2m": hj.solvers.sde_dpm_solver_pp(2),
}
ENDS = jnp.asarray([1.0, 0.8, 0.55, 0.3, 0.12, 0.04, 0.0])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_runs_from_sigma_one_to_zero(name):
    """Finite samples and finite gradients w.r.t. every interior point on a schedule from
    t = 1 to t = 0; the last step returns the data prediction at the last point (iPNDM's
    Adams-Bashforth step to sigma~ = 0 is finite and need not), and the first step is the
    exact first-order step from pure noise, sigma_1 x_T + alpha_1 D(x_T, 1)."""
    solver = SOLVERS[name]
    key = jax.random.key(3)
    traj = hj.sample_trajectory(MODEL, X_T, ENDS, solver, key)
    assert np.all(np.isfinite(traj.x))
    if not name.startswith("ipndm"):
        np.testing.assert_allclose(traj.x[-1], traj.x0[-1], rtol=1e-12, atol=1e-12)
    if not solver.stochastic and name != "heun":
        t1 = float(ENDS[1])
        first = t1 * X_T + (1 - t1) * GM.x0(X_T, FLOW, 1.0)
        np.testing.assert_allclose(traj.x[1], first, rtol=1e-12, atol=1e-12)

    def loss(interior):
        ts = jnp.concatenate([ENDS[:1], interior, ENDS[-1:]])
        return jnp.sum(hj.sample(MODEL, X_T, ts, solver, key) ** 2)

    g = jax.grad(loss)(ENDS[1:-1])
    assert np.all(np.isfinite(g)), g
    # and the gradient is right: central differences on one interior point
    k, d = 2, 1e-6
    e = jnp.zeros(ENDS.shape[0] - 2).at[k].set(d)
    fd = (loss(ENDS[1:-1] + e) - loss(ENDS[1:-1] - e)) / (2 * d)
    np.testing.assert_allclose(g[k], fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "solver, match",
    [
        (hj.solvers.dpm_solver_pp(2, "singlestep"), "singlestep DPM-Solver"),
        (hj.solvers.unipc(variant="bh1"), "bh1"),
        (hj.solvers.heun(space="edm"), "space='edm'"),
    ],
)
def test_methods_without_a_limit_at_sigma_one_say_so(solver, match):
    with pytest.raises(ValueError, match=match):
        hj.sample(MODEL, X_T, ENDS[:-1], solver)


def test_singlestep_dpm_solver_refuses_a_step_into_sigma_zero():
    with pytest.raises(ValueError, match="to sigma = 0"):
        hj.sample(MODEL, X_T, ENDS[1:], hj.solvers.dpm_solver_pp(3, "singlestep"))


def test_multistep_step_into_sigma_zero_is_first_order_for_long_schedules():
    """With 16 steps (no lower_order_final), a step into sigma = 0 still returns the data
    prediction of the last state: the second-order term would extrapolate to lam = inf."""
    ts = jnp.concatenate([jnp.linspace(1.0, 0.05, 16), jnp.zeros(1)])
    traj = hj.sample_trajectory(MODEL, X_T, ts, hj.solvers.dpm_solver_pp(2))
    np.testing.assert_allclose(traj.x[-1], traj.x0[-1], rtol=1e-13, atol=1e-13)


# --- parity with diffusers, step by step ------------------------------------------------------


def assert_same_states(ours, theirs, rtol=2e-5):
    # diffusers computes each update in float32 (it upcasts the sample to float32), so the
    # agreement is float32 rounding accumulated over the steps.
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"state {k}")


@pytest.mark.parametrize("n", [6])
def test_euler_equals_flow_match_euler(n):
    sched = schedulers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    sched.set_timesteps(n)
    sig = sched.sigmas.numpy().astype(np.float64)
    assert sig[0] == 1.0 and sig[-1] == 0.0  # the pipeline schedule: from t = 1 to t = 0
    theirs = run_diffusers(sched, lambda k: sig[k])
    assert_same_states(our_states(sig, hj.solvers.euler()), theirs)


@pytest.mark.parametrize("n", [5])
def test_heun_equals_flow_match_heun(n):
    sched = schedulers.FlowMatchHeunDiscreteScheduler(shift=SHIFT)
    sched.set_timesteps(n)
    sig_int = sched.sigmas.numpy().astype(np.float64)  # s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0
    theirs = run_diffusers(sched, lambda k: sig_int[k])
    ts = np.append(sig_int[0:-1:2], 0.0)  # s0 .. s_{n-1}, 0
    assert len(theirs) == 2 * n  # 2 n - 1 calls: the last step into 0 is an Euler step
    ours = our_states(ts, hj.solvers.heun())
    # diffusers' state after every completed step: after call 0, then after calls 2, 4, ...
    assert_same_states(ours, [theirs[0]] + theirs[2::2] + [theirs[-1]])


def flow_multistep(cls, n, **config):
    """A diffusers multistep scheduler configured for a flow model with SD3's shift, its
    timesteps set for ``n`` steps; returns it and its sigmas (ending at 0) in float64."""
    sched = cls(
        use_flow_sigmas=True,
        flow_shift=SHIFT,
        prediction_type="flow_prediction",
        final_sigmas_type="zero",
        **config,
    )
    sched.set_timesteps(n)
    sig = sched.sigmas.numpy().astype(np.float64)
    assert sig[-1] == 0.0
    return sched, sig


@pytest.mark.parametrize(
    "order, n, ours",
    [
        (2, 6, hj.solvers.dpm_solver_pp(2)),
        (2, 16, hj.solvers.dpm_solver_pp(2)),
        (3, 8, hj.solvers.dpm_solver_pp(3, legacy_3m=True)),
    ],
)
def test_dpm_solver_pp_equals_diffusers_with_flow_sigmas(order, n, ours):
    sched, sig = flow_multistep(
        schedulers.DPMSolverMultistepScheduler, n, solver_order=order, algorithm_type="dpmsolver++"
    )
    assert len(sig) == n + 1
    theirs = run_diffusers(sched, lambda k: sig[k])
    assert_same_states(our_states(sig, ours), theirs)


@pytest.mark.parametrize("order, n, variant", [(2, 6, "bh2"), (3, 8, "bh2"), (2, 5, "bh1")])
def test_unipc_equals_diffusers_with_flow_sigmas(order, n, variant):
    sched, sig = flow_multistep(
        schedulers.UniPCMultistepScheduler, n, solver_order=order, solver_type=variant
    )
    assert 1.0 - 1e-5 < sig[0] < 1.0  # diffusers' UniPC starts just below 1
    theirs = run_diffusers(sched, lambda k: sig[k])
    ours = our_states(sig, hj.solvers.unipc(order, variant=variant))
    if variant == "bh1":
        # diffusers' bh1 step into sigma = 0 computes x_t_ - alpha_t B_h pred_res with
        # B_h = -h = -inf and pred_res = 0 (first order): NaN. Ours is the first-order limit,
        # the data prediction (test_every_solver_runs_from_sigma_one_to_zero); compare the rest.
        ours, theirs = ours[:-1], theirs[:-1]
    assert_same_states(ours, theirs)
