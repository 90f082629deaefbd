"""The remotes as the record (uqa/registry/publish.py), with a `file://` bare repository standing in for GitHub and a
local directory for the DVC remote: what `uqa run --push` does before and after its stages, on the
register stage's own code (tiny models built from a config, no training).

- a publication puts the DVC files first, then the registry branch (pointer, index) and the GTO tags;
- a shallow clone takes the published registry and registers on top of it;
- two clones that registered at once: the second is told to re-gate, and ends as the next version;
- a publisher killed at any step leaves the remote as it was, and the next publication completes;
- a plain `git clone` knows the registry; a replica serves only what the gate approved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_SOURCE, dvc, make_project, run_ok
from test_register import _metrics, _model

from tasks.register import register
from uqa.params.files import load_params
from uqa.registry.publish import POINTER_FILE, PublishConflict, publish, remote_refs, sync_from_remotes
from uqa.registry.store import Registry

NAME = "uqa-qa"


@pytest.fixture
def remotes(tmp_path):
    """(origin bare repository URL, DVC store, the user's project pushed to origin)."""
    origin = tmp_path / "origin.git"
    run_ok(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    store = tmp_path / "dvc-store"
    project = make_project(tmp_path / "user", {"data": {"source": dict(DEMO_SOURCE)}})
    dvc("remote", "add", "-d", "store", str(store), cwd=project)
    run_ok(["git", "branch", "-M", "main"], project)
    run_ok(["git", "remote", "add", "origin", f"file://{origin}"], project)
    run_ok(["git", "commit", "-qam", "DVC remote"], project)
    run_ok(["git", "push", "-q", "origin", "main"], project)
    return f"file://{origin}", store, project


def shallow_clone(url: str, dest: Path) -> Path:
    """What Prefect's git_clone step makes: one branch, depth 1, no tags."""
    run_ok(["git", "clone", "-q", "--depth", "1", "--branch", "main", url, str(dest)], dest.parent)
    return dest


def register_here(root: Path, seed: int, f1: float) -> dict:
    """A model registered by the register stage's code and recorded in dvc.lock, as a flow run leaves it."""
    _model(root, seed)
    _metrics(root, f1)
    validation = root / "data" / "filtered" / "validation"
    validation.mkdir(parents=True, exist_ok=True)
    (validation / "rows.txt").write_text("stands in for the filter stage's output")
    report = register(load_params(root / "params.yaml"), root)
    dvc("commit", "-f", "register", cwd=root)
    return report


def origin_tags(url: str) -> set[str]:
    return {t.removeprefix("refs/tags/") for t in remote_refs(Path("."), url, NAME).tags}


def published_file(repo: Path, path: str) -> str:
    return run_ok(["git", "show", f"origin/uqa-registry:{path}"], repo).stdout


def test_a_publication_puts_files_first_then_the_branch_and_tags(remotes, tmp_path):
    url, store, project = remotes
    assert sync_from_remotes(project, NAME, "origin").state == "empty"
    first = register_here(project, seed=1, f1=60.0)
    assert (first["version"], first["promoted"]) == ("v0.0.1", True)

    report = publish(project, NAME, "origin")
    assert origin_tags(url) == {"uqa-qa@v0.0.1", "uqa-qa#prod#1"}
    assert report.dvc_pushed > 0 and any(store.rglob("*"))
    # the branch's tip names the registry directory on the DVC remote, the index and the remote itself
    run_ok(["git", "fetch", "-q", "origin", "+refs/heads/uqa-registry:refs/remotes/origin/uqa-registry"], project)
    pointer = published_file(project, POINTER_FILE)
    lock = (project / "dvc.lock").read_text()
    assert pointer.split("md5: ")[1].split()[0] in lock  # the very hash dvc.lock records for registry/
    index = json.loads(published_file(project, f"{NAME}/index.json"))
    assert [v["version"] for v in index["versions"]] == ["v0.0.1"]
    assert "store" in published_file(project, ".dvc/config")
    # publishing again sends nothing new
    again = publish(project, NAME, "origin")
    assert again.tags == [] and again.branch is None

    # anyone gets a version with plain DVC: `dvc get URL registry/NAME/VERSION --rev uqa-registry`
    dvc("get", url, f"registry/{NAME}/v0.0.1", "--rev", "uqa-registry", "-o", str(tmp_path / "got"), cwd=tmp_path)
    assert (tmp_path / "got" / "config.json").is_file()


def test_a_shallow_clone_takes_the_published_registry_and_registers_on_it(remotes, tmp_path):
    url, _, project = remotes
    register_here(project, seed=1, f1=60.0)
    publish(project, NAME, "origin")

    clone = shallow_clone(url, tmp_path / "worker")
    report = sync_from_remotes(clone, NAME, "origin")
    assert (report.state, report.registry_restored) == ("fresh", True)
    assert run_ok(["git", "rev-parse", "--is-shallow-repository"], clone).stdout.strip() == "false"
    assert Registry(clone, NAME).stage_version("prod") == "v0.0.1"
    assert (clone / "registry" / NAME / "v0.0.1" / "config.json").is_file()

    second = register_here(clone, seed=2, f1=70.0)
    assert (second["version"], second["promoted"], second["prod_before"]) == ("v0.0.2", True, "v0.0.1")
    publish(clone, NAME, "origin")
    assert origin_tags(url) == {"uqa-qa@v0.0.1", "uqa-qa#prod#1", "uqa-qa@v0.0.2", "uqa-qa#prod#2"}

    # the first workspace was behind: its sync brings its registry up to the published one
    back = sync_from_remotes(project, NAME, "origin")
    assert (back.state, back.registry_restored) == ("behind", True)
    assert Registry(project, NAME).stage_version("prod") == "v0.0.2"
    assert [v["version"] for v in Registry(project, NAME).versions()] == ["v0.0.1", "v0.0.2"]


def test_two_clones_that_registered_at_once_end_as_two_versions(remotes, tmp_path):
    url, _, project = remotes
    register_here(project, seed=1, f1=60.0)
    publish(project, NAME, "origin")
    a, b = (shallow_clone(url, tmp_path / n) for n in ("a", "b"))
    for clone in (a, b):
        sync_from_remotes(clone, NAME, "origin")
    assert register_here(a, seed=2, f1=70.0)["version"] == "v0.0.2"
    assert register_here(b, seed=3, f1=65.0)["version"] == "v0.0.2"  # both saw v0.0.1 as the newest

    publish(a, NAME, "origin")
    with pytest.raises(PublishConflict, match="re-gating"):
        publish(b, NAME, "origin")
    assert "uqa-qa@v0.0.2" in origin_tags(url)  # a's, untouched

    # what the flow does on a conflict: take the remote's registry, register again, publish again
    report = sync_from_remotes(b, NAME, "origin")
    assert (report.state, report.discarded) == ("diverged", ["v0.0.2"])
    again = register(load_params(b / "params.yaml"), b)
    dvc("commit", "-f", "register", cwd=b)
    assert (again["version"], again["prod_before"]) == ("v0.0.3", "v0.0.2")
    assert not again["promoted"] and "< prod v0.0.2" in again["reason"]  # gated against a's, now prod
    publish(b, NAME, "origin")
    assert {"uqa-qa@v0.0.2", "uqa-qa@v0.0.3"} <= origin_tags(url)
    index = json.loads(run_ok(["git", "show", "origin/uqa-registry:uqa-qa/index.json"],
                              _fetched(b)).stdout)
    assert [(v["version"], v["promoted"]) for v in index["versions"]] == [
        ("v0.0.1", True), ("v0.0.2", True), ("v0.0.3", False)]


def _fetched(repo: Path) -> Path:
    run_ok(["git", "fetch", "-q", "origin", "+refs/heads/uqa-registry:refs/remotes/origin/uqa-registry"], repo)
    return repo


PUBLISH = ("import sys; from uqa.registry.publish import publish; publish(sys.argv[1], 'uqa-qa', 'origin')")


@pytest.mark.parametrize("point", ["publish.after_dvc_push", "publish.after_pointer_commit"])
def test_a_publisher_killed_midway_leaves_the_remote_as_it_was(remotes, point):
    url, _, project = remotes
    register_here(project, seed=1, f1=60.0)
    killed = subprocess.run([sys.executable, "-c", PUBLISH, str(project)], capture_output=True, text=True,
                            env=dict(os.environ, UQA_FAILPOINT=point), timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert origin_tags(url) == set()  # no tag without its files: nothing at all yet
    assert run_ok(["git", "ls-remote", "--heads", url], project).stdout.count("uqa-registry") == 0

    assert sync_from_remotes(project, NAME, "origin").state == "unpublished"  # kept: the next run publishes it
    publish(project, NAME, "origin")
    assert origin_tags(url) == {"uqa-qa@v0.0.1", "uqa-qa#prod#1"}


def test_a_plain_clone_knows_the_registry(remotes, tmp_path):
    url, _, project = remotes
    register_here(project, seed=1, f1=60.0)
    register_here(project, seed=2, f1=70.0)
    publish(project, NAME, "origin")
    plain = tmp_path / "plain"
    run_ok(["git", "clone", "-q", url, str(plain)], tmp_path)
    assert not (plain / "registry").exists()

    def uqa(*args: str) -> str:
        return run_ok([sys.executable, "-m", "uqa_cli", "registry", *args, "--project", str(plain)], plain).stdout

    listing = uqa()
    assert "prod = v0.0.2" in listing and listing.count("promoted") == 2
    shown = json.loads(uqa("show", "uqa-qa@v0.0.2", "--json"))
    assert (shown["version"], shown["stages"]) == ("v0.0.2", ["prod"])
    assert "prod" in uqa("show", "prod")
    assert "metrics" in uqa("diff", "uqa-qa@v0.0.1", "prod")


def test_a_replica_serves_only_what_the_gate_approved(remotes, tmp_path):
    from uqa.model.settings import weights_sha256
    from uqa.serving.models import ModelRefused
    from uqa.serving.remote import RemoteSource

    url, store, project = remotes
    register_here(project, seed=1, f1=60.0)
    publish(project, NAME, "origin")
    source = RemoteSource("uqa-qa:prod", url, cache=tmp_path / "cache")
    resolved = source.resolve()
    assert resolved.version == "v0.0.1"
    assert weights_sha256(resolved.path) == Registry(project, NAME).record("v0.0.1")["weights_sha256"]

    # weights on the DVC remote that are not the ones registered: refused, and not kept
    import hashlib

    assert register_here(project, seed=2, f1=90.0)["promoted"]
    publish(project, NAME, "origin")
    md5 = hashlib.md5((project / "registry" / NAME / "v0.0.2" / "model.safetensors").read_bytes()).hexdigest()
    obj = store / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelRefused, match="not the .* the gate registered"):
        source.resolve()
    assert not (tmp_path / "cache" / "models" / NAME / "v0.0.2").exists()

    # v0.0.3 fails the gate; a hand-made prod tag, published, must not make replicas serve it
    third = register_here(project, seed=3, f1=10.0)
    assert not third["promoted"]
    Registry(project, NAME).git_promote("v0.0.3", "by hand, past the gate")
    publish(project, NAME, "origin")
    with pytest.raises(ModelRefused, match="does not record the gate promoting it"):
        source.resolve()


def test_a_refused_version_is_not_tried_again_until_the_remote_moves():
    from uqa.serving.models import ModelHolder, ModelRefused

    class Source:
        follows, spec = True, "uqa-qa:prod"
        state, resolves = "a", 0

        def fingerprint(self):
            return self.state

        def resolve(self):
            self.resolves += 1
            raise ModelRefused("v0.0.2", "v0.0.2: not approved")

    source = Source()
    holder = ModelHolder(source, load=lambda r: None)
    holder._fingerprint = "before"
    for _ in range(3):
        try:
            holder.check_once()
        except ModelRefused:
            pass
    assert source.resolves == 1 and holder.refused["version"] == "v0.0.2"
    source.state = "b"  # the remote moved: tried again
    with pytest.raises(ModelRefused):
        holder.check_once()
    assert source.resolves == 2


def test_a_replica_serves_from_an_origin_whose_head_names_no_branch(remotes, tmp_path):
    """`git init --bare` and a push of `main` leave the origin's HEAD on a branch that does not exist
    (master): the registry branch and the tags are all a replica needs."""
    from uqa.serving.remote import RemoteSource

    url, store, project = remotes
    origin = Path(url.removeprefix("file://"))
    run_ok(["git", "symbolic-ref", "HEAD", "refs/heads/master"], origin)
    register_here(project, seed=1, f1=60.0)
    publish(project, NAME, "origin")
    source = RemoteSource("uqa-qa:prod", url, cache=tmp_path / "cache")
    assert source.resolve().version == "v0.0.1"
    assert register_here(project, seed=2, f1=90.0)["promoted"]
    publish(project, NAME, "origin")
    assert source.resolve().version == "v0.0.2"  # a second sync of the same clone
