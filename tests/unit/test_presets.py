"""Serving presets and the selection rules, on the layouts models are published in."""

from __future__ import annotations

import pytest

from modelpull.errors import NothingSelectedError, UsageError
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.plan import choose
from modelpull.presets import PRESETS, apply_preset, get_preset
from modelpull.uri import parse_uri


def files(*paths: str, prefix: str = "m/") -> list[RemoteFile]:
    return [RemoteFile(ObjectInfo(key=prefix + p, size=1, etag="e"), p) for p in paths]


def kept(paths: list[str], preset: str = "vllm") -> set[str]:
    return {f.path for f in apply_preset(get_preset(preset), files(*paths))}


# Meta-Llama-3-8B-Instruct as published: the Hugging Face layout, and Meta's own
# consolidated checkpoint under original/.
LLAMA = [
    "LICENSE",
    "README.md",
    "USE_POLICY.md",
    "config.json",
    "generation_config.json",
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
]
# A Qwen2-style BPE tokenizer, a chat template file, and weights also as .bin.
QWEN = [
    "config.json",
    "merges.txt",
    "vocab.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors",
    "pytorch_model.bin",
    "training_args.bin",
]
# A trust_remote_code model: its modelling code and a tiktoken vocabulary.
REMOTE_CODE = [
    "config.json",
    "configuration_chatglm.py",
    "modeling_chatglm.py",
    "tokenization_chatglm.py",
    "qwen.tiktoken",
    "tokenizer.model",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "images/logo.png",
]
# An older model with .bin weights only (and the trainer's state beside them).
BIN_ONLY = [
    "config.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model-00002-of-00002.bin",
    "pytorch_model.bin.index.json",
    "vocab.txt",
    "optimizer.pt",
    "training_args.bin",
    "rng_state_0.pth",
    "spiece.model",
]


def test_llama_leaves_original_out() -> None:
    assert kept(LLAMA) == {
        "config.json",
        "generation_config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_qwen_keeps_its_tokenizer_and_template_not_the_bin_twin() -> None:
    assert kept(QWEN) == {
        "config.json",
        "merges.txt",
        "vocab.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors",
    }


def test_remote_code_keeps_its_python_and_tiktoken() -> None:
    assert kept(REMOTE_CODE) == set(REMOTE_CODE) - {"images/logo.png"}


def test_bin_weights_when_there_are_no_safetensors() -> None:
    assert kept(BIN_ONLY) == {
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "vocab.txt",
        "spiece.model",
    }


def test_sglang_is_the_same_set_and_unknown_presets_are_refused() -> None:
    assert kept(QWEN, "sglang") == kept(QWEN, "vllm")
    assert set(PRESETS) == {"vllm", "sglang"}
    with pytest.raises(UsageError, match="vllm"):
        get_preset("vlm")


# -- choose: wildcards, filters and the empty selection ----------------------------------


def test_a_wildcard_selects_like_an_include() -> None:
    listing = files("config.json", "sub/x.json", "w.safetensors")
    uri = parse_uri("s3://bk/m/*.json")
    assert uri.wildcard == ("m/", "*.json")
    assert [f.path for f in choose(listing, uri)] == ["config.json", "sub/x.json"]
    assert choose(listing, uri) == choose(listing, parse_uri("s3://bk/m/"), ["*.json"])


def test_an_exact_key_is_never_filtered_by_its_own_glob_characters() -> None:
    listing = [RemoteFile(ObjectInfo(key="m/a[1].json", size=1, etag="e"), "a[1].json")]
    assert choose(listing, parse_uri("s3://bk/m/a[1].json")) == listing


@pytest.mark.parametrize(
    ("include", "exclude", "needles"),
    [
        (["*.gguf"], None, ["--include *.gguf", "s3://bk/m/ lists 2 file(s)"]),
        (["*.json"], ["*"], ["allow-list", "drop --exclude '*'"]),
        (["m/*.json"], None, ["relative to s3://bk/m/", "not whole keys"]),
    ],
)
def test_nothing_selected_names_the_filters_and_why(
    include: list[str], exclude: list[str] | None, needles: list[str]
) -> None:
    listing = files("config.json", "w.safetensors")
    with pytest.raises(NothingSelectedError) as caught:
        choose(listing, parse_uri("s3://bk/m/"), include, exclude)
    for needle in [*needles, "--allow-empty"]:
        assert needle in str(caught.value)
    assert choose(listing, parse_uri("s3://bk/m/"), include, exclude, allow_empty=True) == []
