"""Installs as users make them: a plain (non-editable) wheel install finds its package data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_ships_the_default_schema(tmp_path, tiny_data):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("sonokit-*.whl")
    venv = tmp_path / "venv"
    # the dependencies (torch, timm, ...) come from this environment; sonokit only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    probe = ("import sonokit, sonokit.schema as s, sonokit.config as c; print(sonokit.__file__); print(s.load_schema().source); "
             "from sonokit.paths import packaged_schema; print(packaged_schema().read_text().count('submission_columns'))")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    where, schema, n = r.stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(where).parent == site / "sonokit"  # the installed copy, not this checkout
    assert schema == str(site / "sonokit" / "default_schema.yaml") and Path(schema).is_file() and not Path(schema).is_symlink()
    assert int(n) >= 1
    # and a real command of the installed kit validates data with it
    r = subprocess.run([str(py), str(ROOT / "scripts" / "check_data.py"), str(tiny_data), "--no-progress"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path, env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK: 10 train images in 2 classes")
