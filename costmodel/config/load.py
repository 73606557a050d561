"""Loading specs: YAML (this project's format) and Hugging Face ``config.json``, as untrusted input.

Reading takes bounded time and memory (size, nesting, number length, no YAML aliases, no
duplicate keys); every problem is a :class:`~costmodel.config.specs.ConfigError` whose message is
one line naming the file and the field.  Scenarios name models and hardware by catalogue name
(:mod:`costmodel.config.catalogue`) or by path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from costmodel.config import catalogue
from costmodel.config.specs import (
    MAX_DIMENSION,
    MAX_DURATION,
    MAX_TOKENS,
    ConfigError,
    EngineCalibration,
    HardwareSpec,
    ModelSpec,
    Scenario,
    SearchSpace,
    StepOverhead,
)
from costmodel.model.engine import PROFILES
from costmodel.model.kernels import (
    KV_ATTENTION_DTYPE,
    MLA_DIMS,
    MLA_WEIGHT_DTYPE,
    MOE_WEIGHT_DTYPE,
    WEIGHT_GEMM_DTYPE,
)

# --------------------------------------------------------------------------- reading files
#
# A config is untrusted input: reading it must take bounded time and memory, and every problem
# must be a ConfigError naming the file and the field.

MAX_FILE_BYTES = 2**20  # 1 MiB: the largest shipped spec is about 2 kB
MAX_DEPTH = 16  # nesting levels; the deepest valid spec nests 3 (search.tp[i])
MAX_NUMBER_CHARS = 64  # characters of one number; int() refuses over 4300 digits, and no field
#                        needs more than 20


class _Refused(Exception):
    """A document refused while parsing: the field (dotted path) and why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _shown(value: Any) -> str:
    """A short repr of an input value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing anchors and aliases (the billion-laughs expansion), nesting
    deeper than :data:`MAX_DEPTH`, duplicate keys (PyYAML keeps the later value) and numbers
    longer than :data:`MAX_NUMBER_CHARS`, each naming the field it reached."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._at: list[Any] = []  # index of each node being composed: key node, int or None

    def _field(self, *extra: Any) -> str:
        parts: list[str] = []
        for index in [*self._at, *extra]:
            if isinstance(index, yaml.ScalarNode):
                parts.append(str(index.value))
            elif isinstance(index, int) and parts:
                parts[-1] += f"[{index}]"
            elif isinstance(index, int):
                parts.append(f"[{index}]")
        return ".".join(parts)

    def compose_node(self, parent, index):
        self._at.append(index)
        try:
            event = self.peek_event()
            line = f"line {event.start_mark.line + 1}"
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _Refused(self._field(), f"{line}: YAML anchors and aliases are not allowed")
            if len(self._at) > MAX_DEPTH:
                raise _Refused(self._field(), f"{line}: nested deeper than {MAX_DEPTH} levels")
            node = super().compose_node(parent, index)
        finally:
            self._at.pop()
        self._check(node, index)
        return node

    def _check(self, node: yaml.Node, index: Any) -> None:
        numeric = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
        long = isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_NUMBER_CHARS
        if long and node.tag in numeric:
            raise _Refused(
                self._field(index),
                f"a number of {len(node.value)} characters (at most {MAX_NUMBER_CHARS})",
            )
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                line = key.start_mark.line + 1
                if key.value in first:
                    raise _Refused(
                        self._field(index, key),
                        f"duplicate key (lines {first[key.value]} and {line})",
                    )
                first[key.value] = line


def _read_text(path: Path) -> str:
    """The file's text: a regular file of at most :data:`MAX_FILE_BYTES` bytes of UTF-8."""
    try:
        if not path.exists():
            raise ConfigError(path, "", "no such file")
        if not path.is_file():
            raise ConfigError(path, "", "not a regular file")
        size = path.stat().st_size
        if size <= MAX_FILE_BYTES:
            raw = path.read_bytes()
    except OSError as err:  # e.g. ENAMETOOLONG, EACCES
        raise ConfigError(path, "", f"cannot read: {err.strerror or err}") from None
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        raise ConfigError(path, "", f"{size} bytes: larger than a config may be ({MAX_FILE_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", f"not UTF-8 text (byte {err.start}): a binary file?") from None
    if "\x00" in text:
        raise ConfigError(path, "", "holds NUL bytes: a binary file?")
    return text


