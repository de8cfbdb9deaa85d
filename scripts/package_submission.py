#!/usr/bin/env python
"""Package a run's submission into submissions/ (never overwriting), optionally submit it.

  python scripts/package_submission.py runs/<name> [--message "nf_regnet_b1 KD 5-fold"] [--submit]

Validates RUN_DIR/submission.csv against the data's sample_submission.csv (ids, order,
header, labels, no NaN), copies it to submissions/<UTC stamp>_<run name>.csv with a JSON
manifest (CV scores, both FLOPs counts and the pipeline cost, TTA views, members and their
sha256, config hash, the CSV's sha256, the git commit). With --submit it runs the real
`kaggle competitions submit` and fails on missing credentials, a 4xx answer, or an error the
CLI prints while exiting 0; without it, it prints the exact command to run.
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
    ap.add_argument("--competition", "-c", default="", help="competition slug (default: run.competition from the run's config)")
    ap.add_argument("--out", default=str(ROOT / "submissions"), help="where packages go (default: submissions/)")
    a = ap.parse_args(argv)

    def go() -> int:
        from sonokit.kaggle_cli import KaggleCliError, submit, submit_command
        from sonokit.packaging import make_manifest
        from sonokit.submission import SubmissionError, package

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
        try:
            out = submit(competition, dst, message)
        except KaggleCliError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(out.strip())
        data = json.loads(man.read_text())
        data["submitted"] = {"command": cmd, "cli_output": out.strip()[-2000:]}
        from sonokit.io import atomic_write_json

        atomic_write_json(man, data)  # the manifest is ours to update; the CSV is never touched
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
