"""Sharded grid evaluation over 8 simulated CPU devices equals the unsharded one.

The check runs in a subprocess with ``--xla_force_host_platform_device_count=8`` so that this
test process keeps its single device.
"""

import textwrap

from _devices import run_on_devices

MARKER = "SHARDED_GRID_OK"

SCRIPT = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)

    import hso_jax as hj
    from hso_jax.evaluation import grid as G
    from hso_jax.evaluation.metrics import psnr, rmse

    assert len(jax.devices()) == 8, jax.devices()
    ns = hj.noise.VPLinear()
    model = hj.models.GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.5]).denoiser(ns)
    x_T = ns.prior(jax.random.key(0), (16, 2), jnp.float64)
    ref = jax.random.normal(jax.random.key(1), (16, 2))

    def uniform(n):
        lam = jnp.linspace(ns.lam(ns.t_max), ns.lam(ns.t_min), n)
        return ns.t_from_lam(lam).at[0].set(ns.t_max).at[-1].set(ns.t_min)

    schedules = {"a4": uniform(4), "c4": uniform(4) ** 0.99}
    solvers = {"ddim": hj.solvers.ddim(), "sddim": hj.solvers.ddim(eta=1.0)}
    seen = []

    def first(x, r):  # the sample itself, and where it lives
        jax.debug.inspect_array_sharding(x, callback=seen.append)
        return x[:, 0]

    metrics = {"rmse": rmse, "psnr": psnr, "x_first": first}
    kw = dict(metrics=metrics, key=jax.random.key(2), denoise_final=True)
    plain = G.evaluate_grid(model, x_T, ref, schedules, solvers, **kw)
    assert seen and all(s.num_devices == 1 for s in seen), seen  # no mesh: one device
    seen.clear()
    sharded = G.evaluate_grid(model, x_T, ref, schedules, solvers, mesh="auto", **kw)
    assert len(seen) == 2, seen  # one per (solver, length) group
    for s in seen:
        assert s.num_devices == 8 and "batch" in str(s.spec), s
    assert len(plain) == len(sharded) == 4
    for p, s in zip(plain, sharded):
        assert (p.schedule, p.solver, p.nfe) == (s.schedule, s.solver, s.nfe)
        for k in metrics:
            np.testing.assert_allclose(s.per_sample[k], p.per_sample[k], rtol=1e-13, atol=0)
            np.testing.assert_allclose(s.metrics[k], p.metrics[k], rtol=1e-13, atol=0)

    try:
        G.evaluate_grid(model, x_T[:12], ref[:12], schedules, solvers, mesh="auto", **kw)
    except ValueError as e:
        assert "divisible" in str(e), e
    else:
        raise AssertionError("a batch of 12 on 8 devices must be rejected")
    assert len(G.shard_batch(x_T, G.make_batch_mesh()).addressable_shards) == 8
    print("MARKER")
    """
).replace("MARKER", MARKER)


def test_sharded_grid_equals_unsharded_on_8_devices(tmp_path):
    run_on_devices(tmp_path, SCRIPT, MARKER)
