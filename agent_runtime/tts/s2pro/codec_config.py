"""Architecture config of the S2-Pro codec (JSON schema `agent-runtime/s2pro-codec-config` v1).

Every number needed to build the module tree is explicit in the JSON (derived ones included);
`CodecConfig.from_dict` checks that they are consistent and raises `ConfigError` otherwise.
The default (`CodecConfig.default()`) is the real S2-Pro codec, shipped as `s2pro_codec.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_runtime.errors import ConfigError

CONFIG_FORMAT = "agent-runtime/s2pro-codec-config"
CONFIG_FORMAT_VERSION = 1
DEFAULT_CONFIG_PATH = Path(__file__).with_name("s2pro_codec.json")


@dataclass(frozen=True)
class TransformerConfig:
    """One windowed causal transformer (pre-norm, LayerScale, SwiGLU, interleaved RoPE)."""

    n_layer: int
    dim: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    window_size: int
    rope_base: float
    norm_eps: float


@dataclass(frozen=True)
class EncoderConfig:
    dim: int
    rates: tuple[int, ...]
    block_channels: tuple[int, ...]
    stem_kernel_size: int
    residual_kernel_size: int
    residual_dilations: tuple[int, ...]
    final_kernel_size: int
    transformer_layers: tuple[int, ...]
    transformer_heads: tuple[int, ...]
    transformer_head_dim: int
    transformer_intermediate_size: tuple[int, ...]
    transformer_window_size: int
    transformer_rope_base: float
    transformer_norm_eps: float

    def block_transformer(self, i: int) -> TransformerConfig | None:
        """The transformer after encoder block `i`'s strided conv, or None (0 layers)."""
        if self.transformer_layers[i] == 0:
            return None
        heads = self.transformer_heads[i]
        return TransformerConfig(
            n_layer=self.transformer_layers[i],
            dim=self.block_channels[i],
            n_head=heads,
            n_local_heads=heads,
            head_dim=self.transformer_head_dim,
            intermediate_size=self.transformer_intermediate_size[i],
            window_size=self.transformer_window_size,
            rope_base=self.transformer_rope_base,
            norm_eps=self.transformer_norm_eps,
        )


@dataclass(frozen=True)
class QuantizerConfig:
    input_dim: int
    downsample_factors: tuple[int, ...]
    downsample_dims: tuple[int, ...]
    convnext_kernel_size: int
    convnext_mlp_ratio: float
    convnext_norm_eps: float
    semantic_codebook_size: int
    n_semantic_codebooks: int
    residual_codebook_size: int
    n_residual_codebooks: int
    codebook_dim: int
    transformer: TransformerConfig


@dataclass(frozen=True)
class DecoderConfig:
    dim: int
    rates: tuple[int, ...]
    block_channels: tuple[int, ...]
    stem_kernel_size: int
    residual_kernel_size: int
    residual_dilations: tuple[int, ...]
    final_kernel_size: int
    out_channels: int
    output_activation: str
    transformer_layers: tuple[int, ...]
    transformer_inserted: bool


