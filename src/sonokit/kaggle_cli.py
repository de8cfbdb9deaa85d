"""Run the real ``kaggle`` command-line tool and read what it prints.

The CLI's exit code is not enough: ``kaggle kernels push`` prints ``Kernel push error: ...``
and exits 0 when the server refuses a push, and ``competitions submit`` prints the server's
message whatever it says. These wrappers accept a result only when the CLI printed its
success line, and turn everything else into :class:`KaggleCliError` with the CLI's own words.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


class KaggleCliError(RuntimeError):
    """The kaggle CLI failed, or printed an error while exiting 0."""


AUTH_HELP = (
    "no Kaggle credentials: run `kaggle auth login`, or set KAGGLE_API_TOKEN (token from "
    "https://www.kaggle.com/settings/api), or KAGGLE_USERNAME and KAGGLE_KEY, or put the token in ~/.kaggle/access_token"
)


def kaggle_command() -> list[str]:
    """The ``kaggle`` executable of this Python environment (or the module, if not on PATH)."""
    beside = Path(sys.executable).with_name("kaggle")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("kaggle")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from kaggle.cli import main; sys.exit(main())"]


def run_cli(args: list[str], timeout: int = 600) -> tuple[int, str]:
    """Run ``kaggle ARGS``; return (exit code, stdout + stderr)."""
    try:
        r = subprocess.run([*kaggle_command(), *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise KaggleCliError(f"kaggle {' '.join(args[:2])} timed out after {timeout} s") from None
    return r.returncode, (r.stdout or "") + (r.stderr or "")


def _fail(what: str, rc: int, out: str) -> KaggleCliError:
    text = out.strip()
    if "Authentication required" in text or "Could not find kaggle.json" in text or "401" in text.split("\n")[0]:
        return KaggleCliError(f"{what}: {AUTH_HELP}")
    tail = "\n".join(text.splitlines()[-8:])
    code = f"exit {rc}" if rc else "exit 0, but it printed an error"
    return KaggleCliError(f"{what} failed ({code}):\n{tail}")


def submit_command(competition: str, csv: str | Path, message: str) -> str:
    return shlex.join(["kaggle", "competitions", "submit", "-c", competition, "-f", str(csv), "-m", message])


def submit(competition: str, csv: str | Path, message: str) -> str:
    """``kaggle competitions submit -c C -f CSV -m M``; returns what the CLI printed."""
    if not competition:
        raise KaggleCliError("no competition slug: pass --competition or set run.competition")
    rc, out = run_cli(["competitions", "submit", "-c", competition, "-f", str(csv), "-m", message])
    if rc != 0 or "Successfully submitted" not in out:
        raise _fail("kaggle competitions submit", rc, out)
    return out


def push_kernel(folder: str | Path) -> str:
    """``kaggle kernels push -p FOLDER``; returns what the CLI printed."""
    rc, out = run_cli(["kernels", "push", "-p", str(folder)])
    if rc != 0 or "error" in out.lower() or "successfully pushed" not in out.lower():
        raise _fail(f"kaggle kernels push -p {folder}", rc, out)
    return out
