import os

import jax

# The suite never reads or writes the user's persistent compilation cache (a warm cache would
# also leave no compilation for the SIGINT test to interrupt); tests/test_xla_cache.py sets
# its own variables in its subprocesses.
os.environ["HSO_JAX_COMPILE_CACHE"] = "0"

# Tests compare against formulas in float64; library code must also work without this flag
# (tests that check x64-independence run the float32 path in a subprocess or explicitly).
jax.config.update("jax_enable_x64", True)


# The files that take longest run first: with two workers taking whole files in collection
# order (-n 2 --dist loadfile), the longest-first order keeps the two busy to the end instead
# of leaving one long file alone at the tail.
LONGEST_FIRST = (
    "test_conditions.py",
    "test_train.py",
    "test_demo.py",
    "test_readme.py",
    "test_convert.py",
    "test_export.py",
    "test_cli.py",
    "test_zoo.py",
    "test_unet_cond.py",
    "test_direct.py",
    "test_mep_model.py",
    "test_xla_cache.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
