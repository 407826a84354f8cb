"""Stage 0: the shared vision tower, trained once and frozen for every grid cell, with either objective.

The paper starts from a pretrained CLIP tower. Offline we cannot download one, and training a tower end to
end through a from-scratch LLM on VQA answers is slow: the whole model sits at the answer prior for
thousands of steps. The synthetic generator knows where every object and character is, so it can label
every patch (see ``lit_vlm.data.synthetic.draw_with_patch_labels``): a dense, fast objective that gives the
tower what a pretrained encoder would bring, features from which objects and characters can be read.

    TowerConfig: what stage 0 trains (objective, steps, rate) and where its weights live.
    DenseTowerModule: VisionTower + one linear head per label map, cross-entropy on every patch.
    train_dense_tower(): objective "dense": builds the labelled training images, fits with a Lightning
                         Trainer, reports per-patch accuracy on held-out images, returns the tower's state.
    train_vqa_tower(): objective "vqa": tower + identity compressor + LLM trained end to end on the answers
                       (any data; the LLM is discarded).
    load_or_train(): the tower's safetensors file if it exists (checked against the vision config), else
                     trained with the chosen objective and saved atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_vlm.data import synthetic
from lit_vlm.data.processor import image_to_tensor
from lit_vlm.errors import UserError
from lit_vlm.model.vision import VisionConfig, VisionTower
from lit_vlm.model.vlm import LLMConfig

log = logging.getLogger("lit_vlm.grid")
TARGETS = (*synthetic.DENSE_TARGETS, "row", "column")
OBJECTIVES = ("dense", "vqa")


@dataclass
class TowerConfig:
    """Stage 0: the shared vision tower, trained once end to end, then frozen for every cell."""

    checkpoint: str = "runs/towers/tower.safetensors"
    """Where the tower's weights live (safetensors). Trained and saved here when missing."""
    train_if_missing: bool = True
    """Train the tower when the checkpoint is missing (False: a missing checkpoint is an error)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """objective=vqa only: the LLM trained with the tower (its weights are discarded)."""
    objective: str = "dense"
    """dense: classify every patch's object and character (labels from the synthetic generator; fast, see
    lit_vlm/tower.py). vqa: train tower + identity compressor + LLM end to end on the answers (any data)."""
    max_steps: int = 400
    """Training steps of stage 0."""
    lr: float = 2e-3
    """Peak learning rate of stage 0."""
    batch_size: int = 64
    """objective=dense only: images per step."""
    num_images: int | None = None
    """objective=dense only: training images (None: data.num_train). The labelled images are held in memory
    as float pixels (48 KiB each at 64 px), so a grid with a large num_train caps stage 0 here."""


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
        from lit_vlm.module import warmup_cosine_schedule  # the kit's one LR schedule

        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        scheduler = warmup_cosine_schedule(opt, self.max_steps, warmup_ratio=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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
    trainer_args: dict | None = None, num_images: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train a tower on dense patch labels; returns (its state dict, held-out per-patch accuracy)."""
    L.seed_everything(seed, verbose=False)
    side = vision.image_size // vision.patch_size
    num_classes = {**synthetic.dense_label_sizes(**(data.get("task_options") or {})), "row": side, "column": side}
    module = DenseTowerModule(vision, num_classes, lr=lr, max_steps=max_steps)
    n = int(num_images or data.get("num_train", 4000))
    train = labelled_images("train", n, tower=module.tower, data=data)
    held_out = labelled_images("validation", min(500, max(64, int(data.get("num_val", 500)))), tower=module.tower, data=data)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_model_summary=False, **(trainer_args or {}))
    trainer.fit(module, loader)
    acc = patch_accuracy(module, held_out)
    module.tower.fit_feature_stats(train.tensors[0][i : i + 256] for i in range(0, len(train), 256))
    state = {k: v.detach().cpu().contiguous() for k, v in module.tower.state_dict().items()}
    return state, acc


def train_vqa_tower(
    vision: VisionConfig, llm: LLMConfig, data: dict, *, max_steps: int, lr: float, seed: int = 0,
    model_args: dict | None = None, trainer_args: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Train tower + identity compressor + ``llm`` end to end on the answers of ``data`` (any source); returns
    the tower's state dict, its features standardised on training images. The LLM is discarded."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM, OptimizerConfig

    L.seed_everything(seed, verbose=False)
    side = vision.image_size // vision.patch_size  # stage 0 trains only towers built from a config
    module = LitVLM(vision=replace(vision, frozen=False), llm=llm, compressor="identity", visual_tokens=side * side,
                    stage="instruct", optimizer=OptimizerConfig(lr=lr), **(model_args or {}))
    dm = VLMDataModule(**data, processor=module.processor)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        **(trainer_args or {}))
    trainer.fit(module, dm)
    tower = module.vlm.vision_tower.eval()
    dm.setup("fit")
    tower.fit_feature_stats(batch["pixel_values"] for _, batch in zip(range(20), dm.train_dataloader()))
    return {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}


