"""Run a script in a subprocess with simulated CPU devices (the test process keeps one)."""

import os
import subprocess
import sys


def run_on_devices(tmp_path, script: str, marker: str, count: int = 8, timeout: float = 600) -> str:
    """Run ``script`` with ``--xla_force_host_platform_device_count=count``; it must exit 0 and
    print ``marker`` on a line of its own. Returns its stdout."""
    path = tmp_path / "devices_script.py"
    path.write_text(script)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker in proc.stdout.splitlines()
    return proc.stdout
