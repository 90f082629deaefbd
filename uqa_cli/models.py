"""`uqa predict`, `uqa registry` (show, diff) and `uqa serve`: the commands that use registered models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uqa.errors import UserError


def _resolve(spec: str, project: Path) -> Path:
    return _resolve_in(spec, project)[1]


def _resolve_in(spec: str, project: Path) -> tuple[Path, Path]:
    """(the project whose registry has it, the model directory): PROJECT, else its demo-run/."""
    from uqa.registry.lookup import resolve_model
    from uqa.registry.store import RegistryInconsistent

    try:
        return project, resolve_model(spec, project)
    except RegistryInconsistent:
        raise  # a broken registry is reported, never papered over with the demo's model
    except UserError:
        demo = project / "demo-run"
        if Path(spec).exists() or not (demo / "registry").exists():
            raise
        path = resolve_model(spec, demo)
        print(f"(no {spec!r} model in {project.resolve()}; using the demo's registry in {demo})", file=sys.stderr)
        return demo, path


def cmd_predict(args: argparse.Namespace) -> int:
    from uqa.model.predict import Predictor, read_batch

    model_dir = _resolve(args.model, Path(args.project))
    # settings not given here come from the model (uqa_inference.json; for <project>/models/final the
    # project's metrics/eval.json): the windows, span search and threshold the model was evaluated with
    predictor = Predictor(model_dir, max_seq_length=args.max_seq_length, stride=args.stride, n_best=args.n_best,
                          max_answer_length=args.max_answer_length, no_answer_threshold=args.no_answer_threshold)
    if args.input:
        rows = read_batch(Path(args.input))
        ids = [row.get("id", i) for i, row in enumerate(rows)]
        answers = predictor([r["question"] for r in rows], [r["context"] for r in rows], ids=ids, where=args.input)
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for qid, row, ans in zip(ids, rows, answers, strict=True):
                record = {"id": qid, "question": row["question"], **ans.to_dict()}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"model:  {model_dir}\nsettings: {predictor.describe()}", file=sys.stderr)
        return 0
    if not args.question or not args.context:
        raise UserError("give --question and --context, or --input FILE")
    answer = predictor([args.question], [args.context])[0]
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    elif answer.no_answer:
        print("answer: (no answer in the context)")
        print(f"score:  {answer.score:.4f}")
    else:
        print(f"answer: {answer.answer}")
        print(f"score:  {answer.score:.4f}")
        print(f"chars:  {answer.start}-{answer.end}")
    print(f"model:  {model_dir}\nsettings: {predictor.describe()}", file=sys.stderr)
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from uqa.registry.lookup import default_artifact
    from uqa.registry.store import PROD, Registry

    if getattr(args, "registry_command", None) == "show":
        return _registry_show(args)
    if getattr(args, "registry_command", None) == "diff":
        return _registry_diff(args)
    if getattr(args, "registry_command", None) == "history":
        return _registry_history(args)
    project = Path(args.project)
    name = args.name or default_artifact(project)
    registry = Registry(project, name)
    prod = registry.stage_version(PROD)
    versions = registry.versions()
    if not versions:
        print(f"no versions of {name} in {project.resolve() / 'registry'}")
        return 1
    print(f"{name} ({'GTO tags' if registry.uses_git else 'registry index'}; prod = {prod})")
    for v in versions:
        mark = (" <- prod" if v["version"] == prod else "") + (" (files pruned)" if v.get("pruned") else "")
        m = v["metrics"]
        print(f"  {v['version']}  F1 {m.get('f1', 0):6.2f}  EM {m.get('exact_match', 0):6.2f}  "
              f"{'promoted' if v['promoted'] else 'not promoted'}: {v['reason']}{mark}")
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    from uqa.registry.lineage import describe
    from uqa.registry.lookup import version_of

    registry, version = version_of(args.spec, Path(args.project), args.name)
    record = registry.record(version)
    stages = [s for s in ("prod",) if registry.stage_version(s) == version]
    if args.json:
        print(json.dumps({"name": registry.name, "stages": stages, **record}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(describe(registry.name, record, stages)))
    return 0


def _registry_history(args: argparse.Namespace) -> int:
    from uqa.registry.history import history_lines, registry_history
    from uqa.registry.lookup import default_artifact

    project = Path(args.project)
    history = registry_history(project, args.name or default_artifact(project))
    print(json.dumps(history, indent=2, ensure_ascii=False) if args.json else "\n".join(history_lines(history)))
    return 0


def _registry_diff(args: argparse.Namespace) -> int:
    from uqa.registry.lineage import diff
    from uqa.registry.lookup import version_of

    (ra, va), (rb, vb) = (version_of(s, Path(args.project), args.name) for s in (args.a, args.b))
    changes = diff(ra.record(va), rb.record(vb))
    if args.json:
        print(json.dumps({k: [{"key": key, "a": x, "b": y} for key, x, y in rows] for k, rows in changes.items()},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"{ra.name}@{va} -> {rb.name}@{vb}")
    if not changes:
        print("  no difference in code, params, data, metrics, weights or run")
    for section, rows in changes.items():
        print(f"  {section}:")
        for key, x, y in rows:
            print(f"    {key}: {json.dumps(x, ensure_ascii=False)} -> {json.dumps(y, ensure_ascii=False)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The registered model over HTTP (uqa/serving); follows the stage it was given."""
    if args.cron is not None:
        raise UserError(f"`uqa serve` now answers questions over HTTP; the scheduler is `uqa schedule --cron "
                        f"{args.cron!r}` (same options as before)")
    from uqa.serving.cli import checked_settings, serve

    settings = checked_settings(args)  # every option and the API key, before anything loads
    if args.repo:  # another machine's registry: GTO + the DVC remote (uqa/serving/remote.py)
        return serve(args, None, settings)
    return serve(args, _resolve_in(args.model, Path(args.project))[0], settings)


