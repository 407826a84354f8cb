"""Stage 0: pretrain the shared vision tower with dense per-patch labels from the synthetic generator.

The paper starts from a pretrained CLIP tower. Offline we cannot download one, and training a tower end to
end through a from-scratch LLM on VQA answers is slow: the whole model sits at the answer prior for
thousands of steps. The synthetic generator knows where every object and character is, so it can label
every patch (see ``lit_vlm.data.synthetic.draw_with_patch_labels``): a dense, fast objective that gives the
tower what a pretrained encoder would bring, features from which objects and characters can be read.

    DenseTowerModule: VisionTower + one linear head per label map, cross-entropy on every patch.
    train_dense_tower(): builds the labelled training images, fits with a Lightning Trainer, reports
                         per-patch accuracy on held-out images, returns the tower's state dict.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_vlm.data import synthetic
from lit_vlm.data.processor import image_to_tensor
from lit_vlm.model.vision import VisionConfig, VisionTower

log = logging.getLogger("lit_vlm.grid")
TARGETS = (*synthetic.DENSE_TARGETS, "row", "column")


class DenseTowerModule(L.LightningModule):
    """A trainable VisionTower with a linear classifier per target on its last feature level."""

    def __init__(self, vision: VisionConfig, num_classes: dict[str, int], lr: float = 3e-3, max_steps: int = 1000):
        super().__init__()
        self.tower = VisionTower(replace(vision, frozen=False))
        self.heads = nn.ModuleDict({k: nn.Linear(self.tower.hidden_size, n) for k, n in num_classes.items()})
        self.lr, self.max_steps = lr, max_steps

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.tower(pixels)[:, -1]  # [B, P, D]: the main level
        return {k: head(feats) for k, head in self.heads.items()}

    def _loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, *labels = batch
        logits = self(pixels)
        # Most patches are empty: weight the "none" class down so the rare labelled patches drive learning.
        losses = {}
        for (name, out), y in zip(logits.items(), labels):
            weight = torch.ones(out.shape[-1], device=out.device)
            if name in synthetic.DENSE_TARGETS:
                weight[0] = 0.1
            losses[name] = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), weight=weight)
        return sum(losses.values()), logits

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("stage0/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        warmup = max(1, self.max_steps // 20)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.max_steps - warmup))))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}


def labelled_images(split: str, n: int, *, tower: VisionTower, data: dict) -> TensorDataset:
    """``n`` synthetic images of ``split`` as normalised pixels, with their per-patch label maps."""
    opts = data.get("task_options") or {}
    pixels = torch.empty(n, 3, tower.image_size, tower.image_size)
    labels = {k: torch.empty(n, tower.num_patches, dtype=torch.long) for k in TARGETS}
    # Where each patch is: real encoders keep this in their features, and a pooled token that knows its
    # own place lets the LLM read text in order by content instead of by counting positions.
    side = tower.grid_side
    where = {"row": torch.arange(side).repeat_interleave(side), "column": torch.arange(side).repeat(side)}
    for i in range(n):
        image, maps = synthetic.draw_with_patch_labels(
            split, i, grid_side=tower.grid_side, seed=data.get("seed", 0), image_size=tower.image_size,
            families=tuple(data.get("families", synthetic.FAMILIES)), **opts,
        )
        pixels[i] = image_to_tensor(image, tower.image_size, tower.image_mean, tower.image_std)
        for k in TARGETS:
            labels[k][i] = torch.from_numpy(maps[k]) if k in maps else where[k]
    return TensorDataset(pixels, *(labels[k] for k in TARGETS))


@torch.no_grad()
def patch_accuracy(module: DenseTowerModule, data: TensorDataset) -> dict[str, float]:
    """Accuracy on the labelled (non-"none") patches of each target: how readable the features are."""
    module.eval()
    pixels, *labels = data.tensors
    logits = module(pixels)
    out = {}
    for (name, lg), y in zip(logits.items(), labels):
        mask = y > 0 if name in synthetic.DENSE_TARGETS else torch.ones_like(y, dtype=torch.bool)
        out[name] = float((lg.argmax(-1)[mask] == y[mask]).float().mean()) if mask.any() else float("nan")
    return out


def train_dense_tower(
    vision: VisionConfig, data: dict, *, max_steps: int, lr: float, batch_size: int = 64, seed: int = 0,
    trainer_args: dict | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train a tower on dense patch labels; returns (its state dict, held-out per-patch accuracy)."""
    L.seed_everything(seed, verbose=False)
    side = vision.image_size // vision.patch_size
    num_classes = {**synthetic.dense_label_sizes(**(data.get("task_options") or {})), "row": side, "column": side}
    module = DenseTowerModule(vision, num_classes, lr=lr, max_steps=max_steps)
    train = labelled_images("train", int(data.get("num_train", 4000)), tower=module.tower, data=data)
    held_out = labelled_images("validation", min(500, max(64, int(data.get("num_val", 500)))), tower=module.tower, data=data)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_model_summary=False, **(trainer_args or {}))
    trainer.fit(module, loader)
    acc = patch_accuracy(module, held_out)
    module.tower.fit_feature_stats(train.tensors[0][i : i + 256] for i in range(0, len(train), 256))
    state = {k: v.detach().cpu().contiguous() for k, v in module.tower.state_dict().items()}
    return state, acc
