"""The stages, in the order they run: the one list the flow chains (flows/pipeline.py) and that
dvc.yaml's stage order is checked against (tests/test_dvc_yaml.py). Each stage module has
`run(params, params_file)`, which the flow calls, and `main()`, which `dvc repro` runs as
`python -m tasks.<stage>`."""

from __future__ import annotations

from types import ModuleType

from tasks import download, evaluate, filter, register, source, tokenize, train

STAGES: tuple[ModuleType, ...] = (source, download, filter, tokenize, train, evaluate, register)


def stage_name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]


BY_NAME: dict[str, ModuleType] = {stage_name(m): m for m in STAGES}
DATA_STAGES = ("source", "download", "filter", "tokenize")  # what a sweep runs once for all its trials
