import os

import jax

# The suite never reads or writes the user's persistent compilation cache (a warm cache would
# also leave no compilation for the SIGINT test to interrupt); tests/test_compile_cache.py sets
# its own variables in its subprocesses.
os.environ["HSO_JAX_COMPILE_CACHE"] = "0"

# Tests compare against formulas in float64; library code must also work without this flag
# (tests that check x64-independence run the float32 path in a subprocess or explicitly).
jax.config.update("jax_enable_x64", True)
