"""mmap-ray: Multi-modal Alignment Prompts (MmAP) for multi-task CLIP, with task-grouping studies on Ray.

The library core (backbone, prompts, model, grouping) is pure PyTorch on open_clip and imports no Ray.
"""

from importlib import import_module

# Each public name and the module that defines it. They are imported on first use (PEP 562), so that a
# command that only reads results (`mmap-ray report`, the analysis scripts, `--version`) does not pay for
# torch and open_clip at start-up.
_EXPORTS = {
    "Backbone": "backbone",
    "BackboneConfig": "backbone",
    "BackboneInfo": "backbone",
    "load_backbone": "backbone",
    "Partition": "grouping",
    "PromptedCLIP": "model",
    "count_parameters": "model",
    "Combine": "prompts",
    "MmAPConfig": "prompts",
    "Projection": "prompts",
    "PromptBank": "prompts",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
