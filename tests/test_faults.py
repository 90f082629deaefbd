"""Fault injection with real processes: kill -9 inside each stage, Ctrl-C / SIGTERM / SIGKILL during
training, two runs in one workspace, a full disk, a truncated checkpoint. After each fault: outputs
are complete or absent (never partial), nothing is left running, and the next run succeeds.

kill -9 at an exact place uses the failpoints in uqa/ops/faults.py (`UQA_FAILPOINT`): the process kills
itself in the real code path, deterministically, instead of a test racing a timer."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import REPO, demo_tiny_params, make_project, run_ok

MARK = "UQA_TEST_MARK"
# how long a stopped run may take to be gone: generous, for a loaded 2-core machine. The waits below end
# as soon as what they wait for happens (process gone, exit status in), so a fast machine waits no longer.
GONE_WITHIN_S = 180


def marked(mark: str) -> list[str]:
    """Live processes started by this test (they inherit $UQA_TEST_MARK), as 'pid cmdline'."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.cmdline()[:6])}")
        except psutil.Error:
            continue
    return found


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def training(mark: str) -> bool:
    return any("tasks.train_recipe" in p for p in marked(mark))


def env_for(mark: str, **extra: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # dvc.yaml's `python -m tasks.X` is this interpreter
    return dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}", **{MARK: mark}, **extra)


