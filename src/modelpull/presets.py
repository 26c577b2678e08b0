"""Serving presets: what an inference server reads from a model folder, and nothing else.

``--preset vllm`` (``sglang`` is the same set: both load Hugging Face layouts alike)
keeps the weights, every ``*.json`` (config, generation config, tokenizer config,
safetensors index, ...), the tokenizer files (``tokenizer.model`` and other
sentencepiece ``*.model`` files, ``merges.txt``, ``vocab.*``, ``*.tiktoken``), chat
templates (``*.jinja``) and the ``*.py`` modules of ``trust_remote_code`` models. It
leaves out ``original/`` (Meta's consolidated checkpoint beside the Hugging Face one) and,
when the model has safetensors, the same weights again as ``*.bin``/``*.pt``/``*.pth``.
A model with no safetensors keeps its ``*.bin``/``*.pt``/``*.pth`` weights, without the
trainer's state files.

A README's ``--include '*.safetensors' --include '*.json'`` is what people write by hand,
and it drops ``tokenizer.model``, ``merges.txt``, ``chat_template.jinja`` and the
remote code: a preset is that list written once, and tested against sample layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelpull.errors import UsageError
from modelpull.globs import matches
from modelpull.objects import RemoteFile

__all__ = ["PRESETS", "Preset", "apply_preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Globs (modelpull's: ``*`` crosses ``/``, ``dir/`` is a whole folder) on paths.

    ``weights`` are kept; ``fallback_weights`` only when no file matches ``weights``;
    ``files`` always; ``exclude`` never, whatever else matches.
    """

    name: str
    weights: tuple[str, ...]
    fallback_weights: tuple[str, ...]
    files: tuple[str, ...]
    exclude: tuple[str, ...]


_SERVING_FILES = (
    "*.json",
    "*.py",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "merges.txt",
    "*/merges.txt",
    "vocab.*",
    "*/vocab.*",
)
# What Hugging Face's Trainer saves beside weights: never needed to serve.
_TRAINER_STATE = (
    "optimizer.pt",
    "*/optimizer.pt",
    "scheduler.pt",
    "*/scheduler.pt",
    "training_args.bin",
    "*/training_args.bin",
    "rng_state*.pth",
    "*/rng_state*.pth",
)
PRESETS: dict[str, Preset] = {
    name: Preset(
        name=name,
        weights=("*.safetensors",),
        fallback_weights=("*.bin", "*.pt", "*.pth"),
        files=_SERVING_FILES,
        exclude=("original/", *_TRAINER_STATE),
    )
    for name in ("vllm", "sglang")
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`~modelpull.errors.UsageError` for another name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def apply_preset(preset: Preset, files: Sequence[RemoteFile]) -> list[RemoteFile]:
    """The files ``preset`` keeps, in their order."""
    candidates = [f for f in files if not matches(f.path, preset.exclude)]
    has_weights = any(matches(f.path, preset.weights) for f in candidates)
    weights = preset.weights if has_weights else preset.weights + preset.fallback_weights
    keep = (*weights, *preset.files)
    return [f for f in candidates if matches(f.path, keep)]