def _read_yaml(path: Path) -> Mapping[str, Any]:
    loader = _ConfigLoader(_read_text(path))
    try:
        data = loader.get_single_data()
    except _Refused as err:
        raise ConfigError(path, err.field, err.message) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(path, where, f"malformed YAML: {problem}") from None
    except (ValueError, OverflowError, RecursionError) as err:  # e.g. a date that does not exist
        raise ConfigError(path, "", f"malformed YAML value: {_shown(str(err))}") from None
    finally:
        loader.dispose()
    if not isinstance(data, Mapping):
        raise ConfigError(path, "", "expected a mapping of fields at the top level")
    return data


class _Unconverted(str):
    """A JSON number kept as text (too long to convert, or NaN/Infinity): the field's check
    refuses it, so the message names the field."""

    def __repr__(self) -> str:
        return f"<a number of {len(self)} digits>" if self[-1:].isdigit() else str(self)


def _json_int(text: str) -> int | str:
    return int(text) if len(text) <= MAX_NUMBER_CHARS else _Unconverted(text)


def _json_constant(name: str) -> str:
    return _Unconverted(name)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _Refused(key, "duplicate key")
        data[key] = value
    return data


def _read_json(path: Path) -> Mapping[str, Any]:
    text = _read_text(path)
    try:
        data = json.loads(
            text, object_pairs_hook=_json_object, parse_int=_json_int, parse_constant=_json_constant
        )
    except _Refused as err:
        raise ConfigError(path, err.field, err.message) from None
    except json.JSONDecodeError as err:
        raise ConfigError(path, f"line {err.lineno}", f"malformed JSON: {err.msg}") from None
    except RecursionError:
        raise ConfigError(path, "", "malformed JSON: nested too deeply") from None
    if not isinstance(data, Mapping):
        raise ConfigError(path, "", "expected a JSON object")
    return data


# --------------------------------------------------------------------------- validating


