"""A generated model folder that looks like a Hugging Face checkpoint, for the demo and tests.

Shards are real safetensors files of float16 tensors named and shaped like a small
Llama; their values are random (finite, within +-2), so the bytes do not compress and
every seed gives different shards. Beside them: the shard index, ``config.json``,
``generation_config.json`` and a byte-level BPE tokenizer trained on a few sentences.

numpy and safetensors come with the ``[demo]`` extra and are imported on first use, so
``import modelpull.demo`` works without them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpull.errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_SHARD_SIZES", "MIN_SHARD_SIZE", "write_sample_model"]

MiB = 1 << 20
DEFAULT_SHARD_SIZES = (48 * MiB, 24 * MiB)
MIN_SHARD_SIZE = 64 * 1024
# The largest tensor (an MLP matrix, 8 * hidden**2 bytes) stays under 1% of the
# smallest shard, so filling shards tensor by tensor lands close to the sizes asked for.
_SHARD_PER_HIDDEN_SQUARED = 1024
_MAX_HIDDEN = 4096
_HEAD_DIM = 64
_FLOAT16_BYTES = 2
_TRANSFORMERS_VERSION = "4.46.0"
_BOS, _EOS = "<|begin_of_text|>", "<|end_of_text|>"
_MERGES = 240
_CORPUS = """\
Large language models are stored as folders of files: a configuration, a tokenizer,
and the weights, split into shards of a few gigabytes each. Object stores keep these
folders close to the machines that serve the models. A fast puller reads every shard
in parallel ranges, writes them at their offsets, checks what it wrote, and only then
moves each file into place, so that a reader never finds a file half written. The
tokenizer turns text into numbers and the numbers back into text; the model predicts
the next number, one after another, until it writes the end of the text.
"""


def write_sample_model(
    folder: Path,
    *,
    shard_sizes: Sequence[int] = DEFAULT_SHARD_SIZES,
    seed: int = 0,
) -> list[Path]:
    """Write a sample model into ``folder`` (created) and return the paths written.

    One ``model-0000i-of-0000N.safetensors`` shard per entry of ``shard_sizes`` (bytes,
    default 48 MiB and 24 MiB, each at least 64 KiB), each a little under its size (within
    1%; 4% for the last shard, which holds only whole layers); then
    ``model.safetensors.index.json``, ``config.json``, ``generation_config.json``,
    ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``. The
    same ``seed`` gives the same bytes. Memory use is about one shard.
    """
    if not shard_sizes:
        raise UsageError("a sample model needs at least one shard")
    if min(shard_sizes) < MIN_SHARD_SIZE:
        raise UsageError(f"sample shards must be at least {MIN_SHARD_SIZE // 1024}KiB")
    try:
        import numpy as np
        from safetensors.numpy import save_file
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the sample model needs numpy and safetensors ({exc.name} is missing): "
            "pip install 'modelpull[demo]'"
        ) from exc

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_bpe(_CORPUS, _MERGES)
    special_ids = {_BOS: len(vocab), _EOS: len(vocab) + 1}
    # Embedding rows are padded to a multiple of 64, as real checkpoints do.
    vocab_size = -(-(len(vocab) + len(special_ids)) // 64) * 64
    dims = _Dims.for_shard(min(shard_sizes), vocab_size)

    bits = np.random.Generator(np.random.PCG64(seed)).bit_generator
    written: list[Path] = []
    weight_map: dict[str, str] = {}
    total = 0
    layers = 0
    count = len(shard_sizes)
    for index, shard in enumerate(_fill_shards(dims, shard_sizes), start=1):
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        tensors = {key: _random_float16(bits, shape) for key, shape in shard}
        path = folder / name
        save_file(tensors, path, metadata={"format": "pt"})
        written.append(path)
        for key, array in tensors.items():
            weight_map[key] = name
            total += array.nbytes
            if key.endswith(".input_layernorm.weight"):
                layers += 1
        del tensors

    docs: dict[str, Any] = {
        "model.safetensors.index.json": {
            "metadata": {"total_size": total},
            "weight_map": dict(sorted(weight_map.items())),
        },
        "config.json": _config(dims, layers, special_ids),
        "generation_config.json": {
            "_from_model_config": True,
            "bos_token_id": special_ids[_BOS],
            "eos_token_id": special_ids[_EOS],
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.9,
            "transformers_version": _TRANSFORMERS_VERSION,
        },
        "tokenizer.json": _tokenizer(vocab, merges, special_ids),
        "tokenizer_config.json": _tokenizer_config(special_ids),
        "special_tokens_map.json": {
            "bos_token": _special(_BOS),
            "eos_token": _special(_EOS),
        },
    }
    for name, doc in docs.items():
        path = folder / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


class _Dims:
    """Sizes of a small Llama: hidden, MLP and vocabulary widths, heads."""

    def __init__(self, hidden: int, vocab: int) -> None:
        self.hidden = hidden
        self.intermediate = 4 * hidden
        self.vocab = vocab
        self.head_dim = min(_HEAD_DIM, hidden)
        self.heads = hidden // self.head_dim
        # Grouped-query attention with 4 query heads per key/value head, when possible.
        self.kv_heads = max(1, self.heads // 4)

    @classmethod
    def for_shard(cls, smallest: int, vocab: int) -> _Dims:
        hidden = 8
        while hidden < _MAX_HIDDEN and (2 * hidden) ** 2 * _SHARD_PER_HIDDEN_SQUARED <= smallest:
            hidden *= 2
        return cls(hidden, vocab)

    def layer(self, i: int) -> list[tuple[str, tuple[int, ...]]]:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        p = f"model.layers.{i}."
        return [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (self.intermediate, h)),
            (p + "mlp.up_proj.weight", (self.intermediate, h)),
            (p + "mlp.down_proj.weight", (h, self.intermediate)),
        ]


Tensor = tuple[str, tuple[int, ...]]
# {"__metadata__":{"format":"pt"}}, the 8-byte header length and up to 7 bytes of padding.
_HEADER_BASE = 48


def _nbytes(shape: tuple[int, ...]) -> int:
    nbytes = _FLOAT16_BYTES
    for n in shape:
        nbytes *= n
    return nbytes


def _cost(group: Sequence[Tensor], width: int) -> int:
    """Bytes ``group`` adds to a safetensors file: data, and header entries at most.

    ``width`` is the digits of the largest offset in the file; counting every offset
    that wide errs on the small side, whatever order the tensors are laid out in.
    """
    offset = 10 ** (width - 1)
    total = 0
    for name, shape in group:
        entry = {name: {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset]}}
        # The entry's JSON without its braces, plus the comma that joins it.
        total += _nbytes(shape) + len(json.dumps(entry, separators=(",", ":"))) - 1
    return total


def _fill_shards(dims: _Dims, sizes: Sequence[int]) -> Iterator[list[Tensor]]:
    """Tensors for each shard, in checkpoint order, each shard filled up to its size.

    Layers may straddle two shards, as in real checkpoints; the last shard takes only
    whole layers and ends with the final norm and ``lm_head``, so every layer is complete.
    """
    h = dims.hidden
    tail: list[Tensor] = [("model.norm.weight", (h,)), ("lm_head.weight", (dims.vocab, h))]
    pending: list[Tensor] = [("model.embed_tokens.weight", (dims.vocab, h))]
    layer = 0
    for index, size in enumerate(sizes):
        last = index == len(sizes) - 1
        width = len(str(size))
        budget = size - _HEADER_BASE - (_cost(tail, width) if last else 0)
        shard: list[Tensor] = []
        used = 0
        while True:
            if not pending:
                pending = dims.layer(layer)
                layer += 1
            group = pending if last else pending[:1]
            need = _cost(group, width)
            if shard and used + need > budget:
                break
            shard += group
            used += need
            del pending[: len(group)]
        yield shard + tail if last else shard


def _random_float16(bits: np.random.BitGenerator, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    import numpy as np

    count = 1
    for n in shape:
        count *= n
    # random_raw is the fastest generator output (~2.5 GB/s, 15x Generator.bytes).
    raw = bits.random_raw(-(-count // 4))
    halves = raw.view(np.uint16)[:count]
    # Clearing the top exponent bit keeps every value finite and below 2 in magnitude,
    # like trained weights: a loader that checks for NaN or inf is not upset.
    halves &= 0xBFFF
    return halves.view(np.float16).reshape(shape)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as byte-level BPE vocabularies use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\w+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def _train_bpe(corpus: str, merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and its merges, learnt from ``corpus``.

    Ties between equally frequent pairs go to the smallest pair, so the result is the
    same on every run.
    """
    table = _bytes_to_unicode()
    vocab = {symbol: i for i, symbol in enumerate(table.values())}
    words = Counter(
        tuple(table[b] for b in piece.encode("utf-8")) for piece in _PRETOKENIZE.findall(corpus)
    )
    learnt: list[tuple[str, str]] = []
    while len(learnt) < merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for pair in pairwise(word):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        learnt.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        words = Counter({_merge(word, best): freq for word, freq in words.items()})
    return vocab, learnt


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _added_token(content: str, token_id: int) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _special(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def _tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], special_ids: dict[str, int]
) -> dict[str, Any]:
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(t, i) for t, i in special_ids.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": _BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": _BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": _BOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {_BOS: {"id": _BOS, "ids": [special_ids[_BOS]], "tokens": [_BOS]}},
        },
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def _tokenizer_config(special_ids: dict[str, int]) -> dict[str, Any]:
    return {
        "added_tokens_decoder": {
            str(i): {k: v for k, v in _added_token(t, i).items() if k != "id"}
            for t, i in special_ids.items()
        },
        "bos_token": _BOS,
        "eos_token": _EOS,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _config(dims: _Dims, layers: int, special_ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": special_ids[_BOS],
        "eos_token_id": special_ids[_EOS],
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "hidden_size": dims.hidden,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": dims.heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": dims.kv_heads,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": _TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": dims.vocab,
    }
