"""prefetch.paths restates two of huggingface_hub's rules (repo ids, allow/ignore patterns) so that a
run does not import huggingface_hub.utils. These tests hold the restatement to the original: the same
verdict and message on hand-picked edge cases and on thousands of generated inputs."""

from __future__ import annotations

import random

import pytest
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id

from prefetch.paths import repo_id_problem, select_paths


def huggingface_hub_verdict(repo_id: str) -> str | None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return str(e)
    return None


EDGE_IDS = [
    "org/model",
    "gpt2",
    "a" * 96,
    "a" * 97,
    f"{'n' * 96}/{'m' * 96}",
    "org/model.git",
    "org/model.gitx",
    "a--b/c",
    "a/b..c",
    "-a/b",
    "a/b-",
    ".a/b",
    "a./b",
    "a/b/c",
    "org/modèle",
    "org/mod el",
    "org/",
    "/model",
    "",
    "_a/_b",
    "a.b-c_d/E.F-G_H",
]


@pytest.mark.parametrize("repo_id", EDGE_IDS)
def test_repo_id_rules_match_huggingface_hub(repo_id: str) -> None:
    expected = huggingface_hub_verdict(repo_id)
    problem = repo_id_problem(repo_id)
    assert (problem is None) == (expected is None)
    if expected is not None:
        assert problem is not None and expected.startswith(problem.rstrip("."))


def test_repo_id_rules_match_huggingface_hub_on_generated_ids() -> None:
    rng = random.Random(20261123)
    alphabet = "ab-_./Z9é -"
    for _ in range(20_000):
        repo_id = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert (repo_id_problem(repo_id) is None) == (huggingface_hub_verdict(repo_id) is None), repo_id


PATHS = [
    "config.json",
    "model.safetensors",
    "onnx/model.onnx",
    "onnx/sub/deep.bin",
    ".gitattributes",
    "README.md",
    "data\\windows.txt",
    "tokenizer/vocab.txt",
]


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (None, []),
        (["*.json"], []),
        (["onnx/"], []),
        (["onnx\\"], []),
        (["*"], ["onnx/*"]),
        (None, ["*.md", ".*"]),
        ([], []),
        (["data/*"], []),
        (["*.safetensors", "tokenizer/"], ["*.txt"]),
    ],
)
def test_pattern_selection_matches_huggingface_hub(include: list[str] | None, exclude: list[str]) -> None:
    expected = list(filter_repo_objects(PATHS, allow_patterns=include, ignore_patterns=exclude or None))
    assert select_paths(PATHS, include, exclude) == expected


def test_pattern_selection_matches_huggingface_hub_on_generated_patterns() -> None:
    rng = random.Random(7)
    pieces = ["*", "?", "a", "b", "/", ".", "[ab]", "\\", "x/"]
    paths = ["a", "b", "a/b", "a/a/b", "x/a.b", ".a", "ab", "b/a", "x\\a", "a.b"]
    for _ in range(3_000):
        include = None if rng.random() < 0.3 else ["".join(rng.choices(pieces, k=rng.randint(1, 4)))]
        exclude = ["".join(rng.choices(pieces, k=rng.randint(1, 4))) for _ in range(rng.randint(0, 2))]
        expected = list(filter_repo_objects(paths, allow_patterns=include, ignore_patterns=exclude or None))
        assert select_paths(paths, include, exclude) == expected, (include, exclude)
