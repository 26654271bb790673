"""A small, fast GGUF reader: metadata, tensor directory and dequantised tensors.

`gguf.GGUFReader` builds a numpy view per field part and takes ~6 s on 2 cores to open a file with a
49k-token vocabulary; this reader parses the header with `struct` (~0.1 s) and leaves the
quantisation formats to the `gguf` package (`gguf.quants.dequantize`, `GGML_QUANT_SIZES`).
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian, versions 2 and 3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent_runtime.errors import ModelLoadError

try:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize as _dequantize
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ModelLoadError(
        "the local LLM needs the 'gguf' package: pip install 'agent-runtime[llm-local]'"
    ) from exc

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF value types -> struct format (0..12; 8 = string and 9 = array are handled apart).
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first), i.e. GGUF's dims reversed
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """Metadata (`self.metadata`) and tensors (`self.tensors`, `load(name)`) of one GGUF file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read GGUF file {self.path}: {exc}") from exc
        try:
            self.metadata, self.tensors = self._parse(memoryview(self._buf))
        except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise ModelLoadError(f"{self.path} is not a valid GGUF file (truncated or corrupt header)") from exc

    def _parse(self, mv: memoryview) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
        if bytes(mv[:4]) != _MAGIC:
            raise ModelLoadError(f"{self.path} is not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mv, 4)
        if version not in (2, 3):
            raise ModelLoadError(f"{self.path}: unsupported GGUF version {version}")
        pos = 24
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = _read_str(mv, pos)
            (vtype,) = struct.unpack_from("<I", mv, pos)
            metadata[key], pos = _read_value(mv, pos + 4, vtype)
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name, pos = _read_str(mv, pos)
            (n_dims,) = struct.unpack_from("<I", mv, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", mv, pos + 4)
            pos += 4 + 8 * n_dims
            qtype, offset = struct.unpack_from("<IQ", mv, pos)
            pos += 12
            raw.append((name, tuple(reversed(dims)), qtype, offset))
        align = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = (pos + align - 1) // align * align
        tensors: dict[str, TensorInfo] = {}
        for name, shape, qtype_id, offset in raw:
            qtype = GGMLQuantizationType(qtype_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
            if shape[-1] % block:
                raise ModelLoadError(f"{self.path}: tensor {name} row size is not a multiple of its block")
            nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * shape[-1] // block * type_size
            start = data_start + offset
            if start + nbytes > len(mv):
                raise ModelLoadError(f"{self.path} is truncated (tensor {name} lies past the end of the file)")
            tensors[name] = TensorInfo(name, shape, qtype, start, nbytes)
        return metadata, tensors

    def load(self, name: str) -> np.ndarray:
        """Tensor `name` dequantised to float32, in numpy order (e.g. (out_features, in_features))."""
        info = self.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"{self.path}: tensor {name!r} is missing")
        rows = int(np.prod(info.shape[:-1], dtype=np.int64))
        data = self._buf[info.offset : info.offset + info.nbytes].reshape(rows, -1)
        try:
            out = _dequantize(np.asarray(data), info.qtype)
        except NotImplementedError as exc:
            raise ModelLoadError(f"{self.path}: tensor {name} has unsupported type {info.qtype.name}") from exc
        out = np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)
        return out if out.flags.writeable else out.copy()  # F32 tensors come back as views of the file

    def load_q4_blocks(self, name: str) -> Q4Blocks | None:
        """Tensor `name` in its stored 4-bit form (Q4_0 or Q4_1: blocks of 32 along a row), or None for
        any other type. `load(name)` equals `q * scale + offset` blockwise, value for value."""
        info = self.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"{self.path}: tensor {name!r} is missing")
        if info.qtype not in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1):
            return None
        rows, cols = int(np.prod(info.shape[:-1], dtype=np.int64)), info.shape[-1]
        head = 2 if info.qtype == GGMLQuantizationType.Q4_0 else 4  # fp16 d (Q4_0) or fp16 d, m (Q4_1)
        data = np.asarray(self._buf[info.offset : info.offset + info.nbytes]).reshape(
            rows, cols // 32, head + 16
        )
        scale = np.ascontiguousarray(data[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
        if info.qtype == GGMLQuantizationType.Q4_1:
            offset = np.ascontiguousarray(data[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)
        else:  # Q4_0 stores q - 8
            offset = -8.0 * scale
        nibbles = data[..., head:]  # byte j holds element j (low nibble) and element j + 16 (high nibble)
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(rows, cols)
        return Q4Blocks(q=q, scale=scale, offset=offset)


@dataclass(frozen=True, slots=True)
class Q4Blocks:
    """A matrix stored as 4-bit integers in blocks of 32 along each row: w = q * scale + offset."""

    q: np.ndarray  # (rows, cols) uint8, 0..15
    scale: np.ndarray  # (rows, cols // 32) float32 (fp16 in the file)
    offset: np.ndarray  # (rows, cols // 32) float32


def _read_str(mv: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", mv, pos)
    end = pos + 8 + n
    return str(mv[pos + 8 : end], "utf-8"), end


def _read_value(mv: memoryview, pos: int, vtype: int) -> tuple[Any, int]:
    if vtype == _STRING:
        return _read_str(mv, pos)
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", mv, pos)
        pos += 12
        if etype in _SCALARS:  # numeric arrays in one unpack
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt)
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", mv, pos))
            return values, pos + size * count
        items = []
        for _ in range(count):
            item, pos = _read_value(mv, pos, etype)
            items.append(item)
        return items, pos
    fmt = _SCALARS.get(vtype)
    if fmt is None:
        raise ValueError(f"unknown GGUF value type {vtype}")
    return struct.unpack_from(fmt, mv, pos)[0], pos + struct.calcsize(fmt)
