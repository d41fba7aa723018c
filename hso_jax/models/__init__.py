"""Models: analytic oracles (Gaussian mixtures with exact denoisers) and network ports.

* :class:`GaussianMixture` - analytic oracle with an exact denoiser;
  :class:`ConditionalGaussianMixture` - its class-conditional form (exact conditional,
  unconditional and guided denoisers).
* :class:`UNet2D`, :func:`unet_fn` - Flax Linen port of diffusers' ``UNet2DModel``.
* :func:`load` - the shipped MNIST DDPM (``load("mnist")``) or a converted model directory, as
  a ready :class:`hso_jax.Denoiser`; :func:`denoiser_from_config` - the same from a config and
  parameters in memory; :func:`load_mnist_digits` - the MNIST data helper.
* :class:`UNet2DConditionModel`, :class:`UNetCondConfig` - Flax Linen port of diffusers'
  ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x / XL); :func:`unet_fn` and
  :func:`hso_jax.models.unet.init_params` take either config; :func:`tiny_config` - tiny
  SD-like architectures (random weights) for tests and examples.
* :mod:`hso_jax.models.convert` - diffusers (PyTorch) -> Flax converter (``convert`` extra).
* :mod:`hso_jax.models.classifier` - MNIST feature network (FD-MNIST's features).
"""

from .gaussian_mixture import NULL_CLASS, ConditionalGaussianMixture, GaussianMixture
from .unet import UNet2D, UNetConfig, unet_fn
from .unet_cond import UNet2DConditionModel, UNetCondConfig, tiny_config
from .zoo import denoiser_from_config, load, load_mnist_digits

__all__ = [
    "GaussianMixture",
    "ConditionalGaussianMixture",
    "NULL_CLASS",
    "UNet2D",
    "UNetConfig",
    "unet_fn",
    "UNet2DConditionModel",
    "UNetCondConfig",
    "tiny_config",
    "denoiser_from_config",
    "load",
    "load_mnist_digits",
    "load_classifier",
    "mnist_features",
]

_LAZY = {"load_classifier", "mnist_features"}


def __getattr__(name):
    # Lazy, so that `python -m hso_jax.models.classifier` does not import itself twice.
    if name in _LAZY:
        from . import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