@dataclass(frozen=True)
class CodecConfig:
    """The whole codec: sample rate, frame geometry and the three sub-networks."""

    name: str
    sample_rate: int
    causal: bool
    latent_dim: int
    hop_length: int
    frame_length: int
    num_codebooks: int
    encoder: EncoderConfig
    quantizer: QuantizerConfig
    decoder: DecoderConfig
    rope_table_dtype: str
    rope_max_positions: int

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls) -> CodecConfig:
        """The real S2-Pro codec (fish-speech `modded_dac_vq.yaml`)."""
        return cls.from_json(DEFAULT_CONFIG_PATH)

    @classmethod
    def from_json(cls, path: str | Path) -> CodecConfig:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: codec config not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{p}: not a readable JSON codec config ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        if not isinstance(data, dict):
            raise ConfigError("codec config must be a JSON object")
        if data.get("format") != CONFIG_FORMAT or data.get("format_version") != CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"codec config must have format={CONFIG_FORMAT!r} and format_version={CONFIG_FORMAT_VERSION}"
            )
        try:
            enc, q, dec = data["encoder"], data["quantizer"], data["decoder"]
            qt, common = q["transformer"], data["transformer_common"]
            cfg = cls(
                name=str(data.get("name", "")),
                sample_rate=int(data["sample_rate"]),
                causal=bool(data["causal"]),
                latent_dim=int(data["latent_dim"]),
                hop_length=int(data["hop_length"]),
                frame_length=int(data["frame_length"]),
                num_codebooks=int(data["num_codebooks"]),
                encoder=EncoderConfig(
                    dim=int(enc["dim"]),
                    rates=_ints(enc["rates"]),
                    block_channels=_ints(enc["block_channels"]),
                    stem_kernel_size=int(enc["stem_kernel_size"]),
                    residual_kernel_size=int(enc["residual_kernel_size"]),
                    residual_dilations=_ints(enc["residual_dilations"]),
                    final_kernel_size=int(enc["final_kernel_size"]),
                    transformer_layers=_ints(enc["transformer_layers"]),
                    transformer_heads=_ints(enc["transformer_heads"]),
                    transformer_head_dim=int(enc["transformer_head_dim"]),
                    transformer_intermediate_size=_ints(enc["transformer_intermediate_size"]),
                    transformer_window_size=int(enc["transformer_window_size"]),
                    transformer_rope_base=float(enc["transformer_rope_base"]),
                    transformer_norm_eps=float(enc["transformer_norm_eps"]),
                ),
                quantizer=QuantizerConfig(
                    input_dim=int(q["input_dim"]),
                    downsample_factors=_ints(q["downsample_factors"]),
                    downsample_dims=_ints(q["downsample_dims"]),
                    convnext_kernel_size=int(q["convnext_kernel_size"]),
                    convnext_mlp_ratio=float(q["convnext_mlp_ratio"]),
                    convnext_norm_eps=float(q["convnext_norm_eps"]),
                    semantic_codebook_size=int(q["semantic_codebook_size"]),
                    n_semantic_codebooks=int(q["n_semantic_codebooks"]),
                    residual_codebook_size=int(q["residual_codebook_size"]),
                    n_residual_codebooks=int(q["n_residual_codebooks"]),
                    codebook_dim=int(q["codebook_dim"]),
                    transformer=TransformerConfig(
                        n_layer=int(qt["n_layer"]),
                        dim=int(qt["dim"]),
                        n_head=int(qt["n_head"]),
                        n_local_heads=int(qt["n_local_heads"]),
                        head_dim=int(qt["head_dim"]),
                        intermediate_size=int(qt["intermediate_size"]),
                        window_size=int(qt["window_size"]),
                        rope_base=float(qt["rope_base"]),
                        norm_eps=float(qt["norm_eps"]),
                    ),
                ),
                decoder=DecoderConfig(
                    dim=int(dec["dim"]),
                    rates=_ints(dec["rates"]),
                    block_channels=_ints(dec["block_channels"]),
                    stem_kernel_size=int(dec["stem_kernel_size"]),
                    residual_kernel_size=int(dec["residual_kernel_size"]),
                    residual_dilations=_ints(dec["residual_dilations"]),
                    final_kernel_size=int(dec["final_kernel_size"]),
                    out_channels=int(dec["out_channels"]),
                    output_activation=str(dec["output_activation"]),
                    transformer_layers=_ints(dec["transformer_layers"]),
                    transformer_inserted=bool(dec["transformer_inserted"]),
                ),
                rope_table_dtype=str(common["rope_table_dtype"]),
                rope_max_positions=int(common["rope_max_positions"]),
            )
            _check_common(common)
        except KeyError as exc:
            raise ConfigError(f"codec config lacks key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"codec config has a malformed value ({exc})") from None
        cfg.validate()
        return cfg

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check that derived numbers agree with the ones they derive from."""
        e, q, d = self.encoder, self.quantizer, self.decoder
        problems: list[str] = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        n_enc = len(e.rates)
        need(n_enc > 0, "encoder.rates is empty")
        for key, seq in (
            ("block_channels", e.block_channels),
            ("transformer_layers", e.transformer_layers),
            ("transformer_heads", e.transformer_heads),
            ("transformer_intermediate_size", e.transformer_intermediate_size),
        ):
            need(len(seq) == n_enc, f"encoder.{key} must have {n_enc} entries (one per rate)")
        need(list(e.block_channels) == [e.dim * 2 ** (i + 1) for i in range(n_enc)],
             "encoder.block_channels must double from 2*encoder.dim")
        need(self.latent_dim == e.dim * 2**n_enc, "latent_dim must be encoder.dim * 2**len(encoder.rates)")
        need(self.hop_length == math.prod(e.rates), "hop_length must be the product of encoder.rates")
        need(self.frame_length == self.hop_length * math.prod(q.downsample_factors),
             "frame_length must be hop_length * prod(quantizer.downsample_factors)")
        need(self.num_codebooks == q.n_semantic_codebooks + q.n_residual_codebooks,
             "num_codebooks must be n_semantic_codebooks + n_residual_codebooks")
        need(q.n_semantic_codebooks == 1, "quantizer.n_semantic_codebooks must be 1")
        need(q.input_dim == self.latent_dim, "quantizer.input_dim must equal latent_dim")
        need(len(q.downsample_dims) == len(q.downsample_factors),
             "quantizer.downsample_dims must have one entry per downsample factor")
        need(all(dim == q.input_dim for dim in q.downsample_dims),
             "quantizer.downsample_dims must all equal quantizer.input_dim (transformers run at that width)")
        need(q.transformer.dim == q.input_dim, "quantizer.transformer.dim must equal quantizer.input_dim")
        for i in range(min(n_enc, len(e.transformer_layers), len(e.transformer_heads))):
            if e.transformer_layers[i] > 0:
                need(e.transformer_heads[i] * e.transformer_head_dim == e.block_channels[i],
                     f"encoder transformer {i}: heads * head_dim must equal block_channels[{i}]")
        t = q.transformer
        need(t.n_head == t.n_local_heads, "quantizer.transformer.n_local_heads must equal n_head")
        need(t.n_head * t.head_dim == t.dim, "quantizer.transformer: n_head * head_dim must equal dim")
        n_dec = len(d.rates)
        need(list(d.block_channels) == [d.dim // 2 ** (i + 1) for i in range(n_dec)],
             "decoder.block_channels must halve from decoder.dim")
        need(math.prod(d.rates) == self.hop_length, "product of decoder.rates must equal hop_length")
        need(d.out_channels == 1, "decoder.out_channels must be 1")
        need(d.output_activation == "tanh", "decoder.output_activation must be 'tanh'")
        need(not d.transformer_inserted, "decoder.transformer_inserted=true is not supported (the reference never inserts them)")
        need(self.causal, "only causal codecs are supported")
        need(self.rope_table_dtype in ("bfloat16", "float32"), "transformer_common.rope_table_dtype must be bfloat16 or float32")
        if problems:
            raise ConfigError("inconsistent codec config: " + "; ".join(problems))

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.frame_length


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of integers, got {value!r}")
    return tuple(int(v) for v in value)


def _check_common(common: dict[str, Any]) -> None:
    if not common.get("layer_scale", True):
        raise ConfigError("transformer_common.layer_scale=false is not supported")
    if common.get("attention_qkv_bias", False):
        raise ConfigError("transformer_common.attention_qkv_bias=true is not supported")
    if not common.get("rope_interleaved", True):
        raise ConfigError("transformer_common.rope_interleaved=false is not supported")
