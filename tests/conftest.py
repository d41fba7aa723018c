import jax

# Tests compare against formulas in float64; library code must also work without this flag
# (tests that check x64-independence run the float32 path in a subprocess or explicitly).
jax.config.update("jax_enable_x64", True)
