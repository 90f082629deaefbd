"""dvc.lock survives a kill inside `dvc commit` (issue 19): a failpoint kills -9 inside DVC's own write
of dvc.lock (after it truncated the file); the next run restores the verified copy and says so in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dvc, run_ok

from uqa.workspace.statefiles import COMMITTING, LockfileUnreadable, lockfile_problem

COMMIT = "import sys; from uqa.workspace.dvc_ops import dvc_commit; dvc_commit(sys.argv[1], 'make')"
STATUS = ("import sys, logging; logging.basicConfig(level=logging.WARNING, format='%(message)s'); "
          "from uqa.workspace.dvc_ops import dvc_status; print('status', dvc_status(sys.argv[1], 'make'))")


@pytest.fixture
def project(tmp_path):
    """A git + DVC project with one stage whose output is made by hand (the flow's way: run, then commit)."""
    run_ok(["git", "init", "-q"], tmp_path)
    dvc("init", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo made > out.txt\n    outs:\n      - out.txt\n")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    return tmp_path


def _python(code: str, root: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, **env))


def test_kill_inside_dvc_commit_then_the_next_run_restores_dvc_lock(project):
    (project / "out.txt").write_text("one\n")
    assert _python(COMMIT, project).returncode == 0
    good = (project / "dvc.lock").read_bytes()
    assert lockfile_problem(good) is None

    (project / "out.txt").write_text("two\n")  # the stage ran again; its commit is killed inside DVC's write
    killed = _python(COMMIT, project, UQA_FAILPOINT="dvc.lock.write@dvc.lock")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (project / "dvc.lock").read_bytes() == b""  # what the issue saw: DVC had truncated it
    assert (project / COMMITTING).exists()
    broken = _python("import dvc.repo, sys; dvc.repo.Repo(sys.argv[1]).status(targets=['make'])", project)
    assert broken.returncode != 0 and "dvc.lock" in broken.stderr  # DVC alone cannot read the workspace any more

    nxt = _python(STATUS, project)
    assert nxt.returncode == 0, nxt.stderr
    lines = [line for line in nxt.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"restored {project / 'dvc.lock'} from the copy kept before the "
                                                   "last dvc commit (a run was killed while DVC rewrote it)"), lines
    assert (project / "dvc.lock").read_bytes() == good
    assert "changed outs" in nxt.stdout  # out.txt is "two" now: the lost commit is simply made again
    assert _python(COMMIT, project).returncode == 0
    again = _python(STATUS, project)
    assert again.stdout.strip() == "status {}" and again.stderr.strip() == ""  # no second "restored" line


def test_kill_inside_the_first_commit_removes_the_partial_lock(project):
    (project / "out.txt").write_text("one\n")
    killed = _python(COMMIT, project, UQA_FAILPOINT="dvc.lock.write@dvc.lock")
    assert killed.returncode == -signal.SIGKILL
    assert (project / "dvc.lock").read_bytes() == b""
    nxt = _python(STATUS, project)
    assert nxt.returncode == 0, nxt.stderr
    assert "removed the" in nxt.stderr and "(there was none before)" in nxt.stderr
    assert not (project / "dvc.lock").exists()


@pytest.mark.parametrize("content", ["", "schema: '2.0'\nstages:\n  make:\n    cmd: [", "- a\n- b\n",
                                     "schema: '2.0'\nstages:\n  make:\n    outs: 3\n"])
def test_unreadable_lock_without_a_copy_is_one_clear_error(project, content):
    from uqa.workspace.dvc_ops import dvc_status

    (project / "dvc.lock").write_text(content)
    with pytest.raises(LockfileUnreadable, match=rf"^{project / 'dvc.lock'} cannot be read by DVC \(.+\): restore "
                                                 r"it from git \(`git checkout -- dvc\.lock`\), or remove it "
                                                 rf"\(`rm {project / 'dvc.lock'}`: every stage is then run again\)$"):
        dvc_status(project, "make")
    from uqa.errors import UserError

    assert issubclass(LockfileUnreadable, UserError)  # the CLI and the flow print it as one line, no traceback


@pytest.mark.slow
def test_uqa_run_after_a_kill_inside_dvc_commit(tmp_path):
    """End to end, as a user meets it: `uqa run` is killed -9 inside DVC's rewrite of dvc.lock (the
    always-running `source` stage's commit), leaving it empty; the next `uqa run` says in one line what
    it restored and succeeds, every stage up to date."""
    import os

    from conftest import demo_tiny_params, make_project

    project = make_project(tmp_path / "project", demo_tiny_params(max_steps=5))

    def uqa_run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "uqa_cli", "run", "--project", str(project)], cwd=project,
                              capture_output=True, text=True, timeout=900, env=dict(os.environ, **env))

    first = uqa_run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    good = (project / "dvc.lock").read_bytes()

    killed = uqa_run(UQA_FAILPOINT="dvc.lock.write@dvc.lock")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert (project / "dvc.lock").read_bytes() == b""

    after = uqa_run()
    out = after.stdout + after.stderr
    assert after.returncode == 0, out[-5000:]
    restored = [line for line in out.splitlines() if "from the copy kept before the last dvc commit" in line]
    assert len(restored) == 1, out[-5000:]
    assert f"restored {project / 'dvc.lock'}" in restored[0]
    assert "Traceback" not in out
    assert "source Completed" in after.stdout and "train Cached" in after.stdout and "register Cached" in after.stdout
    assert lockfile_problem((project / "dvc.lock").read_bytes()) is None
    assert (project / "dvc.lock").read_bytes() == good  # the source stage's commit, made again, is the same
