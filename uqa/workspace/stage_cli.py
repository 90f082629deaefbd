"""The command-line shell around a stage function: `python -m tasks.<stage>` as dvc.yaml runs it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from uqa.errors import UserError
from uqa.ops.procs import sigterm_as_interrupt
from uqa.ops.runtime import apply_runtime_defaults
from uqa.params.files import load_params
from uqa.params.schema import PARAMS_FILE, Params


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("tasks", "uqa", "flows"):
        logging.getLogger(name).setLevel(level)


def stage_main(name: str, run: Callable[[Params, str], Any], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{name}", description=f"Run the `{name}` stage.")
    parser.add_argument("--params", default=PARAMS_FILE, help=f"params file (default: {PARAMS_FILE})")
    args = parser.parse_args(argv)
    setup_logging()
    apply_runtime_defaults()
    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: child processes stopped, temp outputs removed
            params = load_params(args.params)
            run(params, args.params)
    except UserError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"error: {name}: interrupted ({str(exc) or 'Ctrl-C'}); nothing partial was kept, run it again to continue",
              file=sys.stderr)
        return 130
    return 0
