"""The vision encoder: a Hugging Face ViT-family model that turns an image into a grid of patch features.

Three families are supported because they differ in one way that matters here: CLIP and ViT prepend a CLS
token to the patch sequence, SigLIP does not. We drop prefix tokens by *knowing* how many there are, and check
the sequence length, so a model we do not understand fails loudly instead of being silently sliced.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from lit_vlm.errors import UserError

# model_type -> (config class name, model class name, CLS/prefix tokens, default image mean, default image std)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)
_TOWERS = {
    "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", 0, _HALF, _HALF),
    "clip_vision_model": ("CLIPVisionConfig", "CLIPVisionModel", 1, _CLIP_MEAN, _CLIP_STD),
    "vit": ("ViTConfig", "ViTModel", 1, _HALF, _HALF),
}
# Full dual-encoder checkpoints (e.g. openai/clip-vit-large-patch14-336) load their vision half.
_CHECKPOINT_TYPES = {"siglip": "siglip_vision_model", "clip": "clip_vision_model", **{k: k for k in _TOWERS}}


@dataclass
class VisionConfig:
    """The vision encoder. Built offline from these sizes (random weights), or loaded from `pretrained`."""

    model_type: str = "siglip_vision_model"
    """Encoder family: siglip_vision_model, clip_vision_model or vit (ignored when `pretrained` is set)."""
    pretrained: str | None = None
    """Hub id or local path loaded with from_pretrained; when set, the size fields come from its config."""
    image_size: int = 64
    """Input resolution in pixels (square images)."""
    patch_size: int = 8
    """Patch side in pixels; the patch grid is image_size / patch_size on a side."""
    hidden_size: int = 64
    """Width D of the patch features."""
    num_layers: int = 2
    """Number of transformer layers."""
    num_heads: int = 4
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 128
    """Width of each layer's feed-forward."""
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    """Indices into the HF hidden_states (0 = embeddings, negative from the end); the last is the main level."""
    weights: str | None = None
    """A safetensors file with this tower's weights, e.g. the stage-0 tower a grid saved
    (results/cpu_mini/tower.safetensors); the sizes above must be the ones it was trained with."""
    frozen: bool = True
    """Keep the encoder frozen (no gradients, eval mode), as in the paper."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the checkpoint (only with `pretrained`)."""

    def validate(self) -> None:
        """Raise UserError for a configuration that cannot be built (sizes are checked only without `pretrained`)."""
        if self.pretrained is None:
            if self.model_type not in _TOWERS:
                raise UserError(
                    f"vision.model_type={self.model_type!r} is not supported; allowed: {', '.join(_TOWERS)}"
                )
            for name in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
                if getattr(self, name) < 1:
                    raise UserError(f"vision.{name}={getattr(self, name)} must be a positive integer")
            if self.hidden_size % self.num_heads:
                raise UserError(
                    f"vision.hidden_size={self.hidden_size} must be divisible by vision.num_heads={self.num_heads}"
                )
            if self.image_size % self.patch_size:
                raise UserError(
                    f"vision.image_size={self.image_size} must be divisible by vision.patch_size={self.patch_size}"
                )
            _check_layers(self.feature_layers, self.num_layers)
        elif not self.feature_layers:
            raise UserError("vision.feature_layers=[] must list at least one layer index")

    def build(self) -> VisionTower:
        return VisionTower(self)


def _check_layers(layers: list[int], num_layers: int) -> None:
    # hidden_states holds the embeddings plus one entry per layer: num_layers + 1 items.
    n = num_layers + 1
    if not layers:
        raise UserError("vision.feature_layers=[] must list at least one layer index")
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise UserError(
            f"vision.feature_layers={layers} has out-of-range index {bad[0]}; allowed: -{n}..{n - 1} "
            f"for a {num_layers}-layer encoder"
        )


