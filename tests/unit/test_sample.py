"""The generated sample model: real safetensors, a consistent index, configs and tokenizer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from modelpull.demo.sample import write_sample_model
from modelpull.errors import UsageError

KiB = 1 << 10
SIZES = (384 * KiB, 256 * KiB, 160 * KiB)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("sample")
    return folder, write_sample_model(folder, shard_sizes=SIZES, seed=3)


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_files_written(model: tuple[Path, list[Path]]) -> None:
    folder, paths = model
    names = [p.name for p in paths]
    assert names == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_shards_close_to_requested_size(model: tuple[Path, list[Path]]) -> None:
    _, paths = model
    for path, size in zip(paths, SIZES, strict=False):
        actual = path.stat().st_size
        assert 0.96 * size <= actual <= size, (path.name, actual, size)


def test_index_maps_every_tensor(model: tuple[Path, list[Path]]) -> None:
    folder, paths = model
    index = load_json(folder / "model.safetensors.index.json")
    found: dict[str, str] = {}
    total = 0
    for shard in paths[:3]:
        tensors = load_file(shard)
        assert tensors, shard.name
        for name, array in tensors.items():
            assert array.dtype == np.float16
            assert np.isfinite(array).all()
            found[name] = shard.name
            total += array.nbytes
    assert index["weight_map"] == found
    assert index["metadata"]["total_size"] == total


def test_tensors_match_config(model: tuple[Path, list[Path]]) -> None:
    folder, _ = model
    config = load_json(folder / "config.json")
    names = set(load_json(folder / "model.safetensors.index.json")["weight_map"])
    layers = config["num_hidden_layers"]
    assert layers > 1
    per_layer = {
        re.sub(r"^model\.layers\.\d+\.", "", n) for n in names if n.startswith("model.layers.")
    }
    assert len(per_layer) == 9
    expected = {f"model.layers.{i}.{suffix}" for i in range(layers) for suffix in per_layer}
    assert names == expected | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}

    shards = {}
    for shard in sorted(folder.glob("*.safetensors")):
        shards.update(load_file(shard))
    h, v = config["hidden_size"], config["vocab_size"]
    assert shards["model.embed_tokens.weight"].shape == (v, h)
    assert shards["lm_head.weight"].shape == (v, h)
    assert shards["model.layers.0.mlp.down_proj.weight"].shape == (h, config["intermediate_size"])
    kv = config["num_key_value_heads"] * config["head_dim"]
    assert shards["model.layers.0.self_attn.k_proj.weight"].shape == (kv, h)


def test_tokenizer_is_consistent(model: tuple[Path, list[Path]]) -> None:
    folder, _ = model
    tokenizer = load_json(folder / "tokenizer.json")
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    assert tokenizer["model"]["type"] == "BPE"
    assert sorted(vocab.values()) == list(range(len(vocab)))
    merges = tokenizer["model"]["merges"]
    assert len(merges) > 20
    for merge in merges:
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    specials = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert min(specials.values()) == len(vocab)

    config = load_json(folder / "config.json")
    tokenizer_config = load_json(folder / "tokenizer_config.json")
    special_map = load_json(folder / "special_tokens_map.json")
    for role in ("bos", "eos"):
        token = tokenizer_config[f"{role}_token"]
        assert special_map[f"{role}_token"]["content"] == token
        assert config[f"{role}_token_id"] == specials[token]
        assert load_json(folder / "generation_config.json")[f"{role}_token_id"] == specials[token]
    assert config["vocab_size"] >= len(vocab) + len(specials)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    sizes = (96 * KiB, 64 * KiB)
    first = write_sample_model(tmp_path / "a", shard_sizes=sizes, seed=1)
    second = write_sample_model(tmp_path / "b", shard_sizes=sizes, seed=1)
    other = write_sample_model(tmp_path / "c", shard_sizes=sizes, seed=2)
    for a, b, c in zip(first, second, other, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        if a.suffix == ".safetensors":
            assert a.read_bytes() != c.read_bytes(), a.name
        else:
            assert a.read_bytes() == c.read_bytes(), a.name


def test_default_sizes(tmp_path: Path) -> None:
    paths = write_sample_model(tmp_path)
    sizes = [p.stat().st_size for p in paths if p.suffix == ".safetensors"]
    assert len(sizes) == 2
    assert 0.99 * 48 * 1024 * KiB <= sizes[0] <= 48 * 1024 * KiB
    assert 0.96 * 24 * 1024 * KiB <= sizes[1] <= 24 * 1024 * KiB


@pytest.mark.parametrize("sizes", [(), (1024,)], ids=["no-shards", "too-small"])
def test_bad_sizes(tmp_path: Path, sizes: tuple[int, ...]) -> None:
    with pytest.raises(UsageError):
        write_sample_model(tmp_path, shard_sizes=sizes)
