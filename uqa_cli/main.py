"""`uqa`: one command for the pipeline (runs.py: run, sweep, demo, schedule, alerts) and its models
(models.py: predict, registry, serve). Errors a user can act on are one line and exit status 2."""

from __future__ import annotations

import argparse
import sys

from uqa.errors import UserError
from uqa.ops.procs import sigterm_as_interrupt
from uqa.ops.runtime import apply_runtime_defaults
from uqa_cli import models, runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uqa", description="Fine-tune and serve extractive QA models on UQA.")
    sub = parser.add_subparsers(dest="command", required=True)
    runs.add_parsers(sub)
    models.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_runtime_defaults()  # before Prefect is imported
    _stacks_on_sigusr1()
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        why = str(exc) or "Ctrl-C"
        print(f"interrupted ({why}): the run was stopped; run it again to continue (finished stages are "
              "cached, training resumes from its last complete checkpoint)", file=sys.stderr)
        return 130


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack to stderr: where a command that seems stuck is."""
    import faulthandler
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation: stderr replaced in-process (no fd)
        pass


if __name__ == "__main__":
    raise SystemExit(main())
