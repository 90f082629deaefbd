"""The metric examples the README shows are what the metrics compute."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from uqa.evaluation.squad import question_scores


def _rows():
    text = (REPO / "README.md").read_text()
    for line in text.splitlines():
        m = re.match(r"\| `([^`]+)` \| `([^`]+)` \| (\d+) / (\d+) \| (\d+) / (\d+) \|", line)
        if m:
            yield m.group(1), m.group(2), [int(x) for x in m.groups()[2:]]


ROWS = list(_rows())


def test_readme_has_the_examples():
    assert len(ROWS) >= 5


@pytest.mark.parametrize(("prediction", "reference", "expected"), ROWS)
def test_readme_metric_examples(prediction, reference, expected):
    em, f1 = question_scores(prediction, [reference])
    uem, uf1 = question_scores(prediction, [reference], "urdu")
    assert [round(100 * em), round(100 * f1), round(100 * uem), round(100 * uf1)] == expected