def _read_preprocessor_stats(path: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """image_mean / image_std from the checkpoint's preprocessor_config.json, when it has one."""
    try:
        if os.path.isdir(path):
            file = os.path.join(path, "preprocessor_config.json")
            file = file if os.path.isfile(file) else None
        else:
            from transformers.utils import cached_file

            file = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        if file is None:
            return None
        with open(file) as f:
            cfg = json.load(f)
        return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    except (OSError, KeyError, ValueError):
        return None


def _load_image_processor(path: str, trust_remote_code: bool):
    """transformers' AutoImageProcessor of a pretrained tower, or None when the checkpoint has no usable one
    (no preprocessor_config.json, or one without an image processor type)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None


class VisionTower(nn.Module):
    """pixel_values [B, 3, H, W] -> patch features [B, n_levels, P, D], P = grid_side**2, prefix tokens removed."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        import transformers

        config.validate()
        self.config = config
        self.image_processor = None  # a tower built from sizes has none; the kit's VLMProcessor transform applies
        if config.pretrained is None:
            model_type = config.model_type
            cfg_cls, model_cls = (getattr(transformers, n) for n in _TOWERS[model_type][:2])
            hf_config = cfg_cls(
                image_size=config.image_size,
                patch_size=config.patch_size,
                hidden_size=config.hidden_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                intermediate_size=config.intermediate_size,
            )
            if model_type == "siglip_vision_model":
                hf_config.vision_use_head = False  # the pooling head is never used by a VLM
            extra = {"add_pooling_layer": False} if model_type == "vit" else {}
            self.model = model_cls(hf_config, **extra)
            mean, std = _TOWERS[model_type][3:]
        else:
            try:
                hf_config = transformers.AutoConfig.from_pretrained(
                    config.pretrained, trust_remote_code=config.trust_remote_code
                )
            except OSError as e:  # missing id/path, offline without a cached copy, no config.json
                reason = next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)
                raise UserError(f"vision.pretrained={config.pretrained!r} cannot be loaded: {reason[:300]}") from None
            model_type = _CHECKPOINT_TYPES.get(hf_config.model_type)
            if model_type is None:
                raise UserError(
                    f"vision.pretrained={config.pretrained!r} is a {hf_config.model_type!r} model; allowed: "
                    f"{', '.join(_CHECKPOINT_TYPES)}"
                )
            model_cls = getattr(transformers, _TOWERS[model_type][1])
            extra = {"add_pooling_layer": False} if model_type == "vit" else {}
            # dtype pinned to fp32: v5 defaults to the checkpoint dtype, which would not match our own layers.
            self.model = model_cls.from_pretrained(
                config.pretrained, dtype=torch.float32, trust_remote_code=config.trust_remote_code, **extra
            )
            # The checkpoint's own image pipeline (resize, crop, rescale, normalise), when it ships one.
            self.image_processor = _load_image_processor(config.pretrained, config.trust_remote_code)
            stats = _read_preprocessor_stats(config.pretrained)
            mean, std = stats if stats is not None else _TOWERS[model_type][3:]
        self.model_type = model_type
        self.image_mean, self.image_std = tuple(mean), tuple(std)

        hf = self.model.config
        image_size, patch_size = _as_int(hf.image_size), _as_int(hf.patch_size)
        if image_size % patch_size:
            raise UserError(f"vision.pretrained={config.pretrained!r} has image_size {image_size} "
                            f"not divisible by patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self._grid_side = image_size // patch_size
        _check_layers(list(config.feature_layers), hf.num_hidden_layers)
        self.feature_layers = list(config.feature_layers)

        # Per-channel standardisation of each feature level, with statistics frozen from training images
        # (fit_feature_stats; identity until then). Patch features share a large common component (the
        # background), so a pooled token varies little across images; standardised, what differs between
        # images is O(1) and the projector learns from it at once (measured: README, "Why standardise").
        self.register_buffer("feature_mean", torch.zeros(len(self.feature_layers), hf.hidden_size))
        self.register_buffer("feature_std", torch.ones(len(self.feature_layers), hf.hidden_size))
        self.unused_weights = _park_unused_parameters(self.model, self.feature_layers, self.image_size, extra)

        if config.weights is not None:
            self.load_weights(config.weights)
        self.frozen = config.frozen
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def load_weights(self, path: str) -> None:
        """Load a safetensors state dict saved from a tower of the same architecture (UserError otherwise)."""
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise UserError(f"vision.weights={path!r} does not exist; expected a safetensors file of tower weights")
        try:
            state = load_file(path)
        except Exception as e:  # noqa: BLE001 - any decode failure means "not a safetensors file"
            raise UserError(f"vision.weights={path!r} cannot be read as safetensors ({type(e).__name__})") from None
        ours = self.state_dict()
        bad = sorted(k for k in set(ours) | set(state) if k not in state or k not in ours or state[k].shape != ours[k].shape)
        if bad:
            raise UserError(f"vision.weights={path!r} does not fit this vision config (first mismatch: {bad[0]}); "
                            "set the sizes it was trained with")
        self.load_state_dict(state)

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def grid_side(self) -> int:
        return self._grid_side

    @property
    def num_patches(self) -> int:
        return self._grid_side**2

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_levels(self) -> int:
        return len(self.feature_layers)

    @property
    def num_prefix_tokens(self) -> int:
        return _TOWERS[self.model_type][2]

    # --- behaviour ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> VisionTower:
        # Lightning calls .train() on the whole model every epoch; a frozen encoder must stay in eval mode.
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Full-size images give the full grid; a smaller square image whose side is a multiple of the patch
        (the `downsample` compressor's) gives a smaller grid, its position embeddings interpolated by HF."""
        h, w = pixel_values.shape[-2:]
        if h != w or h % self.patch_size or not 0 < h <= self.image_size:
            raise ValueError(
                f"pixel_values are {(h, w)} px; this {self.model_type} expects {self.image_size}x{self.image_size}, "
                f"or a smaller square image whose side is a multiple of the patch size {self.patch_size}"
            )
        side = h // self.patch_size
        resized = {"interpolate_pos_encoding": True} if h != self.image_size else {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(pixel_values=pixel_values, output_hidden_states=True, **resized)
        levels = torch.stack([out.hidden_states[i] for i in self.feature_layers], dim=1)  # [B, n, T, D]
        expected = self.num_prefix_tokens + side * side
        if levels.shape[2] != expected:
            raise RuntimeError(
                f"{self.model_type} returned {levels.shape[2]} tokens; expected {self.num_prefix_tokens} prefix + "
                f"{side}x{side} patches = {expected}"
            )
        levels = levels[:, :, self.num_prefix_tokens :]
        return (levels - self.feature_mean[:, None]) / self.feature_std[:, None]

    @torch.no_grad()
    def fit_feature_stats(self, pixel_batches) -> None:
        """Set the per-channel mean and std of every level from an iterable of pixel batches [B, 3, H, W]."""
        self.feature_mean.zero_()
        self.feature_std.fill_(1.0)
        total, sums, squares = 0, 0.0, 0.0
        for pixels in pixel_batches:
            feats = self(pixels).double()  # [B, n, P, D]
            total += feats.shape[0] * feats.shape[2]
            sums = sums + feats.sum((0, 2))
            squares = squares + feats.pow(2).sum((0, 2))
        mean = sums / total
        self.feature_mean.copy_(mean)
        self.feature_std.copy_((squares / total - mean.pow(2)).clamp_min(1e-12).sqrt())


def _park_unused_parameters(model: nn.Module, feature_layers: list[int], image_size: int, extra: dict) -> list[str]:
    """Turn the weights that cannot reach the chosen feature levels into buffers; returns their names.

    The tower reads hidden states, so the final norm (post_layernorm / layernorm), a pooling head and every
    layer above the highest chosen level never get a gradient. As parameters they would be "trained" by
    nothing, and DDP stops on them ("parameters that were not used in producing the loss"). As buffers they
    keep their names in the state dict, so checkpoints and pretrained weights load unchanged. Which weights
    these are is found by autograd on a copy of the model on the meta device (no memory, no arithmetic),
    so it holds for any family and any feature_layers.
    """
    try:
        with torch.device("meta"):
            probe = type(model)(model.config, **extra)
            out = probe(pixel_values=torch.zeros(1, 3, image_size, image_size), output_hidden_states=True)
            levels = sum(out.hidden_states[i].sum() for i in feature_layers)
        names, params = zip(*probe.named_parameters())
        grads = torch.autograd.grad(levels, params, allow_unused=True)
    except (NotImplementedError, RuntimeError, TypeError) as err:  # a custom model that does not run on meta
        warnings.warn(f"cannot tell which vision weights are unused ({type(err).__name__}); all stay parameters",
                      stacklevel=2)
        return []
    unused = [n for n, g in zip(names, grads) if g is None]
    for name in unused:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        value = getattr(owner, attr).detach()
        delattr(owner, attr)
        owner.register_buffer(attr, value)
    return unused


def _as_int(x) -> int:
    # HF configs allow image_size / patch_size as an int or an (h, w) pair; we need square grids.
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise UserError(f"vision image_size/patch_size={list(x)} is not square; only square grids are supported")
        return int(x[0])
    return int(x)