# --- the tower's checkpoint --------------------------------------------------------------------------------
def _arch(vision: VisionConfig) -> str:
    """The architecture a checkpoint was trained for (saved in its metadata, compared on load)."""
    return json.dumps({k: v for k, v in asdict(vision).items() if k not in ("frozen", "weights")}, sort_keys=True)


def _benchmark(data: dict | None) -> str | None:
    """The synthetic benchmark a dense tower learned the labels of (None: other data, or not known)."""
    if not data or data.get("source", "synthetic") != "synthetic":
        return None
    opts = synthetic.resolve_options(**(data.get("task_options") or {}))
    return json.dumps({"seed": data.get("seed", 0), **{k: v for k, v in opts.items()}}, sort_keys=True, default=list)


def read_tower(path: Path, vision: VisionConfig, data: dict | None = None) -> dict[str, torch.Tensor]:
    """The state dict saved at ``path``, refused in one line if it is unreadable, fits another tower, or was
    trained on another synthetic benchmark than ``data``'s (a checkpoint that does not say is accepted)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        saved_arch = meta.get("vision_config")
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any decode failure means "not a tower checkpoint"
        raise UserError(f"tower checkpoint {path} cannot be read as safetensors ({err})") from None
    if saved_arch != _arch(vision):
        raise UserError(
            f"tower checkpoint {path} was trained for another vision config; delete it to retrain, or set "
            f"vision to the one it was saved with: {saved_arch}"
        )
    saved_data, wanted = meta.get("benchmark"), _benchmark(data)
    if saved_data and wanted and saved_data != wanted:
        raise UserError(f"tower checkpoint {path} was trained on another synthetic benchmark (data.task_options or "
                        "data.seed differ); delete it to retrain, or give tower.checkpoint its own path")
    missing = sorted(set(VisionTower(replace(vision, frozen=True)).state_dict()) - set(state))
    if missing:
        raise UserError(f"tower checkpoint {path} lacks {missing[0]} (saved by an older lit_vlm); delete it to retrain")
    return state


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def save_tower(
    path: Path, state: dict[str, torch.Tensor], vision: VisionConfig, data: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Write atomically (temporary file, rename): a killed run never leaves half a checkpoint. Returns the
    state every rank goes on with: under DDP (stage 0 trains on every rank) only rank 0 writes, the others
    wait for it at a barrier and read what it wrote, so all ranks share one file and one tower."""
    distributed = _distributed()
    if not distributed or torch.distributed.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {"vision_config": _arch(vision)}
        if _benchmark(data):
            meta["benchmark"] = _benchmark(data)
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)
    if not distributed:
        return state
    torch.distributed.barrier()
    return state if torch.distributed.get_rank() == 0 else read_tower(path, vision, data)


def train_tower(
    tower: TowerConfig, vision: VisionConfig, data: dict, *, seed: int = 0, model_args: dict | None = None,
    trainer_args: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Stage 0 with ``tower.objective``; trainer_args are the cells' Trainer arguments (hardware, precision)."""
    trainer_args = trainer_args or {}
    log.info("stage 0 (%s objective): training the shared vision tower -> %s", tower.objective, tower.checkpoint)
    start = time.perf_counter()
    if tower.objective == "dense":
        hardware = {k: v for k, v in trainer_args.items() if k in ("accelerator", "devices", "precision", "deterministic")}
        state, acc = train_dense_tower(vision, data, max_steps=tower.max_steps, lr=tower.lr,
                                       batch_size=tower.batch_size, seed=seed, trainer_args=hardware,
                                       num_images=tower.num_images)
        log.info("stage 0 done in %.1fs; held-out per-patch accuracy: %s", time.perf_counter() - start,
                 ", ".join(f"{k} n/a (no such patches)" if math.isnan(v) else f"{k} {v:.3f}" for k, v in acc.items()))
        return state
    if tower.objective != "vqa":
        raise UserError(f"tower.objective={tower.objective!r} is not allowed; use one of {', '.join(OBJECTIVES)}")
    keep = {k: v for k, v in trainer_args.items() if k not in ("max_steps", "max_epochs", "callbacks")}
    state = train_vqa_tower(vision, tower.llm, data, max_steps=tower.max_steps, lr=tower.lr, seed=seed,
                            model_args=model_args, trainer_args=keep)
    log.info("stage 0 done in %.1fs", time.perf_counter() - start)
    return state


def load_or_train(
    tower: TowerConfig, vision: VisionConfig, data: dict, *, seed: int = 0, model_args: dict | None = None,
    trainer_args: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The shared tower's state dict: pretrained (no stage 0), read from tower.checkpoint, or trained and saved."""
    if vision.pretrained:  # a pretrained tower (CLIP, SigLIP) is already trained
        return VisionTower(replace(vision, frozen=True)).state_dict()
    path = Path(tower.checkpoint)
    if path.exists():
        return read_tower(path, vision, data)
    if not tower.train_if_missing:
        raise UserError(f"tower checkpoint {path} does not exist and tower.train_if_missing is false")
    state = train_tower(tower, vision, data, seed=seed, model_args=model_args, trainer_args=trainer_args)
    return save_tower(path, state, vision, data)