def add_parsers(sub) -> None:
    """The subcommands that use registered models: predict, serve, registry (show, diff)."""
    p = sub.add_parser("predict", help="answer questions with a model directory or a registry stage/version")
    p.add_argument("--model", default="prod", help="PATH, prod (or another stage), NAME:STAGE or NAME@vX.Y.Z")
    p.add_argument("--project", default=".", help="project whose registry resolves --model (default: .)")
    p.add_argument("--question")
    p.add_argument("--context")
    p.add_argument("--input", help="batch mode: .jsonl/.json/.parquet/.csv with question, context (and id)")
    p.add_argument("--output", help="batch mode: write jsonl here (default: stdout)")
    p.add_argument("--json", action="store_true", help="print the single answer as JSON")
    from_model = " (default: the model's, from its uqa_inference.json)"
    p.add_argument("--max-seq-length", type=int, default=None, help="tokens per window" + from_model)
    p.add_argument("--stride", type=int, default=None, help="tokens shared by consecutive windows" + from_model)
    p.add_argument("--n-best", type=int, default=None, help="start and end candidates per window" + from_model)
    p.add_argument("--max-answer-length", type=int, default=None, help="the longest answer, in tokens" + from_model)
    p.add_argument("--no-answer-threshold", type=float, default=None,
                   help="SQuAD2 models: predict no answer when null - best span exceeds this (default: the one "
                        "evaluate applied: uqa_inference.json, or for PROJECT/models/final the project's "
                        "metrics/eval.json)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="answer questions over HTTP with a registered model (follows prod)")
    from uqa.serving.cli import add_serve_arguments

    add_serve_arguments(p)
    p.add_argument("--cron", default=None, help=argparse.SUPPRESS)  # the old scheduler: now `uqa schedule`
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("registry", help="list registered model versions and the prod stage")
    p.add_argument("--project", default=".")
    p.add_argument("--name", default=None)
    p.set_defaults(func=cmd_registry)
    reg = p.add_subparsers(dest="registry_command")
    q = reg.add_parser("show", help="a version's lineage: code commit, params, data and model hashes, metrics, run")
    q.add_argument("spec", nargs="?", default="prod", help="prod (or another stage), NAME@vX.Y.Z or vX.Y.Z")
    q.add_argument("--json", action="store_true", help="the full record as JSON")
    q = reg.add_parser("diff", help="what changed between two versions (code, params, data, metrics)")
    q.add_argument("a", help="prod, NAME@vX.Y.Z or vX.Y.Z")
    q.add_argument("b", help="prod, NAME@vX.Y.Z or vX.Y.Z")
    q.add_argument("--json", action="store_true")
    q = reg.add_parser("history", help="every version with its date, F1 and promotion; which version was prod when")
    q.add_argument("--json", action="store_true", help="as `uqa serve` answers GET /v1/versions")
    for q in reg.choices.values():  # also after the subcommand: uqa registry show prod --project DIR
        q.add_argument("--project", default=argparse.SUPPRESS)
        q.add_argument("--name", default=argparse.SUPPRESS)

