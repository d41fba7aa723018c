"""Schedule objectives: pure factories returning ``schedule -> scalar`` with per-term parts.

* :func:`mep` -- HSO's Midpoint Error Proxy;
* :func:`mep_model` -- the MEP with the network term tabulated along teacher trajectories;
* :func:`dmn` -- the DM-NonUniform Lagrange-quadrature error bound;
* :func:`spacing_penalty` -- the spacing term of HSO's Spacing-Penalized Fitness;
* :func:`klub` -- Align Your Steps' Monte-Carlo KL upper bound (model-based).
"""

from .dmn import dmn, hso_trunc_num, step_orders, step_weights
from .klub import KLUB, klub
from .mep import FRAMES, Objective, eps_tilde, log_eps_tilde, mep
from .mep_model import MEPTable, mep_model, mep_table
from .spacing import (
    GAMMA,
    d_min,
    normalised_time,
    spacing_penalty,
    spacing_violations,
    time_from_normalised,
)

__all__ = [
    "FRAMES",
    "GAMMA",
    "KLUB",
    "MEPTable",
    "Objective",
    "d_min",
    "dmn",
    "eps_tilde",
    "hso_trunc_num",
    "klub",
    "log_eps_tilde",
    "mep",
    "mep_model",
    "mep_table",
    "normalised_time",
    "spacing_penalty",
    "spacing_violations",
    "step_orders",
    "step_weights",
    "time_from_normalised",
]
