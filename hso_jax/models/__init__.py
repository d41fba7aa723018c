"""Models: analytic oracles (Gaussian mixtures with exact denoisers) and network ports."""

from .gaussian_mixture import GaussianMixture

__all__ = ["GaussianMixture"]
