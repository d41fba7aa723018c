"""Schedule optimisers."""

from .result import OptimizeResult

__all__ = ["OptimizeResult"]
