#!/usr/bin/env python
"""Package a run's submission into submissions/ (never overwriting), optionally submit it.

  python scripts/package_submission.py runs/<name> [--message "nf_regnet_b1 KD 5-fold"] [--submit [--wait]]

Validates RUN_DIR/submission.csv against the data's sample_submission.csv (ids, order,
header, labels, no NaN), copies it to submissions/<UTC stamp>_<run name>.csv with a JSON
manifest (CV scores, both FLOPs counts and the pipeline cost, TTA views, members and their
sha256, config hash, the CSV's sha256, the git commit). With --submit it submits through the
kaggle package's API and fails (exit 1) on missing credentials, a refused request or an upload
that created no submission; the submission's ref goes into the manifest. --wait then polls the
submission until Kaggle has scored it and writes the public score into the manifest. Without
--submit it prints the equivalent kaggle CLI command.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sonokit.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run directory holding submission.csv (written by the infer stage)")
    ap.add_argument("--message", "-m", default="", help="submission description (default: run name, CV and FLOPs)")
    ap.add_argument("--submit", action="store_true", help="submit with the kaggle CLI after packaging")
    ap.add_argument("--wait", nargs="?", type=float, const=3600.0, default=None, metavar="SECONDS",
                    help="with --submit: wait until the submission is scored (default up to 3600 s) and record the public score")
    ap.add_argument("--poll", type=float, default=30.0, help="seconds between status checks while waiting (default 30)")
    ap.add_argument("--competition", "-c", default="", help="competition slug (default: run.competition from the run's config)")
    ap.add_argument("--out", default=str(ROOT / "submissions"), help="where packages go (default: submissions/)")
    a = ap.parse_args(argv)

    def go() -> int:
        from sonokit.io import atomic_write_json
        from sonokit.kaggle_api import KaggleApiError, connect, submit, submit_command, wait_for_score
        from sonokit.packaging import make_manifest
        from sonokit.submission import SubmissionError, package

        if a.wait is not None and not a.submit:
            ap.error("--wait needs --submit")
        run_dir = Path(a.run_dir)
        try:
            manifest, csv = make_manifest(run_dir, ROOT)
        except SubmissionError as e:
            print(f"error: {run_dir / 'submission.csv'} is not a valid submission:", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
            return 2
        competition = a.competition or manifest.get("competition") or ""
        manifest["competition"] = competition
        message = a.message or manifest["default_message"]
        manifest["message"] = message
        dst, man = package(csv, run_dir.name, manifest, Path(a.out))
        print(f"packaged: {dst}\nmanifest: {man}")
        cmd = submit_command(competition or "<competition>", dst, message)
        if not a.submit:
            print(f"to submit:\n  {cmd}")
            return 0

        def record(**fields) -> None:  # the manifest is ours to update; the CSV is never touched
            data = json.loads(man.read_text())
            data.setdefault("submitted", {}).update(fields)
            atomic_write_json(man, data)

        try:
            api = connect()
            res = submit(competition, dst, message, api)
            print(f"submitted: ref {res.ref}: {res.message}", flush=True)
            record(ref=res.ref, server_message=res.message, competition=competition)
            if a.wait is not None:
                try:
                    score = wait_for_score(res.ref, a.wait, a.poll, api, progress=lambda t: print(t, flush=True))
                except KaggleApiError as e:
                    record(status="ERROR" if "failed to score" in str(e) else "UNKNOWN", error=str(e))
                    raise
                print(f"scored: public score {score.public_score or '(not published)'} after {score.seconds:.0f} s")
                record(status=score.status, public_score=score.public_score, private_score=score.private_score)
        except KaggleApiError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
