"""The public functions' shared keywords (``modelpull.keywords``): each function takes
exactly the keywords it always took, and refuses any other as a written-out signature
would, before anything is resolved or requested."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull import keywords
from modelpull.cluster import pull_distributed
from modelpull.verify import verify

SOURCE = {"config", "credentials", "backend"}
FILTERS = SOURCE | {"include", "exclude"}
REPORTING = SOURCE | {"observers", "registry"}
EVERY = FILTERS | REPORTING | {"preset"}


def test_each_set_names_the_keywords_its_functions_took() -> None:
    assert keywords.SourceKeywords.__optional_keys__ == SOURCE
    assert keywords.FilterKeywords.__optional_keys__ == FILTERS
    assert keywords.SelectKeywords.__optional_keys__ == FILTERS | {"preset"}
    assert keywords.ReportKeywords.__optional_keys__ == REPORTING
    assert keywords.PullKeywords.__optional_keys__ == EVERY
    assert not keywords.PullKeywords.__required_keys__


# Each public function, called with a keyword it does not take. Nothing is resolved: the
# URI's bucket does not exist and no endpoint is set, so reaching the store would fail
# differently.
Call = Callable[[Any], object]
CALLS: dict[str, tuple[Call, str]] = {
    "pull": (lambda dest: modelpull.pull("s3://b/m/", dest, exlude=["*.bin"]), "exlude"),
    "pull_files": (
        lambda dest: modelpull.pull_files("s3://b/m/", [], dest, preset="vllm"),
        "preset",
    ),
    "list_objects": (lambda dest: modelpull.list_objects("s3://b/m/", include=["*"]), "include"),
    "preview": (lambda dest: modelpull.preview("s3://b/m/", dest, registry=None), "registry"),
    "snapshot": (lambda dest: modelpull.snapshot("s3://b/m/", dest, incldue=["*"]), "incldue"),
    "verify": (lambda dest: verify("s3://b/m/", dest, preset="vllm"), "preset"),
    "pull_distributed": (
        lambda dest: pull_distributed("s3://b/m/", dest, preset="vllm"),
        "preset",
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_keyword_the_function_does_not_take_is_refused(name: str, tmp_path: Path) -> None:
    call, keyword = CALLS[name]
    with pytest.raises(
        TypeError, match=rf"^{name}\(\) got an unexpected keyword argument '{keyword}'$"
    ):
        call(tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