def leftovers(root: Path) -> list[str]:
    """Temporary siblings of outputs a killed writer left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if (p.name.endswith(".tmp") or ".old-" in p.name) and ".dvc" not in p.parts and ".git" not in p.parts)


def assert_outputs_complete_or_absent(root: Path) -> None:
    import datasets

    for split_dir in [*root.glob("data/raw/*"), *root.glob("data/filtered/*"), *root.glob("data/tokenized/*")]:
        if split_dir.name.startswith(".") or not split_dir.is_dir():
            continue
        if split_dir.name == "tokenizer":
            assert (split_dir / "tokenizer.json").exists(), split_dir
            json.loads((split_dir / "tokenizer.json").read_text())
        else:
            assert len(datasets.load_from_disk(str(split_dir))) > 0, split_dir
    final = root / "models/final"
    if final.exists():
        from uqa.model.checkpoints import intact_file

        assert (final / "config.json").exists() and intact_file(final / "model.safetensors")
    for report in [*root.glob("reports/*.json"), *root.glob("metrics/*.json"), *root.glob("registry/*/index.json")]:
        json.loads(report.read_text())  # complete JSON, or absent


def repro(root: Path, mark: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = env_for(mark, **({"UQA_FAILPOINT": failpoint} if failpoint else {}))
    return subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)


TWO_EPOCHS = demo_tiny_params(epochs=2)
# kill -9 points, each later in the pipeline than the one before; each `dvc repro` resumes after the
# last. (stage, failpoint, an output, whether that output was renamed into place before the kill)
KILL_POINTS = [
    ("download", "write.before_rename@validation", "data/raw/validation", False),  # train split renamed, not this
    ("filter", "write.after_rename@filter.json", "reports/filter.json", True),  # dvc.lock not updated yet
    ("tokenize", "write.before_rename@tokenizer", "data/tokenized/tokenizer", False),
    ("train", "train.step@MID_EPOCH_2", "models/final", False),  # launcher, rank and supervisor, mid-epoch
    ("evaluate", "write.before_rename@eval.json", "metrics/eval.json", False),
    ("register", "write.after_rename@index.json", "registry/uqa-qa/index.json", True),  # record, no GTO tags yet
]


@pytest.mark.slow
def test_kill9_in_each_stage_then_rerun(tmp_path):
    mark = uuid.uuid4().hex
    root = make_project(tmp_path / "project", TWO_EPOCHS)
    steps_per_epoch = 0
    for stage, point, output, renamed in KILL_POINTS:
        if stage == "train":
            import datasets

            steps_per_epoch = math.ceil(len(datasets.load_from_disk(str(root / "data/tokenized/train"))) / 32)
            point = point.replace("MID_EPOCH_2", str(steps_per_epoch + steps_per_epoch // 2))
        r = repro(root, mark, point)
        assert r.returncode != 0, f"{point} was never reached:\n{r.stdout[-2000:]}"
        assert f"Running stage '{stage}'" in r.stdout, r.stdout[-2000:]
        assert (root / output).exists() == renamed, output
        assert_outputs_complete_or_absent(root)
        assert wait_until(lambda: not marked(mark), GONE_WITHIN_S), marked(mark)
        if stage == "train":
            ckpts = sorted((root / "models/checkpoints").glob("checkpoint-*"))
            assert [c.name for c in ckpts] == [f"checkpoint-{steps_per_epoch}"], ckpts  # epoch 1's, resumed below
            straight = tmp_path / "straight"  # the same training, never interrupted, for comparison
            shutil.copytree(root / "data/tokenized", straight / "data/tokenized")
            shutil.copytree(root / "data/filtered/validation", straight / "data/filtered/validation")
            shutil.copy2(root / "params.yaml", straight / "params.yaml")
            run_ok([sys.executable, "-m", "tasks.train"], straight, env=env_for(mark))
    r = repro(root, mark)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert leftovers(root) == []
    assert not marked(mark)
    status = json.loads(run_ok([sys.executable, "-m", "dvc", "status", "--json"], root).stdout)
    assert status == {"source": ["always changed"]}

    # training resumed from epoch 1's checkpoint after the kill, and ended where an uninterrupted run ends
    report = json.loads((root / "reports/train.json").read_text())
    assert (report["resumed_from"] or "").endswith(f"checkpoint-{steps_per_epoch}"), \
        (root / "reports/train.log").read_text()[:2000]
    from safetensors.torch import load_file

    resumed, uninterrupted = (load_file(p / "models/final/model.safetensors") for p in (root, tmp_path / "straight"))
    import torch

    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.allclose(resumed[name], uninterrupted[name], atol=1e-6), name
    # and so do its curves: `dvc repro` removed dvclive/ before the rerun (not a persistent output); the
    # resumed run continued the curves saved with its checkpoint, none of the killed run's later steps
    (steps, losses), (straight_steps, straight_losses) = (_curve(p) for p in (root, tmp_path / "straight"))
    assert steps == straight_steps and losses == pytest.approx(straight_losses, abs=1e-5)

    # the registry is consistent: one version, in prod, answering
    from uqa.registry.lookup import resolve_model
    from uqa.registry.store import Registry

    assert Registry(root, "uqa-qa").stage_version() == "v0.0.1"
    assert (resolve_model("prod", root) / "config.json").exists()


def _curve(project: Path) -> tuple[list[int], list[float]]:
    """dvclive's training-loss curve: its steps and losses."""
    import csv

    with open(project / "dvclive/plots/metrics/loss.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _uqa(root: Path, mark: str, *args: str, home: Path) -> subprocess.Popen:
    env = env_for(mark, PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)  # the command's own temporary server, as for a user
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)  # our default, not the tests'
    return subprocess.Popen([sys.executable, "-m", "uqa_cli", "run", "--project", str(root), *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_as_a_foreground_job)


def _as_a_foreground_job() -> None:
    # Ctrl-C reaches a terminal's foreground job; a test run started in the background (`nohup`,
    # `cmd &` in a script) passes SIGINT on ignored, and uqa rightly keeps ignoring it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)  # uqa prints every thread's stack: where it was stuck
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


@pytest.mark.slow
def test_interrupted_training_stops_every_process_and_one_run_holds_the_workspace(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group), SIGTERM and SIGKILL of `uqa run` during
    training; a second `uqa run` while the first trains; then a run on the same workspace completes.
    A brand-new PREFECT_HOME: the first command must work at the first try, with no traceback."""
    mark = uuid.uuid4().hex
    home = tmp_path / "prefect-home"  # new: created and migrated by the first command
    root = make_project(tmp_path / "project", demo_tiny_params(epochs=40))

    # Ctrl-C: the terminal sends SIGINT to the whole foreground process group
    first = _uqa(root, mark, home=home)
    assert wait_until(lambda: training(mark), 300), _finish(first, 1)[1][-3000:]
    # meanwhile a second run in the same workspace is refused at once, naming the one that holds it
    second = _uqa(root, mark, home=home)
    rc, out = _finish(second, 180)
    assert rc == 2, out[-3000:]
    holder = json.loads((root / ".dvc/tmp/uqa-run.json").read_text())
    assert f"is in use by another run: uqa-pipeline flow run (pid {holder['pid']} on " in out
    assert "Traceback" not in out
    assert training(mark)  # the first one still trains, undisturbed
    os.killpg(first.pid, signal.SIGINT)
    rc, out = _finish(first, GONE_WITHIN_S)
    assert rc == 130, out[-12000:]  # on a hang: ends with the stacks of uqa's threads
    assert wait_until(lambda: not marked(mark), GONE_WITHIN_S), marked(mark)
    assert "interrupted (Ctrl-C): the run was stopped" in out
    assert "Traceback" not in out, out[-5000:]

    # SIGTERM (what `kill` and most supervisors send) to uqa alone
    run = _uqa(root, mark, home=home)
    assert wait_until(lambda: training(mark), 300), _finish(run, 1)[1][-3000:]
    run.send_signal(signal.SIGTERM)
    rc, out = _finish(run, GONE_WITHIN_S)
    assert rc == 130 and "interrupted (signal SIGTERM)" in out, out[-3000:]
    assert wait_until(lambda: not marked(mark), GONE_WITHIN_S), marked(mark)

    # SIGKILL of uqa: it cannot clean up, so the launcher, the rank and the temporary server notice
    run = _uqa(root, mark, home=home)
    assert wait_until(lambda: training(mark), 300), _finish(run, 1)[1][-3000:]
    run.kill()
    run.wait()
    assert wait_until(lambda: not marked(mark), GONE_WITHIN_S), marked(mark)

    # the workspace is free again (the dead run's lock went with it) and a run completes (one epoch:
    # params.yaml edited as a user would; `-S` would make the run an experiment in its own workspace)
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    run = _uqa(root, mark, home=home)
    rc, out = _finish(run, 600)
    assert rc == 0, out[-5000:]
    assert "a previous run (uqa-pipeline flow run" in out  # the SIGKILLed one, reported, not an obstacle
    assert "Traceback" not in out, out[-5000:]
    assert "registered uqa-qa v0.0.1 (promoted to prod" in out
    assert leftovers(root) == []
    assert not marked(mark)
    # the temporary servers skipped registering block types and did not record it as done: the
    # user's own `prefect server start` on this PREFECT_HOME still registers them
    memo = home / "memo_store.toml"
    assert (home / "prefect.db").exists()
    assert not memo.exists() or "block_auto_registration" not in memo.read_text()


@pytest.mark.slow  # `dvc repro` of every stage (refused here, but it is the training command)
def test_dvc_repro_and_the_flow_share_one_lock(tmp_path):
    """A `dvc repro` in a workspace that a flow run holds fails at once, and the other way round."""
    from dvc.repo import Repo

    from uqa.workspace.dvc_ops import WorkspaceBusy, locked_workspace

    root = make_project(tmp_path / "project", demo_tiny_params())
    with locked_workspace(root, command="test holder"):
        r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True)
        assert r.returncode != 0 and "Unable to acquire lock" in r.stderr + r.stdout
    holder = subprocess.Popen(  # DVC itself holds the lock, as during `dvc repro`
        [sys.executable, "-c", "import sys, time; from dvc.repo import Repo, lock_repo\n"
         f"r = Repo({str(root)!r})\nwith lock_repo(r):\n    print('locked', flush=True); time.sleep(120)"],
        cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(WorkspaceBusy, match=rf"in use by another run: .*\(pid {holder.pid} on .*started"):
            with locked_workspace(root, wait_s=3):
                pass
        assert time.monotonic() - started >= 3  # it waited as asked before giving up
    finally:
        holder.kill()
        holder.wait()
    with locked_workspace(root, wait_s=0):  # the holder died: its lock went with it
        with Repo(str(root)):  # not locked by merely opening the repo
            pass


def _tokenized(root: Path, env: dict) -> tuple[dict, dict]:
    """A project in `root` (params.yaml: demo data, tiny model) with download, filter and tokenize run
    as `dvc repro` runs them; returns the params and data/tokenized's files, byte for byte."""
    import yaml

    from uqa.params.overrides import deep_merge

    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), demo_tiny_params())
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    for stage in ("download", "filter", "tokenize"):
        run_ok([sys.executable, "-m", f"tasks.{stage}"], root, env=env)
    return params, _files(root / "data/tokenized", root)


