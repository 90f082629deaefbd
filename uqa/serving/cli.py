"""`uqa serve`'s options and start-up: load the model, then uvicorn until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from uqa.errors import UserError

log = logging.getLogger("uqa.serve")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=".", help="project whose registry resolves --model (default: .)")
    p.add_argument("--model", default="prod", help="prod (or another stage: followed when it moves), NAME:STAGE, "
                                                   "NAME@vX.Y.Z (fixed) or a model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"),
                   help="torch (default), or ONNX Runtime fp32 / int8 dynamic quantization (exported once per "
                        "version, cached beside it)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long an idle server waits for more requests to share its first forward pass")
    p.add_argument("--max-request-windows", type=int, default=8192, metavar="N",
                   help="a request needing more windows of the model than this is refused (422, naming both)")
    p.add_argument("--max-queue", type=int, default=16384, metavar="WINDOWS",
                   help="windows allowed to wait over all requests; a request past it is refused with 503 and "
                        "Retry-After")
    p.add_argument("--request-timeout", type=float, default=60.0, metavar="S",
                   help="a request not answered this long after it arrived gets 504 and its work is dropped")
    p.add_argument("--forward-tokens", type=int, default=16384, metavar="N",
                   help="tokens per forward pass: windows per pass = N // the model's max_seq_length; the waiting "
                        "requests share each pass")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="BYTES",
                   help="larger request bodies are refused with 413")
    p.add_argument("--poll-seconds", type=float, default=5.0, metavar="S",
                   help="how often to check whether the stage moved (0: never)")
    p.add_argument("--check-questions", default=None, metavar="FILE",
                   help="held-out questions (.jsonl/.json/.parquet/.csv) on which a non-torch backend's answers are "
                        "compared with torch's at load (default: the version's own evaluation questions, which "
                        "register records in it)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help=f"every route but /healthz and /readyz then needs Authorization: Bearer KEY (the file's "
                        f"one line; or the environment variable {API_KEY_ENV})")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="bind beyond loopback without an API key (refused otherwise)")
    p.add_argument("--repo", default=None, metavar="GIT_URL",
                   help="serve from another machine's registry: clone GIT_URL and fetch the version the gate "
                        "approved from its DVC remote (uqa run --push publishes it)")


def checked_settings(args: argparse.Namespace):
    """The server's settings from its options, every one checked (and the API key read) before anything
    loads: a wrong option is one line and exit status 2, not a traceback after a model load."""
    from uqa.serving.app import ROUTES, ServeSettings
    from uqa.serving.guard import Security, is_loopback
    from uqa.serving.scheduler import ScheduleSettings

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a port number")
    try:
        schedule = ScheduleSettings(args.max_request_windows, args.max_queue, args.max_wait_ms, args.request_timeout)
    except ValueError:
        raise UserError("--max-request-windows must be >= 1, --max-queue >= --max-request-windows, --max-wait-ms >= 0 "
                        "and --request-timeout > 0") from None
    if args.forward_tokens < 1 or args.max_body_bytes < 1024:
        raise UserError("--forward-tokens must be >= 1 and --max-body-bytes >= 1024")
    api_key = read_api_key(args.api_key_file)
    if api_key is None and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise UserError(f"--host {args.host} answers other machines, and there is no API key: add one with "
                        f"--api-key-file FILE (python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE) or "
                        f"{API_KEY_ENV}, or pass --allow-unauthenticated")
    if args.check_questions and not Path(args.check_questions).exists():
        raise UserError(f"--check-questions {args.check_questions}: no such file")
    return ServeSettings(schedule, args.max_body_bytes, Security.for_binding(args.host, api_key, ROUTES))


def serve(args: argparse.Namespace, root: Path | None, settings=None) -> int:
    """`root`: the project whose registry --model names (None with --repo)."""
    import uvicorn

    from uqa.serving.app import create_app
    from uqa.serving.backends import load_served
    from uqa.serving.models import ModelHolder, ModelSource

    settings = settings or checked_settings(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(OncePerMinute())  # e.g. predict's narrow-window warning comes with every batch
    if args.repo:
        from uqa.serving.remote import RemoteSource

        source = RemoteSource(args.model, args.repo)
    else:
        source = ModelSource(args.model, root)
    check = Path(args.check_questions) if args.check_questions else None
    holder = ModelHolder(source, lambda r: load_served(r, args.backend, args.forward_tokens, check_file=check,
                                                       threads=args.threads),
                         poll_seconds=args.poll_seconds)
    served = holder.load_initial()
    p = served.predictor
    print(f"serving {served.resolved.name or ''} {served.version}"
          f"{f' ({served.resolved.stage})' if served.resolved.stage else ''} from {served.resolved.path} "
          f"with {served.backend}; {p.describe()}", file=sys.stderr)
    for note in served.notes:
        print(f"backend: {note}", file=sys.stderr)
    if source.follows and args.poll_seconds > 0:
        print(f"following {source.name}:{source.stage}: checked every {args.poll_seconds:g} s", file=sys.stderr)
    base = f"http://{args.host}:{args.port}"
    print(f"{base}/  (the page: ask the model, see the registry's history); API {base}/v1/answer, docs {base}/docs"
          f"{'; API key required (Authorization: Bearer)' if settings.security.api_key else ''}", file=sys.stderr)
    app = create_app(holder, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = _Server(config)
    server.run()
    if not server.started and server.stopped_by is None:
        raise UserError(f"could not start the server on {args.host}:{args.port} (in use? see the log above)")
    stats = app.state.scheduler.stats
    print(f"stopped ({server.stopped_by or 'done'}): answered {stats.requests} request(s) in {stats.passes} "
          f"forward pass(es) of {stats.windows} windows", file=sys.stderr)
    return 0


API_KEY_ENV = "UQA_SERVE_API_KEY"
MIN_KEY_CHARS = 16


def read_api_key(path: str | None) -> str | None:
    """The API key from --api-key-file (its one line) or $UQA_SERVE_API_KEY; None when neither is given."""
    import os

    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--api-key-file {path}: cannot be read ({exc})") from None
        where = f"--api-key-file {path}"
    elif os.environ.get(API_KEY_ENV):
        key, where = os.environ[API_KEY_ENV].strip(), API_KEY_ENV
    else:
        return None
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or not c.isprintable() for c in key):
        raise UserError(f"{where}: an API key is one line of at least {MIN_KEY_CHARS} printable characters without "
                        "spaces (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


class OncePerMinute(logging.Filter):
    """Each warning (by its message template) at most once a minute, with a count of those held back."""

    def __init__(self, seconds: float = 60.0):
        super().__init__()
        self.seconds, self.last, self.held = seconds, {}, {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        if record.levelno != logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self.last.get(key, -self.seconds) < self.seconds:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last minute)"
        return True


class _Server:
    """uvicorn.Server whose Ctrl-C / SIGTERM is a clean stop: after its graceful shutdown uvicorn
    re-raises the signal it caught, which `uqa` would report as an interrupted run."""

    def __new__(cls, config):
        import uvicorn

        class Server(uvicorn.Server):
            stopped_by: str | None = None

            def handle_exit(self, sig, frame):
                import signal

                self.stopped_by = signal.Signals(sig).name
                super().handle_exit(sig, frame)
                self._captured_signals.clear()  # handled here: nothing to re-raise

        return Server(config)
