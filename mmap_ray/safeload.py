"""Read tensor files (our checkpoints, pretrained weights) without running code from them.

`torch.load` unpickles, and a pickle can call any Python function, so every file we read goes through
`torch.load(weights_only=True)` (tensors, containers and plain values only) or, for `.safetensors`, the
safetensors reader; bytes fetched from object storage go through the same `torch.load`. Every failure
becomes one error that names the file and says what it should hold, instead of a pickle traceback.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

SAVE_HINT = "save tensors and plain values only, e.g. torch.save(model.state_dict(), path), or use a .safetensors file"


def load_tensor_file(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> object:
    """The object stored at `path` by `torch.save` (weights only) or safetensors; ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is an empty file (0 bytes), not a checkpoint; {SAVE_HINT}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for a bad header or body
            raise ValueError(f"{what} {path} is not a valid .safetensors file ({type(e).__name__}: {e})") from e
    return _torch_load(path, f"{what} {path}", map_location)


def load_tensor_bytes(
    data: bytes, source: str, what: str = "checkpoint", map_location: str | torch.device = "cpu"
) -> object:
    """`load_tensor_file` for the bytes of a `torch.save` file read from elsewhere (object storage);
    `source` names where they came from in errors."""
    if not data:
        raise ValueError(f"{what} {source} is empty (0 bytes), not a checkpoint; {SAVE_HINT}")
    return _torch_load(io.BytesIO(data), f"{what} {source}", map_location)


def _torch_load(f: Path | io.BytesIO, named: str, map_location: str | torch.device) -> object:
    """torch.load(weights_only=True) of a file or buffer; every failure is one ValueError starting with `named`."""
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise ValueError(
                f"{named} holds a pickled Python object ({found.group(1)}), not only tensors and plain "
                f"values; refused, since loading it could run code from the file. {SAVE_HINT[0].upper()}{SAVE_HINT[1:]}"
            ) from e
        raise ValueError(f"{named} is not a PyTorch checkpoint ({_reason(e)}); {SAVE_HINT}") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError) as e:
        # what torch.load raises for text, random bytes, a truncated zip or a non-torch pickle
        raise ValueError(f"{named} is not a PyTorch checkpoint ({_reason(e)}); {SAVE_HINT}") from e


def _reason(e: BaseException) -> str:
    """The informative line of a torch.load error, short."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = line if len(line) <= 160 else line[:160] + " ..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__
