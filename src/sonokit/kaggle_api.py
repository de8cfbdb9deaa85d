"""Kaggle pushes and submissions through the ``kaggle`` package's Python API, read as structured data.

The CLI's printed text and exit code cannot be trusted (``kaggle kernels push`` prints
``Kernel push error: ...`` and exits 0; a push whose dataset, competition or kernel sources were
rejected prints a line and succeeds). Here every answer is the API's response object: a push
fails on ``error`` or on any invalid source, a submission fails without a submission ref, and
:func:`wait_for_score` polls the submission until it is scored (or failed) and returns the score.
Every failure is a :class:`KaggleApiError` carrying the server's own words.
"""
from __future__ import annotations

import contextlib
import io
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class KaggleApiError(RuntimeError):
    """A Kaggle request failed, was refused, or was accepted only in part."""


AUTH_HELP = (
    "no Kaggle credentials: run `kaggle auth login`, or set KAGGLE_API_TOKEN (token from "
    "https://www.kaggle.com/settings/api), or KAGGLE_USERNAME and KAGGLE_KEY, or put the token in ~/.kaggle/access_token"
)


def submit_command(competition: str, csv: str | Path, message: str) -> str:
    """The equivalent CLI command, for people who submit by hand."""
    return shlex.join(["kaggle", "competitions", "submit", "-c", competition, "-f", str(csv), "-m", message])


def connect():
    """An authenticated ``KaggleApi`` (importing ``kaggle`` authenticates and prints; both are captured)."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise KaggleApiError(AUTH_HELP) from None
    except Exception as e:  # noqa: BLE001 - any failure to authenticate is the same problem for the user
        raise KaggleApiError(f"{AUTH_HELP}\n({type(e).__name__}: {e})") from None
    return api


def _call(what: str, fn: Callable, *args, **kwargs):
    """Run an API call; an HTTP error becomes a KaggleApiError with the server's message."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):
            return fn(*args, **kwargs)
    except KaggleApiError:
        raise
    except Exception as e:  # noqa: BLE001 - requests' HTTPError and kagglesdk's errors alike
        resp = getattr(e, "response", None)
        detail = ""
        if resp is not None:
            try:
                body = resp.json()
                detail = body.get("message") or body.get("error") or ""
            except ValueError:
                detail = (resp.text or "")[:500]
            code = getattr(resp, "status_code", "")
            if code == 401:
                raise KaggleApiError(f"{what}: {AUTH_HELP}") from None
            raise KaggleApiError(f"{what} failed (HTTP {code}): {detail or e}") from None
        printed = noise.getvalue().strip()
        raise KaggleApiError(f"{what} failed: {type(e).__name__}: {e}" + (f"\n{printed[-1000:]}" if printed else "")) from None


@dataclass
class PushResult:
    ref: str
    url: str
    version: int


def push_kernel(folder: str | Path, api=None) -> PushResult:
    """``kernels push`` of ``folder``; fails on an error or on any rejected dataset/competition/kernel source."""
    api = api or connect()
    what = f"push of {folder}"
    resp = _call(what, api.kernels_push, str(folder))
    if resp is None:
        raise KaggleApiError(f"{what} failed: no response")
    if resp.error:
        raise KaggleApiError(f"{what} refused: {resp.error}")
    rejected = {
        "dataset": list(resp.invalid_dataset_sources or []),
        "competition": list(resp.invalid_competition_sources or []),
        "kernel": list(resp.invalid_kernel_sources or []),
        "model": list(resp.invalid_model_sources or []),
    }
    bad = {k: v for k, v in rejected.items() if v}
    if bad:
        listed = "; ".join(f"{k} sources {v}" for k, v in bad.items())
        raise KaggleApiError(f"{what}: Kaggle rejected {listed}; the kernel was saved without them and cannot run. "
                             f"Check the names in kernel-metadata.json (and that they exist and you can see them)")
    return PushResult(ref=resp.ref or "", url=resp.url or "", version=int(resp.version_number or 0))


@dataclass
class SubmitResult:
    ref: int
    message: str


def submit(competition: str, csv: str | Path, message: str, api=None) -> SubmitResult:
    """Upload ``csv`` as a submission; returns its ref (the server's message on failure)."""
    if not competition:
        raise KaggleApiError("no competition slug: pass --competition or set run.competition")
    api = api or connect()
    what = f"submission to {competition}"
    resp = _call(what, api.competition_submit, str(csv), message, competition, quiet=True)
    if resp is None or not getattr(resp, "ref", 0):
        raise KaggleApiError(f"{what} failed: {getattr(resp, 'message', '') or 'no submission was created'}")
    return SubmitResult(ref=int(resp.ref), message=resp.message or "")


@dataclass
class Score:
    status: str  # COMPLETE
    public_score: str  # "" when the competition does not publish one yet
    private_score: str
    seconds: float


def wait_for_score(ref: int, timeout_s: float = 3600, poll_s: float = 30, api=None, progress: Callable[[str], None] | None = None) -> Score:
    """Poll submission ``ref`` until it is scored; raise when scoring fails or ``timeout_s`` passes."""
    from kagglesdk.competitions.types.submission_status import SubmissionStatus

    api = api or connect()
    t0 = time.monotonic()
    while True:
        try:
            sub = _call(f"status of submission {ref}", api.get_submission, int(ref))
        except KaggleApiError as e:
            if "HTTP 404" not in str(e):  # just created: may not be readable yet
                raise
            sub = None
        status = sub.status if sub is not None else SubmissionStatus.PENDING
        if status == SubmissionStatus.COMPLETE:
            return Score("COMPLETE", str(sub.public_score or ""), str(sub.private_score or ""), round(time.monotonic() - t0, 1))
        if status == SubmissionStatus.ERROR:
            raise KaggleApiError(f"submission {ref} failed to score: {(sub.error_description or '').strip() or 'no reason given'}")
        if time.monotonic() - t0 > timeout_s:
            raise KaggleApiError(f"submission {ref} not scored after {timeout_s:.0f} s; check it with: kaggle competitions submissions")
        if progress:
            progress(f"submission {ref}: {status.name.lower()} ({time.monotonic() - t0:.0f} s)")
        time.sleep(poll_s)
