"""The model: vision tower -> visual-token compressor -> projector -> Hugging Face causal LM."""

from lit_vlm.model.compressors import COMPRESSORS, Compressor, build_compressor, valid_visual_tokens
from lit_vlm.model.vision import VisionConfig, VisionTower
from lit_vlm.model.vlm import VLM, LLMConfig

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "LLMConfig",
    "VLM",
    "VisionConfig",
    "VisionTower",
    "build_compressor",
    "valid_visual_tokens",
]