def _files(directory: Path, root: Path, but: Path | None = None) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in directory.rglob("*") if p.is_file() and p != but}


def _with_smaller_stride(root: Path, params: dict) -> None:
    """A smaller stride: more windows, a larger output than the one in place."""
    import yaml

    from uqa.params.validation import params_from_dict

    params["tokenize"]["stride"] = params_from_dict(params).tokenize.stride // 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))


def _assert_full_disk_is_clear(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: tokenize: no space left on the device while writing data/tokenized/" in r.stderr
    assert "the previous version is intact" in r.stderr and "Traceback" not in r.stderr


def test_full_disk_injected_at_the_write_is_clear_and_keeps_the_previous_cache(tmp_path):
    """Any machine: ENOSPC raised at the last write of data/tokenized/train (failpoint
    `write.data@train=enospc`, uqa/ops/faults.py), in the real stage process, after its shards are written."""
    root = tmp_path / "project"
    root.mkdir()
    env = env_for("disk")
    params, before = _tokenized(root, env)
    import yaml

    params["tokenize"].update(max_seq_length=40, stride=8)  # other windows: an output unlike the one in place
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    r = subprocess.run([sys.executable, "-m", "tasks.tokenize"], cwd=root, capture_output=True, text=True,
                       env=dict(env, UQA_FAILPOINT="write.data@train=enospc"))
    _assert_full_disk_is_clear(r)
    assert "while writing data/tokenized/train" in r.stderr
    assert _files(root / "data/tokenized", root) == before  # the previous cache, byte for byte, no leftovers
    run_ok([sys.executable, "-m", "tasks.tokenize"], root, env=env)  # the disk has room again: it completes
    assert _files(root / "data/tokenized", root) != before
    assert leftovers(root) == []


def test_full_disk_during_tokenize_write_is_clear_and_keeps_the_previous_cache(tmp_path):
    """A real full filesystem: data/tokenized on a small tmpfs, the first tokenize fits, a larger one
    does not (needs root to mount; the injected variant above runs everywhere)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (the injected-ENOSPC variant runs everywhere)")
    root = tmp_path / "project"
    (root / "data/tokenized").mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(root / "data/tokenized")],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()} (the injected-ENOSPC variant runs)")
    try:
        env = env_for("disk")
        params, before = _tokenized(root, env)
        used = sum(len(b) for b in before.values())
        filler = root / "data/tokenized/filler"
        free = shutil.disk_usage(root / "data/tokenized").free
        filler.write_bytes(b"\0" * max(0, free - used // 2))  # room for half a copy of the output: not enough
        _with_smaller_stride(root, params)
        r = subprocess.run([sys.executable, "-m", "tasks.tokenize"], cwd=root, env=env, capture_output=True, text=True)
        _assert_full_disk_is_clear(r)
        # the previous cache, byte for byte, and no temporary leftovers
        assert _files(root / "data/tokenized", root, but=filler) == before
        filler.unlink()
        run_ok([sys.executable, "-m", "tasks.tokenize"], root, env=env)  # space again: it completes
        assert leftovers(root) == []
    finally:
        subprocess.run(["umount", "-l", str(root / "data/tokenized")], capture_output=True)


@pytest.mark.parametrize("sig, message", [(signal.SIGINT, ""), (signal.SIGTERM, "signal SIGTERM")])
def test_an_interrupt_swallowed_inside_still_stops_the_run(sig, message):
    """A library that catches everything (importing torch can drop a KeyboardInterrupt raised
    mid-import) must not turn Ctrl-C or SIGTERM into nothing: the stage's and the CLI's block ends
    with KeyboardInterrupt, and raise_if_interrupted (called after such a step) raises at once."""
    from uqa.ops.procs import raise_if_interrupted, sigterm_as_interrupt

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reached_end = checked = False
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with sigterm_as_interrupt():
            try:
                signal.raise_signal(sig)
            except BaseException:  # what a bare `except:` in a library does
                pass
            reached_end = True
            try:
                raise_if_interrupted()
            except KeyboardInterrupt:
                checked = True
    assert reached_end and checked and str(interrupted.value) == message
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers before, back in place
    with sigterm_as_interrupt():  # a new block starts with nothing received
        raise_if_interrupted()
