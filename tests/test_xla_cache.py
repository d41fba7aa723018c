"""The persistent compilation cache (hso_jax._xla_cache): populated by the CLI and by the
first hso_jax.optimize call, opt-out by environment variable, a user's own cache folder kept,
an unwritable folder reported once without losing the result.

Every check runs in a fresh subprocess: JAX's persistent cache is process-wide and is set up
once per process, so it cannot be reset inside the test process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Variables of the caller's environment that would change what is cached where.
_CLEARED = (
    "HSO_JAX_CACHE",
    "HSO_JAX_COMPILE_CACHE",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_ENABLE_COMPILATION_CACHE",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)
_SCHEDULES = ["schedules", "--noise", "sd21", "--nfe", "3", "--kind", "karras"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return {**env, **extra}


def _cli(argv, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hso_jax.cli", *argv],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


def _python(code: str, **env) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return p


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*-cache")) if folder.is_dir() else []


def test_cli_run_populates_the_cache(tmp_path):
    root = tmp_path / "root"
    p = _cli(_SCHEDULES, HSO_JAX_CACHE=str(root))
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr
    assert len(_entries(root / "xla")) > 0
    # A second run finds what the first stored and gives the same output.
    q = _cli(_SCHEDULES, HSO_JAX_CACHE=str(root))
    assert q.returncode == 0 and q.stdout == p.stdout


def test_opt_out_leaves_the_cache_empty(tmp_path):
    root = tmp_path / "root"
    p = _cli(_SCHEDULES, HSO_JAX_CACHE=str(root), HSO_JAX_COMPILE_CACHE="0")
    assert p.returncode == 0, p.stderr
    assert _entries(root / "xla") == []
    assert json.loads(p.stdout)["nfe"] == 3


def test_bad_opt_out_value_is_a_usage_error(tmp_path):
    p = _cli(_SCHEDULES, HSO_JAX_CACHE=str(tmp_path), HSO_JAX_COMPILE_CACHE="maybe")
    assert p.returncode == 2 and p.stdout == ""
    assert "HSO_JAX_COMPILE_CACHE" in p.stderr and "'maybe'" in p.stderr
    assert "'0'" in p.stderr and "Traceback" not in p.stderr


def test_library_turns_it_on_at_the_first_optimize_call(tmp_path):
    root = tmp_path / "root"
    p = _python(
        """
        import jax
        import hso_jax
        from hso_jax import _xla_cache
        assert jax.config.jax_compilation_cache_dir is None  # import changes nothing
        res = hso_jax.optimize(hso_jax.noise.preset("sd21"), nfe=2, method="mep-local")
        print(jax.config.jax_compilation_cache_dir)
        print(jax.config.jax_persistent_cache_min_compile_time_secs)
        print(_xla_cache.LIBRARY_MIN_COMPILE_TIME_S)
        """,
        HSO_JAX_CACHE=str(root),
    )
    folder, threshold, expected = p.stdout.split()
    assert Path(folder) == (root / "xla").absolute()
    assert float(threshold) == float(expected)
    assert any("_local" in name for name in _entries(root / "xla"))  # the compiled search


def test_user_cache_dir_is_respected(tmp_path):
    root, user = tmp_path / "root", tmp_path / "user"
    p = _python(
        f"""
        import jax
        jax.config.update("jax_compilation_cache_dir", {str(user)!r})
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
        from pathlib import Path
        from hso_jax import _xla_cache, cli
        assert _xla_cache.enable() == Path({str(user)!r})
        with _xla_cache.cache_everything():  # not ours: the user's threshold stays
            assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
        assert cli.main({_SCHEDULES!r}) == 0
        assert jax.config.jax_compilation_cache_dir == {str(user)!r}
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
        """,
        HSO_JAX_CACHE=str(root),
    )
    assert "warning" not in p.stderr
    assert not (root / "xla").exists()
    # The same through JAX's environment variable, for the command line.
    q = _cli(_SCHEDULES, HSO_JAX_CACHE=str(root), JAX_COMPILATION_CACHE_DIR=str(user))
    assert q.returncode == 0, q.stderr
    assert not (root / "xla").exists()


def test_unwritable_cache_warns_once_and_keeps_the_result(tmp_path):
    # Tests run as root, for whom permissions do not stop writes: a file stands where the
    # folder should be.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    p = _cli([*_SCHEDULES, "--format", "comfyui"], HSO_JAX_CACHE=str(blocker))
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 4
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hso-jax schedules: warning:"), lines
    assert "not writable" in lines[0] and "HSO_JAX_COMPILE_CACHE=0" in lines[0]

    root = tmp_path / "root"
    root.mkdir()
    (root / "xla").write_text("not a folder")
    q = _python(
        """
        import warnings
        import jax
        import hso_jax
        from hso_jax import _xla_cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = hso_jax.optimize(hso_jax.noise.preset("sd21"), nfe=2, method="mep-local")
            assert _xla_cache.enable() is None  # no second warning
        assert res.t.shape == (3,)
        assert jax.config.jax_compilation_cache_dir is None
        mine = [str(w.message) for w in caught if "compilation cache" in str(w.message)]
        assert len(mine) == 1 and "not writable" in mine[0], mine
        """,
        HSO_JAX_CACHE=str(root),
    )
    assert (root / "xla").is_file()
    assert "Traceback" not in q.stderr


_REPEAT = """
    import json, warnings
    import hso_jax
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hso_jax.optimize(hso_jax.noise.preset("sd21"), nfe=2, method="mep-local")
    print(json.dumps({"t": res.t.tolist(), "loaded": res.info["timings"]["loaded"],
                      "warnings": [str(w.message) for w in caught]}))
"""


def test_a_new_process_reads_the_traced_search_and_replaces_a_damaged_one(tmp_path):
    root = tmp_path / "root"

    def run() -> dict:
        return json.loads(_python(_REPEAT, HSO_JAX_CACHE=str(root)).stdout)

    first = run()
    (entry,) = (root / "programs").glob("*.jaxprog")
    assert first["loaded"] is False and first["warnings"] == []
    second = run()  # traced program read back, executable from the persistent cache
    assert second["loaded"] is True and second["t"] == first["t"] and second["warnings"] == []

    entry.write_bytes(b"half an entry")  # e.g. a disk that filled up under another writer
    third = run()
    assert third["loaded"] is False and third["t"] == first["t"]
    assert len(third["warnings"]) == 1 and "damaged program cache entry" in third["warnings"][0]
    fourth = run()  # the damaged entry was replaced by a good one
    assert fourth["loaded"] is True and fourth["t"] == first["t"]


def test_opt_out_keeps_no_traced_search(tmp_path):
    root = tmp_path / "root"
    out = json.loads(_python(_REPEAT, HSO_JAX_CACHE=str(root), HSO_JAX_COMPILE_CACHE="0").stdout)
    assert out["loaded"] is False and not (root / "programs").exists()
