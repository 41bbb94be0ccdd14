"""mmap-ray: Multi-modal Alignment Prompts (MmAP) for multi-task CLIP, with task-grouping studies on Ray.

The library core (backbone, prompts, model, grouping) is pure PyTorch on open_clip and imports no Ray.
"""

from .backbone import Backbone, BackboneConfig, BackboneInfo, load_backbone
from .grouping import Partition
from .model import PromptedCLIP, count_parameters
from .prompts import Combine, MmAPConfig, Projection, PromptBank

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneInfo",
    "Combine",
    "MmAPConfig",
    "Partition",
    "Projection",
    "PromptBank",
    "PromptedCLIP",
    "count_parameters",
    "load_backbone",
]
__version__ = "0.1.0"
