"""`uqa run`, `uqa sweep`, `uqa demo`, `uqa schedule`, `uqa alerts`: the commands that run the flows or set
up the server they report to; each a thin shell over a flow (flows/) or uqa.ops.alerts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from uqa.errors import UserError
from uqa.ops.git import GIT_REMOTE


def _pipeline_flow():
    from flows.pipeline import uqa_pipeline  # imported while a temporary server starts

    return uqa_pipeline


def cmd_run(args: argparse.Namespace) -> int:
    from uqa.ops.prefect_server import prefect_api
    from uqa.params.files import params_with_overrides
    from uqa.params.overrides import overrides_to_nested
    from uqa.params.schema import PARAMS_FILE

    if args.set:  # a wrong -S (e.g. register.name=../../x) is one clear error before any server or stage starts
        params_with_overrides(Path(args.project) / PARAMS_FILE, args.set)

    with prefect_api(meanwhile=_pipeline_flow) as uqa_pipeline:
        state = uqa_pipeline(project_dir=args.project, overrides=overrides_to_nested(args.set) or None,
                             push=args.push, wait_for_lock_minutes=args.wait, return_state=True)
        result = flow_result(state)
    _print_result(result, Path(args.project))
    return 0


def flow_result(state) -> dict:
    """The flow's result, or a UserError carrying the failed stage's message (no traceback)."""
    if state.is_failed() or state.is_crashed():
        raise UserError(state.message or "the flow failed")
    return state.result()


def _print_result(result: dict, base: Path = Path(".")) -> None:
    m, r = result.get("metrics", {}), result.get("registration", {})
    print()
    print(f"EM {m.get('exact_match', float('nan')):.2f}  F1 {m.get('f1', float('nan')):.2f}  "
          f"(Urdu-normalized EM {m.get('urdu_exact_match', float('nan')):.2f}  F1 {m.get('urdu_f1', float('nan')):.2f})"
          f"  on {m.get('n_questions')} validation questions")
    for key in ("HasAns_f1", "NoAns_f1", "best_f1_thresh"):
        if key in m:
            print(f"{key} {m[key]:.4g}")
    if r:
        cached = str((result.get("stages") or {}).get("register", "")).startswith("Cached")
        print(registration_line(r, cached))
        print(f"model: {base / r.get('path', '')}")
    if result.get("experiment"):
        name = result["experiment"]
        print(f"experiment {name}: saved as a DVC experiment (dvc exp show); params.yaml unchanged, not registered "
              f"(dvc exp apply {name}, then uqa run, registers it through the promotion gate)")
    published = result.get("published")
    if published is not None:
        tags = ", ".join(published.get("tags") or []) or "no new tags"
        print(f"published to {GIT_REMOTE}: {tags} (registry branch uqa-registry; {published.get('dvc_files', 0)} "
              "file(s) to the DVC remote first)")
    stages = result.get("stages")
    if stages:
        print("stages: " + ", ".join(f"{k} {v}" for k, v in stages.items()))


def _grid(specs: list[str]) -> dict[str, list]:
    """['train.epochs=1,2', ...] -> {'train.epochs': [1, 2]} (each value parsed as YAML)."""
    from uqa.params.overrides import parse_override

    grid: dict[str, list] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        if not values:
            raise UserError(f"--grid {spec!r}: expected KEY=V1,V2,... e.g. train.epochs=1,2")
        grid[key.strip()] = [parse_override(f"{key}={v}")[1] for v in values.split(",")]
    return grid


def _sweep_flow():
    from flows.sweep import uqa_sweep  # imported while a temporary server starts

    return uqa_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from uqa.ops.prefect_server import prefect_api

    ranges = {}
    for spec in args.range:
        key, _, value = spec.partition("=")
        ranges[key.strip()] = value
    if bool(args.grid) == bool(ranges):
        raise UserError("give --grid KEY=V1,V2 (every combination), or --range KEY=LOW:HIGH[:log|:int] with --samples N")
    with prefect_api(meanwhile=_sweep_flow) as uqa_sweep:
        state = uqa_sweep(project_dir=args.project, grid=_grid(args.grid) or None, ranges=ranges or None,
                          samples=args.samples, seed=args.seed, trial_deployment=args.deployment,
                          git_remote=args.git_remote, return_state=True)
        result = flow_result(state)
    print()
    for t in result["trials"]:
        f1 = f"F1 {t['f1']:6.2f}" if t.get("f1") is not None else "F1    –  "
        print(f"trial {t['number']}: {t['state']:<9} {f1}  {t.get('duration_s', 0):5.0f} s  {t['overrides']}  "
              f"experiment {t.get('experiment') or '–'}")
    winner, r = result.get("winner"), result.get("registration") or {}
    if winner is None:
        print("no trial completed: nothing registered")
        return 1
    print(f"winner: trial {winner['number']} {winner['overrides']} (F1 {winner['f1']:.2f})")
    print(registration_line(r))
    print("params.yaml unchanged; dvc exp show lists every trial")
    return 0


def registration_line(r: dict, cached: bool = False) -> str:
    """What the register stage did, from its report: a new version and the gate's decision, or nothing
    new (the weights of a version already registered; `cached`: the stage was up to date, its report
    is an earlier run's)."""
    if cached or r.get("registered") is False:
        state = "prod" if r.get("promoted") else "not prod"
        why = "register is up to date: an earlier run registered it" if cached else r.get("reason")
        return f"nothing new registered: {r.get('name')} {r.get('version')} is {state} ({why})"
    state = "promoted to prod" if r.get("promoted") else "not promoted"
    return f"registered {r.get('name')} {r.get('version')} ({state}: {r.get('reason')})"


def cmd_demo(args: argparse.Namespace) -> int:
    from uqa.ops.prefect_server import prefect_api
    from uqa.workspace.demo import demo_workspace

    started = time.time()

    def prepare():
        return _pipeline_flow(), demo_workspace(Path(args.workdir), args.set)

    with prefect_api(meanwhile=prepare) as (uqa_pipeline, workspace):
        result = flow_result(uqa_pipeline(project_dir=str(workspace), wait_for_lock_minutes=args.wait,
                                          return_state=True))
    _print_result(result, Path(args.workdir))
    workdir = Path(args.workdir)
    print(f"metrics: {workdir / 'metrics/eval.json'}   demo finished in {time.time() - started:.0f}s")
    print('try: uqa predict --model prod --question "ہم کیا کرنے والے ہیں؟" '
          '--context "ہم اپنے فائن ٹیونڈ سوال و جواب ماڈل پر جلد ہی انفریئنس چلانے والے ہیں!"')
    print("or serve it: uqa serve --model prod   then open http://127.0.0.1:8000 (API docs: /docs)")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from uqa.ops import alerts

    if args.remove:
        removed = alerts.remove()
        print("removed: " + (", ".join(removed) if removed else "nothing (no uqa automations on the server)"))
        return 0
    if args.webhook or args.slack:
        for name, what in alerts.install(args.webhook, args.slack, args.dead_after):
            print(f"{what}: {name}")
    elif not args.list:
        raise UserError("give --webhook URL or --slack URL (create or update), --list, or --remove")
    found = alerts.listing()
    if not found:
        print("no uqa automations on the server (uqa alerts --webhook URL creates them)")
        return 1 if args.list else 0
    for a in found:
        print(f"{a['name']}  ({'enabled' if a['enabled'] else 'DISABLED'}; {', '.join(a['actions'])}): "
              f"{a['description']}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """flow.serve: one long-running process that is both the deployment and its worker."""
    from prefect.schedules import Cron

    from flows.pipeline import uqa_pipeline

    uqa_pipeline.serve(
        name=args.name,
        schedules=[Cron(args.cron, timezone=args.timezone)],
        parameters={"project_dir": str(Path(args.project).resolve())},
        limit=1,  # one run at a time; the workspace lock backs this up
    )
    return 0


WAIT_HELP = ("when another run holds this workspace, wait up to MINUTES for it (default 0: "
             "fail at once, naming the run that holds it)")


def add_parsers(sub) -> None:
    """The subcommands that run the flows: run, sweep, demo, schedule, alerts."""
    p = sub.add_parser("run", help="run the Prefect flow (download -> ... -> register) in a project")
    p.add_argument("--project", default=".", help="project directory (params.yaml, dvc.yaml)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override params.yaml, e.g. -S train.epochs=1: the run is a DVC experiment in its own "
                        "workspace (dvc exp show lists it); params.yaml is not changed and nothing is registered")
    p.add_argument("--push", action="store_true",
                   help="the remotes are the record: take the registry and DVC's run-cache from the git remote "
                        "origin and the default DVC remote first, publish the outputs, registry branch and GTO "
                        "tags to them at the end (needs both remotes)")
    p.add_argument("--wait", type=float, default=0.0, metavar="MINUTES", help=WAIT_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="try several settings as DVC experiments and register the best (Prefect flow uqa-sweep)")
    p.add_argument("--project", default=".", help="project directory (params.yaml, dvc.yaml)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try, e.g. --grid train.learning_rate=1e-3,2e-3 --grid train.epochs=1,2 (every combination)")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log|:int]",
                   help="random search space (Optuna, ask-and-tell), with --samples")
    p.add_argument("--samples", type=int, default=0, help="how many settings to draw from the ranges")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--deployment", default=None, metavar="FLOW/DEPLOYMENT",
                   help="run each trial as a run of this deployment (e.g. uqa-pipeline/trial) on its work pool; "
                        "default: one after another in this process. uqa-pipeline/trial-remote: trials on any "
                        "machine, from a clone of the project (see --git-remote)")
    p.add_argument("--git-remote", default=GIT_REMOTE, metavar="NAME",
                   help="with a deployment that clones (trial-remote): the git remote the trials clone from and "
                        "push their experiments to (default origin); the data goes through the default DVC remote")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="the whole flow on the shipped demo data with a tiny model (CPU, minutes)")
    p.add_argument("--workdir", default="demo-run", help="demo workspace (created on first use)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the demo's params, e.g. -S data.keep_unanswerable=true")
    p.add_argument("--wait", type=float, default=0.0, metavar="MINUTES", help=WAIT_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("schedule", help="run the flow on a schedule (flow.serve: no work pool needed)")
    p.add_argument("--project", default=".")
    p.add_argument("--name", default="weekly-serve")
    p.add_argument("--cron", default="0 2 * * 1", help="cron expression (default: Mondays 02:00)")
    p.add_argument("--timezone", default="Asia/Karachi")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("alerts", help="notifications on the Prefect server (PREFECT_API_URL) for failed, "
                                      "crashed, silent runs and every registration (Prefect automations)")
    p.add_argument("--webhook", metavar="URL", help="POST a JSON {subject, body} to this URL")
    p.add_argument("--slack", metavar="URL", help="a Slack incoming-webhook URL")
    p.add_argument("--list", action="store_true", help="show the automations on the server")
    p.add_argument("--remove", action="store_true", help="delete the automations and their notification block")
    p.add_argument("--dead-after", type=int, default=270, metavar="SECONDS",
                   help="a run with no heartbeat for this long is set Crashed and reported (default 270; runs "
                        "started by uqa send a heartbeat every 60 s)")
    p.set_defaults(func=cmd_alerts)

