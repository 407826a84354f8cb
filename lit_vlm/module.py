"""The LightningModule: one small LLaVA, its training stages, optimiser groups and per-family metrics.

Stages follow LLaVA-1.5 (docs/paper.md): ``align`` trains only the compressor and projector (LLM and vision
frozen); ``instruct`` trains the LLM too. The vision tower trains only when ``vision.frozen`` is false (the
offline kit has no pretrained tower, so the quickstart and the grid's stage 0 train one from scratch).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from lit_vlm.constants import FAMILIES
from lit_vlm.data.processor import VLMProcessor
from lit_vlm.data.tokenizer import load_tokenizer
from lit_vlm.errors import UserError
from lit_vlm.flops import inference_flops
from lit_vlm.metrics import ANLS, CharErrorRate, ExactMatch, MultipleChoiceAccuracy, TokenMeanLoss, VQAAccuracy
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import VLM, LLMConfig

__all__ = ["FAMILIES", "CompressorOptions", "LitVLM", "OptimizerConfig", "restoring_weights", "warmup_cosine_schedule"]

# True while a checkpoint's weights are about to be loaded into the module being built: the tower's
# vision.weights file is then not read (the checkpoint holds those weights), so a checkpoint loads from any
# working directory even though its hparams keep the (relative) path the tower came from.
_RESTORING = ContextVar("lit_vlm_restoring_weights", default=False)


@contextmanager
def restoring_weights():
    """Build LitVLMs inside this block without reading ``vision.weights``: a checkpoint supplies them."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