def _field_path(loc: tuple, prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item in {"int", "float", "str", "function-after[...]"}:
            continue
        else:
            parts.append(str(item))
    return ".".join(parts)


def _validate(cls, data: Mapping[str, Any], path: Path, prefix: str = ""):
    try:
        return cls.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(x for x in first["loc"] if not str(x).startswith(("function", "union")))
        detail = first["msg"]
        if first["type"] not in {"missing", "extra_forbidden"}:
            detail += f" (got {_shown(first.get('input'))})"
        elif first["type"] == "extra_forbidden":
            detail = "unknown key"
        raise ConfigError(path, _field_path(loc, prefix), detail) from None


def _check_heads(model: ModelSpec, path: Path, heads: str, kv_heads: str) -> None:
    """KV heads are a divisor of the query heads (MHA, GQA, MQA): each KV head serves a group."""
    if model.n_kv_heads > model.n_heads:
        raise ConfigError(
            path, kv_heads, f"{model.n_kv_heads} KV heads exceed the {model.n_heads} query heads"
        )
    if model.n_heads % model.n_kv_heads:
        raise ConfigError(
            path,
            kv_heads,
            f"{model.n_kv_heads} KV heads do not divide the {model.n_heads} query heads ({heads})",
        )


def load_hardware(path: str | Path) -> HardwareSpec:
    """Load a hardware spec from catalogue-style YAML (``costmodel/catalogue/hardware/*.yaml``)."""
    path = Path(path)
    return _validate(HardwareSpec, _read_yaml(path), path)


# --------------------------------------------------------------------------- Hugging Face


class _Architecture(NamedTuple):
    """What transformers assumes for the fields a config.json of an architecture leaves out,
    and which of the model's kernels the architecture always has."""

    tie_word_embeddings: bool
    head_dim: int | None  # None: hidden_size // num_attention_heads
    sliding_window: int | None  # None: full attention
    max_position_embeddings: int | None
    mla: bool = False  # multi-head latent attention (DeepSeek)
    moe: str = ""  # the family of its Mixture-of-Experts fields ("" none)
    window_layers: str = "all"  # which layers a window applies to: "all", "alternate", "gemma3"
    qkv_bias: bool = False  # biases on q, k and v whatever attention_bias says (Qwen2)
    qk_norm: bool = False
    gemma: bool = False  # sandwich norms, tanh-GELU, embeddings scaled by sqrt(d_model)
    vocab_size: int | None = None  # transformers' default where a config leaves it out


# The architectures this model represents, with the defaults of their transformers configuration
# classes (transformers 4.5x: LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config,
# Qwen3MoeConfig, MixtralConfig, DeepseekV3Config, GptOssConfig, GemmaConfig, Gemma2Config,
# Gemma3TextConfig, Phi3Config).
_ARCHITECTURES = {
    "LlamaForCausalLM": _Architecture(False, None, None, 2048),
    "MistralForCausalLM": _Architecture(False, None, 4096, 4096 * 32),
    "Qwen2ForCausalLM": _Architecture(False, None, 4096, 32768, qkv_bias=True),
    "Qwen3ForCausalLM": _Architecture(False, None, 4096, 32768, qk_norm=True),
    "Qwen3MoeForCausalLM": _Architecture(False, None, 4096, 32768, moe="qwen", qk_norm=True),
    "MixtralForCausalLM": _Architecture(False, None, None, 4096 * 32, moe="mixtral"),
    "DeepseekV3ForCausalLM": _Architecture(False, None, None, 4096, mla=True, moe="deepseek"),
    "GptOssForCausalLM": _Architecture(
        False, 64, 128, 131072, moe="gpt-oss", window_layers="alternate"
    ),
    "GemmaForCausalLM": _Architecture(True, 256, None, 8192, gemma=True),
    "Gemma2ForCausalLM": _Architecture(
        True, 256, 4096, 8192, window_layers="alternate", gemma=True
    ),
    "Gemma3ForCausalLM": _Architecture(
        True, 256, 4096, 131072, window_layers="gemma3", qk_norm=True, gemma=True, vocab_size=262208
    ),
    "Phi3ForCausalLM": _Architecture(False, None, None, 4096),
}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
# Multimodal wrappers whose language model is one of the above, read from ``text_config``: the
# model served is the text decoder; the vision tower is not modelled (and not counted).
_TEXT_CONFIGS = {"Gemma3ForConditionalGeneration": "Gemma3ForCausalLM"}
# A config.json with neither ``architectures`` nor ``model_type``: read as Llama-style.
_LLAMA_STYLE = _Architecture(False, None, None, None)
# Architectures refused with a reason more useful than "not represented".
_REFUSED = {
    "Qwen2MoeForCausalLM": "its shared expert's sigmoid gate is not modelled",
    "DeepseekV2ForCausalLM": "DeepSeek-V2's group-limited routing fields are not modelled; "
    "DeepseekV3ForCausalLM is",
    "DbrxForCausalLM": "DBRX's fused experts are not modelled",
}
_MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def _hf_architecture(data: Mapping[str, Any], path: Path) -> tuple[str, _Architecture]:
    """The config's architecture (from ``architectures``, else ``model_type``), if represented."""
    names = data.get("architectures")
    if names is None and "model_type" in data:
        model_type = data["model_type"]
        if model_type not in _MODEL_TYPES:
            known = ", ".join(sorted(_MODEL_TYPES))
            raise ConfigError(
                path, "model_type", f"{_shown(model_type)} is not represented (known: {known})"
            )
        names = [_MODEL_TYPES[model_type]]
    if names is None:
        for field in ("num_local_experts", "num_experts", "n_routed_experts"):
            if data.get(field) not in (None, 0):
                raise ConfigError(
                    path, field, "experts without an architecture: name it in `architectures`"
                )
        return "Llama-style", _LLAMA_STYLE
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise ConfigError(path, "architectures", f"expected one name (got {_shown(names)})")
    name = names[0]
    if name in _REFUSED:
        raise ConfigError(path, "architectures", f"{name}: {_REFUSED[name]}")
    if name not in _ARCHITECTURES:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise ConfigError(path, "architectures", f"{name} is not represented (known: {known})")
    return name, _ARCHITECTURES[name]


def _hf_unmodelled(data: Mapping[str, Any], path: Path) -> None:
    """Refuse fields that change the arithmetic but are not modelled."""
    if data.get("mlp_bias", False) is not False:
        raise ConfigError(
            path, "mlp_bias", f"{_shown(data['mlp_bias'])}: MLP biases are not modelled"
        )
    for field in ("mlp_only_layers",):
        if data.get(field) not in (None, []):
            raise ConfigError(
                path,
                field,
                f"{_shown(data[field])}: dense layers among MoE layers are not modelled",
            )
    for field in ("decoder_sparse_step", "moe_layer_freq"):
        if data.get(field, 1) != 1:
            raise ConfigError(
                path, field, f"{_shown(data[field])}: MoE on every n-th layer is not modelled"
            )


def _hf_int(data: Mapping[str, Any], path: Path, field: str, *, minimum: int = 1) -> int:
    """A required integer field in ``minimum``..:data:`MAX_DIMENSION`."""
    if field not in data:
        raise ConfigError(path, field, "Field required")
    value = data[field]
    if type(value) is not int or not minimum <= value <= MAX_DIMENSION:
        raise ConfigError(
            path, field, f"expected an integer in {minimum}..{MAX_DIMENSION} (got {_shown(value)})"
        )
    return value


def _hf_bool(data: Mapping[str, Any], path: Path, field: str, default: bool) -> bool:
    value = data.get(field, default)
    if not isinstance(value, bool):
        raise ConfigError(path, field, f"expected true or false (got {_shown(value)})")
    return value


def _hf_sliding_layers(
    data: Mapping[str, Any], path: Path, name: str, arch: _Architecture, layers: int
) -> int:
    """How many layers attend a sliding window: from ``layer_types`` where the config lists
    them, else by the architecture's pattern (every layer; even layers (Gemma 2); all but every
    ``sliding_window_pattern``-th (Gemma 3)); Qwen's windows only with ``use_sliding_window``,
    on the layers from ``max_window_layers`` on."""
    types = data.get("layer_types")
    if types is not None:
        known = {"sliding_attention", "full_attention"}
        if not isinstance(types, list) or len(types) != layers or not set(types) <= known:
            raise ConfigError(
                path,
                "layer_types",
                f"expected {layers} entries of {' or '.join(sorted(known))} (got {_shown(types)})",
            )
        return types.count("sliding_attention")
    if "use_sliding_window" in data or name.startswith("Qwen"):
        if not _hf_bool(data, path, "use_sliding_window", False):
            return 0
        first = data.get("max_window_layers", layers)
        if type(first) is not int or not 0 <= first <= layers:
            raise ConfigError(
                path, "max_window_layers", f"expected 0..{layers} (got {_shown(first)})"
            )
        return layers - first
    if arch.window_layers == "alternate":
        return (layers + 1) // 2
    if arch.window_layers == "gemma3":
        pattern = data.get("sliding_window_pattern", 6)
        if type(pattern) is not int or pattern < 1:
            raise ConfigError(path, "sliding_window_pattern", f"got {_shown(pattern)}")
        return layers - layers // pattern
    return layers


def _hf_window(
    data: Mapping[str, Any], path: Path, name: str, arch: _Architecture, layers: int
) -> dict | None:
    """The sliding window (tokens and layers), or None where every layer attends everything."""
    window = data.get("sliding_window", arch.sliding_window)
    if window is None:
        return None
    if type(window) is not int or not 0 < window <= MAX_TOKENS:
        raise ConfigError(
            path, "sliding_window", f"expected an integer in 1..{MAX_TOKENS} (got {_shown(window)})"
        )
    limit = data.get("max_position_embeddings", arch.max_position_embeddings)
    if isinstance(limit, int) and window >= limit:
        return None  # a window no context reaches (Qwen2.5's 131072 of 131072)
    count = _hf_sliding_layers(data, path, name, arch, layers)
    return {"tokens": window, "layers": count} if count else None


def _hf_moe(data: Mapping[str, Any], path: Path, arch: _Architecture) -> dict:
    """The MoESpec fields of a Mixtral, Qwen3-MoE, DeepSeek-V3 or gpt-oss config."""
    if arch.moe == "mixtral" or arch.moe == "gpt-oss":
        experts = _hf_int(data, path, "num_local_experts")
        width = _hf_int(data, path, "intermediate_size")
    else:
        experts = _hf_int(
            data, path, "n_routed_experts" if arch.moe == "deepseek" else "num_experts"
        )
        width = _hf_int(data, path, "moe_intermediate_size")
    top_k = _hf_int(data, path, "num_experts_per_tok")
    if top_k >= experts:
        raise ConfigError(
            path,
            "num_experts_per_tok",
            f"{top_k} of {experts} experts: routing to every expert is not modelled",
        )
    fields: dict[str, Any] = {"n_experts": experts, "top_k": top_k, "expert_ffn_dim": width}
    if arch.moe == "deepseek":
        scoring = data.get("scoring_func", "sigmoid")
        if scoring not in ("sigmoid", "softmax"):
            raise ConfigError(path, "scoring_func", f"{_shown(scoring)} is not modelled")
        fields |= {
            "scoring": scoring,
            "shared_ffn_dim": _hf_int(data, path, "n_shared_experts", minimum=0) * width,
            "dense_layers": _hf_int(data, path, "first_k_dense_replace", minimum=0),
            "normalise_top_k": _hf_bool(data, path, "norm_topk_prob", True),
        }
    elif arch.moe == "qwen":
        fields["normalise_top_k"] = _hf_bool(data, path, "norm_topk_prob", False)
    elif arch.moe == "gpt-oss":  # softmax over the k chosen logits: weights sum to 1
        fields |= {"router_bias": True, "expert_bias": True}
    return fields


def _hf_head_dim(data: Mapping[str, Any], path: Path, arch: _Architecture, hidden, heads) -> int:
    if data.get("head_dim") is not None:
        return _hf_int(data, path, "head_dim")
    if arch.head_dim is not None:
        return arch.head_dim
    if hidden % heads:
        raise ConfigError(
            path,
            "hidden_size",
            f"{hidden} does not divide by num_attention_heads {heads}, and head_dim is not given",
        )
    return hidden // heads


def _hf_model(data: Mapping[str, Any], path: Path, name: str) -> ModelSpec:
    """Map a Hugging Face config.json of a represented architecture onto a ModelSpec."""
    names = data.get("architectures")
    if isinstance(names, list) and len(names) == 1 and names[0] in _TEXT_CONFIGS:
        text = data.get("text_config")
        if not isinstance(text, Mapping):
            raise ConfigError(path, "text_config", f"expected an object (got {_shown(text)})")
        inner = {"architectures": [_TEXT_CONFIGS[names[0]]]} | dict(text)
        spec = _hf_model(inner, path, name)
        note = f"the text decoder of {names[0]}; its vision tower is not modelled"
        return spec.model_copy(update={"note": note})
    architecture, arch = _hf_architecture(data, path)
    _hf_unmodelled(data, path)
    heads = _hf_int(data, path, "num_attention_heads")
    hidden = _hf_int(data, path, "hidden_size")
    layers = _hf_int(data, path, "num_hidden_layers")
    kv_heads = heads  # transformers: num_key_value_heads absent or null means MHA
    if data.get("num_key_value_heads") is not None:
        kv_heads = _hf_int(data, path, "num_key_value_heads")
    bias = _hf_bool(data, path, "attention_bias", arch.moe == "gpt-oss")
    fields: dict[str, Any] = {
        "name": name,
        "n_layers": layers,
        "d_model": hidden,
        "n_heads": heads,
        "n_kv_heads": kv_heads,
        "ffn_dim": _hf_int(data, path, "intermediate_size"),
        "vocab_size": _hf_int(
            {"vocab_size": arch.vocab_size} | dict(data) if arch.vocab_size else data,
            path,
            "vocab_size",
        ),
        "tie_word_embeddings": _hf_bool(
            data, path, "tie_word_embeddings", arch.tie_word_embeddings
        ),
        "qkv_bias": arch.qkv_bias or bias,
        "o_bias": bias,
        "qk_norm": arch.qk_norm,
    }
    if arch.gemma:
        fields |= {"sandwich_norms": architecture != "GemmaForCausalLM", "embedding_scale": True}
        fields["activation"] = "gelu_tanh"
        softcap = data.get("attn_logit_softcapping"), data.get("final_logit_softcapping")
        fields["logit_softcap"] = any(value is not None for value in softcap)
    if arch.moe == "gpt-oss":
        fields |= {"attention_sinks": True, "activation": "clamped_swiglu"}
    if arch.moe:
        fields["moe"] = _hf_moe(data, path, arch)
    window = _hf_window(data, path, architecture, arch, layers)
    if window is not None:
        fields["sliding_window"] = window
    if arch.mla or data.get("kv_lora_rank") is not None:
        mla = {field: _hf_int(data, path, field) for field in _MLA_FIELDS}
        fields["mla"] = mla
        fields["head_dim"] = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    else:
        fields["head_dim"] = _hf_head_dim(data, path, arch, hidden, heads)
    model = _validate(ModelSpec, fields, path)
    _check_heads(model, path, "num_attention_heads", "num_key_value_heads")
    _check_layers(model, path, "first_k_dense_replace", "sliding_window")
    return model


def _check_layers(model: ModelSpec, path: Path, dense: str, window: str) -> None:
    """Dense-first layers leave at least one MoE layer; a window covers at most every layer."""
    if model.moe is not None and model.moe.dense_layers >= model.n_layers:
        raise ConfigError(
            path,
            dense,
            f"{model.moe.dense_layers} dense layers leave no MoE layer of {model.n_layers}",
        )
    if model.sliding_window is not None and model.sliding_window.layers > model.n_layers:
        raise ConfigError(
            path,
            window,
            f"{model.sliding_window.layers} sliding-window layers exceed the "
            f"{model.n_layers} layers",
        )
    if model.moe is not None and model.moe.top_k >= model.moe.n_experts:
        raise ConfigError(path, "moe.top_k", "routing every token to every expert is not modelled")


def load_model(path: str | Path) -> ModelSpec:
    """Load a model spec from this project's YAML or a Hugging Face ``config.json``."""
    path = Path(path)
    if path.suffix == ".json":
        return _hf_model(_read_json(path), path, path.parent.name or path.stem)
    model = _validate(ModelSpec, _read_yaml(path), path)
    _check_heads(model, path, "n_heads", "n_kv_heads")
    _check_layers(model, path, "moe.dense_layers", "sliding_window.layers")
    return model


# --------------------------------------------------------------------------- scenarios


def _is_file(path: Path, scenario: Path, field: str) -> bool:
    try:
        return path.is_file()
    except OSError as err:  # e.g. ENAMETOOLONG
        reason = f"cannot use {_shown(str(path))}: {err.strerror}"
        raise ConfigError(scenario, field, reason) from None


def _known(kind: catalogue.Kind, directory: Path) -> list[str]:
    try:
        return catalogue.names(kind, directory)
    except catalogue.CatalogueError:
        return []


def _catalogue_entry(value: Any, kind: catalogue.Kind, path: Path, field: str) -> Path:
    """Resolve a catalogue name (beside the scenario first, then the project's) or a file path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(path, field, f"expected a name or a path (got {_shown(value)})")
    candidate = Path(value)
    if candidate.suffix in {".yaml", ".yml", ".json"}:
        resolved = candidate if candidate.is_absolute() else path.parent / candidate
        if not _is_file(resolved, path, field):
            raise ConfigError(path, field, f"no such file {_shown(value)}")
        return resolved
    directories = [path.parent / kind, catalogue.directory(kind)]
    for directory in directories:
        entry = directory / f"{value}.yaml"
        if _is_file(entry, path, field):
            return entry
    known = sorted({name for d in directories for name in _known(kind, d)})
    raise ConfigError(
        path, field, f"unknown {field} {_shown(value)} (known: {', '.join(known) or 'none'})"
    )


def load_engine_calibration(path: str | Path) -> EngineCalibration:
    """Load an engine calibration (``costmodel/catalogue/engines/<hardware>/<engine>.json``)."""
    path = Path(path)
    return _validate(EngineCalibration, _read_json(path), path)


def engine_calibration(hardware: str, engine: str, path: Path, field: str) -> EngineCalibration:
    """The catalogue's calibration of ``engine`` on ``hardware``; a ConfigError naming ``path``
    and ``field`` when there is none."""
    found = catalogue.engine_path(hardware, engine)
    if not found.is_file():
        known = [e for h, e in catalogue.engine_pairs() if h == hardware]
        have = ", ".join(known) if known else "none"
        raise ConfigError(
            path, field, f"no calibration of {engine} on {hardware} (calibrated engines: {have})"
        )
    calibration = load_engine_calibration(found)
    if (calibration.hardware, calibration.engine) != (hardware, engine):
        raise ConfigError(
            found,
            "hardware",
            f"calibrates {calibration.engine} on {calibration.hardware}, "
            f"not {engine} on {hardware}",
        )
    return calibration


def load_step_overhead(path: str | Path) -> StepOverhead:
    """Load the engines' fitted step overheads (``costmodel/catalogue/serving/``)."""
    path = Path(path)
    return _validate(StepOverhead, _read_json(path), path)


def step_overheads() -> StepOverhead:
    """The catalogue's fitted step overheads (none fitted: an empty record)."""
    path = catalogue.step_overhead_path()
    if not path.is_file():
        return StepOverhead(source="none fitted", split="", seconds={})
    return load_step_overhead(path)


def load_scenario(path: str | Path, *, engine: str | None = None) -> Scenario:
    """Load a scenario YAML; ``model`` and ``hardware`` are catalogue names or file paths.
    ``engine`` (a command line's ``--engine``) replaces the scenario's own ``engine``."""
    path = Path(path)
    data = dict(_read_yaml(path))
    if engine is not None:
        data["engine"] = engine
    return _scenario(data, path)


def serving_scenario(
    model: str,
    hardware: str,
    *,
    engine: str | None,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    source: Path,
    fields: Mapping[str, str],
) -> Scenario:
    """The scenario of one serving question, built and checked as :func:`load_scenario` would
    a YAML file holding ``model`` and ``hardware`` (catalogue names or paths, relative ones
    against ``source``'s folder), ``n_gpus`` = ``tp``, ``engine`` (None: no engine), a search
    of that one setting, continuous serving, placeholder workload lengths (a serving point
    carries the real ones) and SLOs nothing breaks.

    A problem with what was given is a ConfigError naming ``source`` and, through ``fields``
    (scenario field -> the user's name for it, e.g. ``{"search.weight_dtypes[0]":
    "--weight-dtype"}``), the user's field; one inside a referenced model, hardware or
    calibration file names that file and its own field."""
    source = Path(source)
    data = {
        "name": f"{model} on {hardware}",
        "model": model,
        "hardware": hardware,
        "n_gpus": tp,
        "engine": engine,
        "workload": {"prompt_tokens": 1, "output_tokens": 1},
        "slo": {"tpot_ms": MAX_DURATION, "ttft_ms": MAX_DURATION},
        "search": {"tp": [tp], "weight_dtypes": [weight_dtype], "kv_dtypes": [kv_dtype]},
        "serving": {"mode": "continuous"},
    }
    try:
        return _scenario(data, source)
    except ConfigError as err:
        if err.path != str(source):
            raise
        raise ConfigError(source, fields.get(err.field, err.field), err.message) from None


def _scenario(data: dict[str, Any], path: Path) -> Scenario:
    """A scenario's fields (``model`` and ``hardware`` as names or paths) built and checked;
    problems name ``path``."""
    for field in ("model", "hardware"):
        if field not in data:
            raise ConfigError(path, field, "Field required")
    data.setdefault("name", path.stem)
    data["model"] = load_model(_catalogue_entry(data["model"], "models", path, "model"))
    data["hardware"] = load_hardware(
        _catalogue_entry(data["hardware"], "hardware", path, "hardware")
    )
    for field in ("kernels", "step_overhead_s"):
        if field in data:
            raise ConfigError(path, field, "set from the engine's calibration, not by a scenario")
    scenario = _validate(Scenario, data, path)
    if scenario.engine is not None:
        kernels = engine_calibration(scenario.hardware.name, scenario.engine, path, "engine")
        overhead = step_overheads().seconds.get(scenario.engine, 0.0)
        scenario = scenario.model_copy(update={"kernels": kernels, "step_overhead_s": overhead})
    _check_scenario(scenario, path)
    return scenario


def _group_widths(model: ModelSpec, search: SearchSpace) -> dict[str, int]:
    """Widths int4 groups run along (the reduction axis: one scale per ``group_size`` inputs).

    Weights: every matmul's input width, d_model (QKV, gate, up), ffn_dim (down), the attention
    output's n_heads x head_dim (or x v_head_dim with MLA) and, with MLA, the latent ranks.
    KV cache: one head's vector, head_dim (or, with MLA, the latent kv_lora_rank).
    """
    widths: dict[str, int] = {}
    if "int4" in search.weight_dtypes:
        widths |= {"d_model": model.d_model, "ffn_dim": model.ffn_dim}
        if model.moe is not None and model.moe.shared_ffn_dim:
            widths["moe.shared_ffn_dim"] = model.moe.shared_ffn_dim
    if model.moe is not None and "int4" in (search.expert_dtypes or search.weight_dtypes):
        widths |= {"d_model": model.d_model, "moe.expert_ffn_dim": model.moe.expert_ffn_dim}
        if model.mla is None:
            widths["n_heads x head_dim"] = model.n_heads * model.head_dim
        else:
            widths["n_heads x v_head_dim"] = model.n_heads * model.mla.v_head_dim
            widths["q_lora_rank"] = model.mla.q_lora_rank
            widths["kv_lora_rank"] = model.mla.kv_lora_rank
    if "int4" in search.kv_dtypes:
        if model.mla is None:
            widths["head_dim"] = model.head_dim
        else:
            widths["kv_lora_rank"] = model.mla.kv_lora_rank
    return widths


def _check_engine(scenario: Scenario, path: Path) -> None:
    """An engine's calibration must cover the model and every dtype the search may pick: the
    dense families always, the ``moe`` family for experts (at their formats) and the MLA block
    families for MLA (at DeepSeek-V3's widths, the only ones measured)."""
    calibration = scenario.kernels
    if calibration is None:
        return
    model = scenario.model
    if model.mla is not None and any(
        model.dims()[symbol] != value for symbol, value in MLA_DIMS.items()
    ):
        raise ConfigError(
            path,
            "engine",
            "the engine's MLA block was measured at DeepSeek-V3's widths only; this model's "
            "MLA differs (drop `engine` for the roofline)",
        )
    if scenario.serving.mode == "static" and (model.moe is not None or model.mla is not None):
        raise ConfigError(
            path,
            "engine",
            "the static batch under an engine times dense models only; use serving.mode: "
            "continuous for a model with experts or MLA",
        )
    search = scenario.search
    wanted = [
        ("search.weight_dtypes", search.weight_dtypes, WEIGHT_GEMM_DTYPE, "gemm"),
        ("search.kv_dtypes", search.kv_dtypes, KV_ATTENTION_DTYPE, "context_attention"),
        ("search.kv_dtypes", search.kv_dtypes, KV_ATTENTION_DTYPE, "generation_attention"),
    ]
    if model.moe is not None:
        field = "search.expert_dtypes" if search.expert_dtypes else "search.weight_dtypes"
        experts = search.expert_dtypes or search.weight_dtypes
        wanted.append((field, experts, MOE_WEIGHT_DTYPE, "moe"))
    if model.mla is not None and PROFILES[calibration.engine].mla_block:
        wanted.append(
            (
                "search.weight_dtypes",
                search.weight_dtypes,
                MLA_WEIGHT_DTYPE,
                "mla_generation_module",
            )
        )
    elif model.mla is not None:
        wanted.append(("search.kv_dtypes", search.kv_dtypes, KV_ATTENTION_DTYPE, "mla_generation"))
    for field, dtypes, measured_as, family in wanted:
        fitted = calibration.fitted_dtypes(family)
        if family.endswith("_module"):  # fitted as "weights/kv": the weights' part
            fitted = tuple(sorted({d.split("/")[0] for d in fitted}))
        for i, dtype in enumerate(dtypes):
            if measured_as.get(dtype) not in fitted:
                raise ConfigError(
                    path,
                    f"{field}[{i}]",
                    f"{dtype} has no measured {family.replace('_', ' ')} kernels for "
                    f"{calibration.engine} on {calibration.hardware} (measured: "
                    f"{', '.join(fitted) or 'none'})",
                )


def _check_experts(scenario: Scenario, path: Path) -> None:
    """Expert-parallel choices need experts, and the static batch runs ep 1 only."""
    search = scenario.search
    chosen = [
        field
        for field, given in (
            ("search.ep", search.ep != [1]),
            ("search.attention_dp", search.attention_dp != [False]),
            ("search.expert_dtypes", search.expert_dtypes is not None),
        )
        if given
    ]
    if not chosen:
        return
    field = chosen[0]
    if scenario.model.moe is None:
        raise ConfigError(path, field, f"{scenario.model.name} has no experts to place")
    if scenario.serving.mode == "static":
        raise ConfigError(
            path,
            field,
            "the static batch's optimiser runs experts at ep 1 in the weight dtype; "
            "use serving.mode: continuous to choose expert parallelism",
        )


def _check_scenario(scenario: Scenario, path: Path) -> None:
    _check_engine(scenario, path)
    _check_experts(scenario, path)
    for i, degree in enumerate(scenario.search.tp):
        if degree > scenario.n_gpus:
            raise ConfigError(
                path, f"search.tp[{i}]", f"tp {degree} exceeds n_gpus {scenario.n_gpus}"
            )
        if scenario.model.n_heads % degree:
            raise ConfigError(
                path,
                f"search.tp[{i}]",
                f"tp {degree} does not divide the {scenario.model.n_heads} query heads",
            )
    workload = scenario.workload
    if workload.context is not None and workload.context < workload.prompt_tokens:
        raise ConfigError(
            path,
            "workload.context",
            f"{workload.context} tokens: shorter than the prompt "
            f"(workload.prompt_tokens {workload.prompt_tokens})",
        )
    group = scenario.search.group_size
    for name, width in _group_widths(scenario.model, scenario.search).items():
        if width % group:
            raise ConfigError(
                path,
                "search.group_size",
                f"int4 groups of {group} do not divide the model's {name} ({width}); a group "
                "size must divide every width int4 groups run along",
            )


def _catalogue(kind: catalogue.Kind, load) -> dict:
    try:
        names = catalogue.names(kind)
    except catalogue.CatalogueError as err:
        raise ConfigError(err.directory, "", err.message) from None
    return {name: load(catalogue.path(kind, name)) for name in names}


def hardware_catalogue() -> dict[str, HardwareSpec]:
    """Every hardware spec of the catalogue, by name; ConfigError if the catalogue has none."""
    return _catalogue("hardware", load_hardware)


def model_catalogue() -> dict[str, ModelSpec]:
    """Every model spec of the catalogue, by file stem; ConfigError if the catalogue has none."""
    return _catalogue("models", load_model)
