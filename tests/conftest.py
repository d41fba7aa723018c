import os
import shutil
import tempfile
from pathlib import Path

import jax

# The suite never reads or writes the user's caches: its package cache (the persistent XLA
# compilation cache, the stored traced searches and the reference solves) is a folder of this
# session, shared by the two workers and their subprocesses, so a search compiled by one test
# is a cache hit for the others (as it is for a user's repeated runs) and removed at the end.
# Tests that need a cold process set their own variables (tests/test_xla_cache.py, the SIGINT
# test of tests/test_cli.py).
_SESSION = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
SESSION_CACHE = Path(tempfile.gettempdir()) / f"hso-jax-tests-{_SESSION}"
os.environ["HSO_JAX_CACHE"] = str(SESSION_CACHE)
os.environ.pop("HSO_JAX_COMPILE_CACHE", None)


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the session's own process, after the workers
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)

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
