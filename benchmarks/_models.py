"""The model folders the benchmark kit serves, generated once and kept under ``--data``.

- ``big``: a safetensors checkpoint from :func:`modelpull.demo.sample.write_sample_model`,
  shards of 1 GiB and 512 MiB (each a little under), plus its index, config and tokenizer
  files: ~1.6 GB;
- ``far``: the same kind of checkpoint in 16 shards of 64 MiB;
- ``small-files``: 400 files of random bytes, 4 kB to ~500 kB (mostly small, log-uniform,
  with a share drawn uniformly), ~53 MB in all;
- ``one-file``: one small ``config.json``.

``quick`` gives the same shapes, smaller. A folder is reused when its ``.done`` marker is
there (same spec, same seed: same bytes); its SHA-256 are cached beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from _tree import source_hashes
from modelpull.demo.sample import write_sample_model

__all__ = ["MODEL_NAMES", "Model", "get_model"]

MiB = 1 << 20
MODEL_NAMES = ("big", "far", "small-files", "one-file")
# Share of small files drawn uniformly from the whole range instead of log-uniformly:
# it brings the mean to ~132 kB, so 400 files make ~53 MB as in the scenario.
_UNIFORM_SHARE = 0.18
_SMALL_MIN, _SMALL_MAX = 4_000, 512_000


@dataclass(frozen=True)
class Model:
    """A generated model folder and what a download of it must reproduce."""

    name: str
    folder: Path
    hashes: dict[str, str]
    total_bytes: int

    @property
    def files(self) -> int:
        return len(self.hashes)

    @property
    def prefix(self) -> str:
        """The S3 prefix it is served under."""
        return f"{self.name}/"


@dataclass(frozen=True)
class _Spec:
    """How a model is generated; the same spec writes the same bytes."""

    shards: tuple[int, ...] = ()
    seed: int = 0
    count: int = 0
    total: int = 0


def _spec(name: str, quick: bool) -> _Spec:
    if name == "big":
        return _Spec(shards=(64 * MiB, 32 * MiB) if quick else (1024 * MiB, 512 * MiB), seed=1)
    if name == "far":
        return _Spec(shards=(16 * MiB,) * 4 if quick else (64 * MiB,) * 16, seed=2)
    if name == "small-files":
        return _Spec(count=40, total=5_300_000) if quick else _Spec(count=400, total=53_000_000)
    if name == "one-file":
        return _Spec()
    raise ValueError(f"no model {name!r}")


def small_file_sizes(count: int, total: int, seed: int = 3) -> list[int]:
    """``count`` sizes from a few kB to ~500 kB, adding up to ``total`` exactly."""
    rng = random.Random(seed)
    low, high = math.log(_SMALL_MIN), math.log(_SMALL_MAX)
    drawn = [
        rng.uniform(_SMALL_MIN, _SMALL_MAX)
        if rng.random() < _UNIFORM_SHARE
        else math.exp(rng.uniform(low, high))
        for _ in range(count)
    ]
    scale = total / sum(drawn)
    sizes = [max(1, round(x * scale)) for x in drawn]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    return sizes


def _write(spec: _Spec, folder: Path) -> None:
    folder.mkdir(parents=True)
    if spec.shards:
        write_sample_model(folder, shard_sizes=spec.shards, seed=spec.seed)
    elif spec.count:
        rng = random.Random(4)
        for i, size in enumerate(small_file_sizes(spec.count, spec.total)):
            (folder / f"part-{i:04d}.bin").write_bytes(rng.randbytes(size))
    else:
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def get_model(
    data: Path, name: str, quick: bool = False, shard_sizes: list[int] | None = None
) -> Model:
    """The model ``name`` under ``data`` (written when missing), with its hashes.

    ``shard_sizes`` (bytes) replaces the shards of ``big`` or ``far``.
    """
    spec = _spec(name, quick)
    tag = f"{name}-quick" if quick and spec != _spec(name, False) else name
    if shard_sizes is not None:
        if not spec.shards:
            raise ValueError(f"the {name} model has no shards")
        spec = dataclasses.replace(spec, shards=tuple(shard_sizes))
        tag = f"{name}-" + "+".join(f"{size / MiB:g}" for size in shard_sizes) + "MiB"
    folder = data / "models" / tag / name
    done = data / "models" / f"{tag}.done"
    recorded = json.loads(done.read_text()) if done.is_file() else None
    if recorded != json.loads(json.dumps(dataclasses.asdict(spec))):
        shutil.rmtree(folder.parent, ignore_errors=True)
        done.unlink(missing_ok=True)
        print(f"writing the {tag} model in {folder}", file=sys.stderr)
        _write(spec, folder)
        done.write_text(json.dumps(dataclasses.asdict(spec)))
    hashes = source_hashes(folder, data / "models" / f"{tag}.sha256.json")
    total = sum((folder / rel).stat().st_size for rel in hashes)
    return Model(name=name, folder=folder, hashes=hashes, total_bytes=total)