@dataclass
class OptimizerConfig:
    """AdamW with one learning rate per parameter group, linear warmup then cosine decay (per step)."""

    lr: float = 1e-3
    """Peak learning rate of the compressor and projector."""
    llm_lr: float | None = None
    """Peak learning rate of the LLM in the instruct stage (None: same as lr)."""
    vision_lr: float | None = None
    """Peak learning rate of the vision tower when it is not frozen (None: same as lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay (all trainable parameters)."""
    warmup_ratio: float = 0.03
    """Fraction of the total steps spent in linear warmup (LLaVA uses 3%)."""
    min_lr_ratio: float = 0.0
    """The cosine decays to this fraction of each peak learning rate."""
    fused: bool = False
    """torch's fused AdamW kernel: fewer kernel launches per step (small models step faster), but its updates
    differ from the default AdamW in the last bits, so a run is not bitwise the one without it."""

    def validate(self) -> None:
        """UserError for a rate or ratio no schedule can use (a negative rate would train uphill)."""
        for name in ("lr", "llm_lr", "vision_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"model.optimizer.{name}={value} must be a positive learning rate")
        if self.weight_decay < 0:
            raise UserError(f"model.optimizer.weight_decay={self.weight_decay} must be >= 0")
        for name in ("warmup_ratio", "min_lr_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise UserError(f"model.optimizer.{name}={value} must lie in [0, 1]")


def warmup_cosine_schedule(optimizer, total_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0):
    """Linear warmup over ``warmup_ratio`` of the steps, then a cosine to ``min_lr_ratio`` of each group's peak.

    transformers' own schedule (the one LLaVA's training scripts use through the HF Trainer), stepped per
    optimiser step. The LR schedule of LitVLM and stage 0 (stage 1, lit_vlm/llm_pretrain.py, keeps its own, one
    step earlier).
    """
    total = max(1, int(total_steps))
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(warmup_ratio * total), num_training_steps=total, min_lr_rate=min_lr_ratio
    )


@dataclass
class CompressorOptions:
    """Extra options of the chosen compressor; unset (None) options keep the compressor's defaults."""

    depth: int | None = None
    """Layers of the perceiver's cross-attention stack."""
    num_heads: int | None = None
    """Attention heads of perceiver, tokenpacker and quecc."""
    out_dim: int | None = None
    """Width of the compressor's output tokens (compressors with parameters)."""


def _compressor_options(value) -> dict | None:
    """Only the options that are set, as a plain dict (a dict from Python or a checkpoint passes unchanged:
    build_compressor names any option the chosen compressor does not take)."""
    if value is None or isinstance(value, dict):
        return value
    return {k: v for k, v in asdict(value).items() if v is not None} or None


def _config(cls, value):
    """Accept a dataclass, a dict (from YAML or a checkpoint's hparams) or None (defaults)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


def _family_metrics(family: str) -> MetricCollection:
    """Every metric a row of this family may be scored with; only those that saw a row are logged."""
    metrics = {"accuracy": ExactMatch(), "vqa_accuracy": VQAAccuracy(), "mc_accuracy": MultipleChoiceAccuracy()}
    if family == "ocr":
        metrics |= {"anls": ANLS(), "cer": CharErrorRate()}
    # compute_groups=False: ExactMatch and ANLS have identically named states, and torchmetrics would merge
    # them into one group whenever their values coincide on the first batch (e.g. both 0 early in training).
    return MetricCollection(metrics, compute_groups=False)


def _tensor_or_text(value) -> bool:
    """A tensor, a string, or a list of strings or of lists of strings (a batch value our collate makes)."""
    if isinstance(value, (torch.Tensor, str)):
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)) for v in value)


def check_projector_hidden(value) -> None:
    """UserError unless ``value`` is None (the LLM's width) or a width >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"model.projector_hidden={value!r} is not allowed; give a width >= 1, or null for the LLM's width")


class LitVLM(L.LightningModule):
    """A LLaVA-style VLM: vision tower -> compressor (V visual tokens) -> projector -> causal LM.

    Args:
        vision: The vision tower (built from a config offline, or from_pretrained).
        llm: The causal language model (built from a config offline, or from_pretrained).
        compressor: Visual-token compressor: identity, avgpool, pixelshuffle, perceiver, tokenpacker, quecc.
        visual_tokens: V, the number of visual tokens the LLM reads per image (the paper's knob).
        compressor_options: Extra keyword options of the chosen compressor (e.g. depth, num_heads).
        projector_hidden: Hidden width of the 2-layer projector (None: the LLM's width, as in LLaVA). A grid
            can give every LLM the same width, so that only the projector's last layer changes with N (README,
            round 19, tried 384 on the CPU grid: it did not change what V = 16 costs the LLM).
        tokenizer: "synthetic" (built offline for the synthetic benchmark) or a tokenizer id/path.
        stage: "align" trains compressor + projector; "instruct" trains the LLM as well.
        optimizer: Learning rates, warmup and decay.
        max_new_tokens: Greedy decoding length when evaluating.
        fast_answer_loss: Train with the LLM's last layer run only at the answer positions, the only ones the
            loss reads (lit_vlm/model/answer_loss.py; Llama-style LLMs, others keep the full forward). The same
            loss up to float rounding, so not the same run bitwise; faster the longer the visual prefix
            (bench/bench_answer_loss.py). The evaluation loss too; generation always runs the full model.
    """

    def __init__(
        self,
        vision: VisionConfig | None = None,
        llm: LLMConfig | None = None,
        compressor: str = "avgpool",
        visual_tokens: int = 16,
        compressor_options: CompressorOptions | None = None,
        projector_hidden: int | None = None,
        tokenizer: str = "synthetic",
        stage: Literal["align", "instruct"] = "instruct",
        optimizer: OptimizerConfig | None = None,
        max_new_tokens: int = 8,
        fast_answer_loss: bool = False,
    ):
        super().__init__()
        vision, llm, optimizer = _config(VisionConfig, vision), _config(LLMConfig, llm), _config(OptimizerConfig, optimizer)
        optimizer.validate()
        compressor_options = _compressor_options(compressor_options)
        check_projector_hidden(projector_hidden)
        # Plain dicts, so a checkpoint's hparams load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "vision": asdict(vision),
                "llm": asdict(llm),
                "compressor": compressor,
                "visual_tokens": visual_tokens,
                "compressor_options": compressor_options,
                "projector_hidden": projector_hidden,
                "tokenizer": tokenizer,
                "stage": stage,
                "optimizer": asdict(optimizer),
                "max_new_tokens": max_new_tokens,
                "fast_answer_loss": fast_answer_loss,
            }
        )
        self.optim = optimizer
        self._legacy = False
        # True: train/loss is logged every step (a callback that monitors it needs that). A grid cell sets it
        # False: the loss is then logged only on the steps its logger writes (trainer.log_every_n_steps). With
        # transfer_batch_to_device below, the smallest cells' step is ~1.2x faster (bench/results/step_overhead*).
        self.log_loss_every_step = True
        self.stage = stage
        self.max_new_tokens = max_new_tokens
        self.fast_answer_loss = fast_answer_loss
        # The module owns the tokenizer and the processor: built once here, handed to the data (VLMDataModule's
        # processor=, linked by the CLI), never rebuilt elsewhere.
        tok = load_tokenizer(tokenizer, trust_remote_code=llm.trust_remote_code)
        tower_config = replace(vision, weights=None) if _RESTORING.get() else vision
        self.vlm = VLM(tower_config, llm, compressor, visual_tokens, tok, compressor_options, projector_hidden)
        tower = self.vlm.vision_tower
        self.processor = VLMProcessor(
            tok, image_size=tower.image_size, image_mean=tower.image_mean, image_std=tower.image_std,
            image_processor=tower.image_processor,
        )
        self._apply_stage()
        self.val_metrics = nn.ModuleDict({f: _family_metrics(f) for f in FAMILIES})
        self.test_metrics = nn.ModuleDict({f: _family_metrics(f) for f in FAMILIES})
        # Per-token loss over the whole split, overall and per family ("all" is not a family name).
        self.val_loss = nn.ModuleDict({k: TokenMeanLoss() for k in ("all", *FAMILIES)})
        self.test_loss = nn.ModuleDict({k: TokenMeanLoss() for k in ("all", *FAMILIES)})
        self.text_tokens = MeanMetric()

    @classmethod
    def load_from_checkpoint(cls, *args, **kwargs):
        """Lightning's loader; the tower's weights come from the checkpoint, not from ``vision.weights``."""
        with restoring_weights():
            return super().load_from_checkpoint(*args, **kwargs)

    # --- stages and optimisation -------------------------------------------------------------------------
    def _trainable(self) -> dict[str, bool]:
        return {"vision": not self.vlm.vision_config.frozen, "compressor": True, "llm": self.stage == "instruct"}

    def _apply_stage(self) -> None:
        groups = self.vlm.param_groups()
        for name, train in self._trainable().items():
            for p in groups[name]:
                p.requires_grad_(train)

    def configure_optimizers(self):
        lrs = {"vision": self.optim.vision_lr, "compressor": self.optim.lr, "llm": self.optim.llm_lr}
        groups = [
            {"params": [p for p in params if p.requires_grad], "lr": lrs[name] or self.optim.lr, "name": name}
            for name, params in self.vlm.param_groups().items()
            if self._trainable()[name]
        ]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, weight_decay=self.optim.weight_decay, **self._adamw_kernel())
        sched = warmup_cosine_schedule(
            opt, self.trainer.estimated_stepping_batches, self.optim.warmup_ratio, self.optim.min_lr_ratio
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _adamw_kernel(self) -> dict:
        """foreach unless fused is asked for: on CPU torch defaults to a Python loop over the tensors, which
        costs a small model more than its arithmetic; foreach's updates are bitwise the loop's."""
        if self.optim.fused:
            return {"fused": True}
        return {} if self._legacy else {"foreach": True}

    def legacy_step(self) -> None:
        """The training step as it was before the overhead cuts (for bench/bench_step_overhead.py): AdamW's
        per-tensor loop, a collate that renders and tokenises every row every time, and Lightning's own batch
        transfer."""
        self._legacy = True
        self.processor.memo_size = 0

    # --- steps ---------------------------------------------------------------------------------------------
    def forward(self, batch: dict):
        return self.vlm(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.vlm.loss(batch, fast=self.fast_answer_loss)
        if self.log_loss_every_step or self._logger_writes_this_step():
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["answers"]))
        return loss

    def _logger_writes_this_step(self) -> bool:
        """Lightning's rule: the logger writes after each step whose count is a multiple of log_every_n_steps."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move the batch's tensors; its lists of text (answers, questions, families, ...) stay as they are.
        Lightning's default walks every string of every list, a cost a small grid cell pays every step; a batch
        that is not our dict, or holds anything but tensors and text, gets the default."""
        if not isinstance(batch, dict) or self._legacy or not all(map(_tensor_or_text, batch.values())):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {k: move_data_to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def generate_answers(self, batch: dict) -> list[str]:
        """Greedy answers (KV cache), decoded without special tokens."""
        ids = self.vlm.generate(batch, max_new_tokens=self.max_new_tokens)
        return self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _eval_step(self, batch: dict, split: str, metrics: nn.ModuleDict, losses: nn.ModuleDict) -> None:
        loss_sum, tokens = self.vlm.token_losses(batch, fast=self.fast_answer_loss)
        losses["all"].update(loss_sum, tokens)
        for family in FAMILIES:
            rows = [i for i, f in enumerate(batch["families"]) if f == family]
            if rows:
                losses[family].update(loss_sum[rows], tokens[rows])
        preds = self.generate_answers(batch)
        for family in FAMILIES:
            for name, rows in self._rows_by_metric(batch, family).items():
                targets = batch.get("answer_lists", batch["answers"])
                p, t = [preds[i] for i in rows], [targets[i] for i in rows]
                metrics[family][name].update(p, t)
                if name == "accuracy" and family == "ocr":  # the synthetic OCR family: also ANLS and CER
                    metrics[family]["anls"].update(p, t)
                    metrics[family]["cer"].update(p, [batch["answers"][i] for i in rows])
        self.text_tokens.update((batch["prompt_mask"].sum(1) - 1).float())

    @staticmethod
    def _rows_by_metric(batch: dict, family: str) -> dict[str, list[int]]:
        """Synthetic rows are scored by exact match; hub rows by their dataset's metric (VQA, ANLS, letter)."""
        names = {"exact": "accuracy", "vqa": "vqa_accuracy", "anls": "anls", "multiple_choice": "mc_accuracy", None: "accuracy"}
        routed: dict[str, list[int]] = {}
        for i, f in enumerate(batch["families"]):
            if f == family:
                routed.setdefault(names[batch.get("metrics", [None] * (i + 1))[i]], []).append(i)
        return routed

    def _seen_anywhere(self, metrics: list) -> list[bool]:
        """Whether each metric saw a row on any rank. A metric syncs its state inside compute(), a collective
        every rank must join: under DDP a rank whose share of the split has no OCR row must still compute
        the OCR metrics, or the ranks' collectives no longer match (gloo: "Received data size doesn't match")."""
        counts = torch.tensor([m.update_count for m in metrics], dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        return [bool(c) for c in counts.tolist()]

    def _eval_epoch_end(self, split: str, metrics: nn.ModuleDict, losses: nn.ModuleDict) -> None:
        named = [(f"{split}/loss" if key == "all" else f"{split}/loss_{key}", m) for key, m in losses.items()]
        named += [(f"{split}/{family}/{name}", m) for family in FAMILIES for name, m in metrics[family].items()]
        named.append(("text_tokens", self.text_tokens))
        seen = self._seen_anywhere([m for _, m in named])
        with warnings.catch_warnings():  # a rank that saw none of a family's rows computes it all the same
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            values = {name: m.compute() for (name, m), s in zip(named, seen) if s}  # same order on every rank
        for name, m in named:
            m.reset()
        q = float(values.pop("text_tokens", 0.0))
        values |= {f"cost/{name}": float(value) for name, value in self.cost(q).items()}
        for name, value in values.items():  # a family or metric that saw no row on any rank logs nothing
            # Equal on every rank already (compute() synced the states); max over ranks keeps them exactly,
            # where Lightning's default sync (a mean) could move them by an ulp, and says they are synced.
            self.log(name, value, prog_bar=name == "val/loss" or name.endswith("/accuracy"),
                     sync_dist=True, reduce_fx="max")

    def cost(self, text_tokens: float) -> dict[str, float]:
        """N (with and without embeddings), V, Q and the analytic inference FLOPs 2 N (Q + V) per example."""
        n = self.vlm.num_llm_params(with_embeddings=False)
        return {
            "llm_params": n,
            "llm_params_with_embeddings": self.vlm.num_llm_params(with_embeddings=True),
            "visual_tokens": self.vlm.visual_tokens,
            "text_tokens": text_tokens,
            "inference_flops": inference_flops(n, text_tokens, self.vlm.visual_tokens),
        }

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics, self.val_loss)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics, self.test_loss)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        preds = self.generate_answers(batch)
        keys = ("questions", "answers", "families", "tasks")
        return [
            {"question": q, "answer": a, "family": f, "task": t, "prediction": p}
            for q, a, f, t, p in zip(*(batch[k] for k in keys), preds)
        ]
