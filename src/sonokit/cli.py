"""Shared command-line plumbing: config flags, readable errors, exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .config import Config, ConfigError, load_config
from .constants import EXIT_BAD_INPUT
from .deps import MissingDependencies
from .schema import DataError, SchemaError


def add_config_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("configuration")
    g.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config file (repeatable; later files win)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one config key, e.g. --set student.train.epochs=3 (repeatable; wins over --config)",
    )
    g.add_argument("--data", default="", help="data directory (train.csv, train/, test/, sample_submission.csv)")
    g.add_argument("--schema", default="", help="input schema YAML (default: input_schema/default.yaml)")
    g.add_argument("--name", default="", help="run name: outputs go to runs/<name>/ (default: 'default')")


def config_from_args(a: argparse.Namespace, extra: list[str] | None = None) -> Config:
    overrides = list(extra or [])
    if a.data:
        overrides.append(f"data.root={a.data}")
    if a.schema:
        overrides.append(f"data.schema={a.schema}")
    if a.name:
        overrides.append(f"run.name={a.name}")
    # explicit --set wins over the shortcuts above
    return load_config(a.config, overrides + list(a.overrides))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)


def run_main(fn: Callable[[], int]) -> int:
    """Run ``fn``; turn the kit's input errors into a readable message and exit code 2."""
    try:
        return fn()
    except DataError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"error: {len(e.problems)} problem(s) in the input data (run scripts/check_data.py for the list)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ConfigError, SchemaError, FileNotFoundError, ValueError, MissingDependencies) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
