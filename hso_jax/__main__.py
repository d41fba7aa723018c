"""``python -m hso_jax`` and the ``hso-jax`` command: :func:`hso_jax.cli.main`, with SIGINT /
SIGTERM handled from the first instant. Importing JAX takes a second or two; a signal then
ends the process with the same one line and exit status 130 / 143 as later, not a traceback
(an exception raised inside JAX's extension initialisation would surface as an ImportError, so
this phase exits at once instead of raising)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _signals


def main(argv: Sequence[str] | None = None) -> int:
    """Import the command line under :func:`hso_jax._signals.exit_at_once` and run it."""
    with _signals.exit_at_once("hso-jax"):
        from .cli import main as cli_main  # loads JAX and the library
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
