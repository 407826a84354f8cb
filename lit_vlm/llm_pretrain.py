"""Stage 1 (optional): each LLM size learns what it knows from text alone, before it ever sees an image.

The paper's LLMs come pretrained: what a 0.5B or a 7B model knows comes mostly from text it read before the VLM
was trained, whatever the number of visual tokens V. Grid cells that train an LLM from scratch on image questions mix
the two: where the image can supply an answer in training, the LLM stores less (measured in
results/pilot_cpu_law_r15). This stage gives every LLM size of a grid its own knowledge first: it trains the
bare causal LM on the synthetic benchmark's "what is KX?" questions as text (the fact task, fact_key name),
fresh Zipf-drawn rows every step, and saves the weights; every cell of that size, at every V and seed, starts
from them. A larger LLM stores more of the rare names, so its error is lower before V enters. Measured in
results/pilot_cpu_law_r17: a VLM stage that trains the LLM rewrites much of what this stage stored (names the
VLM stage never asks are forgotten), so the knowledge is the same for every V at the start, not at the end.

    PretrainConfig: steps, batch, rate and where the weights live (GridConfig.llm_pretrain).
    pretrain_llm(): the training loop (AdamW, warmup then cosine, loss on the answer tokens only), returning
                    the trained LLM and its held-out accuracy.
    load_or_pretrain(): the size's safetensors file, trained and saved atomically when missing, checked against
                        the LLM, stage and benchmark, and loaded into a cell's LLM.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from lit_vlm.data import synthetic
from lit_vlm.data.processor import IGNORE_INDEX, _pad
from lit_vlm.errors import UserError
from lit_vlm.model.vlm import LLMConfig

log = logging.getLogger("lit_vlm.grid")


@dataclass
class PretrainConfig:
    """Stage 1: each LLM size pretrained on the benchmark's facts as text (off with max_steps 0)."""

    max_steps: int = 0
    """Optimizer steps per LLM size; 0: no stage 1, cells train their LLM from random weights."""
    batch_size: int = 64
    """Questions per step, drawn afresh each step with the fact task's Zipf probabilities."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warmup over 5 % of the steps, cosine decay to 10 %)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the LLM's initial weights and of the drawn questions (one pretrained LLM per size)."""
    checkpoint_dir: str = "runs/llms"
    """Folder of the pretrained LLMs, one <llm name>.safetensors per size; trained here when missing."""
    eval_questions: int = 5000
    """Held-out questions (Zipf-drawn, another seed) on which the stage's accuracy is logged."""


def _encode(tokenizer, rows: list[tuple[str, str]], memo: dict) -> dict[str, torch.Tensor]:
    """Prompt (the chat template, no image) + answer + eos, right padded; labels only on answer and eos."""
    seqs, labels = [], []
    for q, a in rows:
        if (q, a) not in memo:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                   tokenize=False)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ans = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            memo[q, a] = (p + ans, [IGNORE_INDEX] * len(p) + ans)
        s, lab = memo[q, a]
        seqs.append(s)
        labels.append(lab)
    return {"input_ids": _pad(seqs, tokenizer.pad_token_id), "labels": _pad(labels, IGNORE_INDEX),
            "attention_mask": _pad([[1] * len(s) for s in seqs], 0)}  # as VLMProcessor.collate pads a batch


@torch.no_grad()
def fact_accuracy(llm: torch.nn.Module, tokenizer, rows: list[tuple[str, str]], batch_size: int = 500) -> float:
    """Share of ``rows`` whose every answer token (and eos) is the LLM's argmax given the ones before it:
    for these short answers, what greedy generation would answer."""
    llm.eval()
    right, memo = 0, {}
    for i in range(0, len(rows), batch_size):
        batch = _encode(tokenizer, rows[i : i + batch_size], memo)
        logits = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch["labels"][:, 1:]
        wrong = (logits.argmax(-1) != target) & (target != IGNORE_INDEX)
        right += int((~wrong.any(1)).sum())
    return right / len(rows)


def pretrain_llm(llm_cfg: LLMConfig, tokenizer, task_options: dict, cfg: PretrainConfig) -> tuple[torch.nn.Module, float]:
    """Stage 1 for one LLM size: the trained causal LM and its held-out fact accuracy."""
    torch.manual_seed(cfg.seed)
    llm = llm_cfg.build(tokenizer)
    rng = np.random.default_rng([cfg.seed, 1])
    held_out = synthetic.fact_questions(np.random.default_rng([cfg.seed, 2]), cfg.eval_questions, **task_options)
    opt = torch.optim.AdamW(llm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.max_steps // 20)

    # warmup, then cosine to 10 % of the peak. The kit's warmup_cosine_schedule (transformers') is the same curve
    # one step later (its first step has rate 0); measured, switching moves stage 1's held-out accuracy by up to
    # 2.4 points (round 17's widths), so this one stays while round 17's recorded figures are to reproduce.
    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.max_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    memo: dict = {}
    llm.train()
    for step in range(cfg.max_steps):
        batch = _encode(tokenizer, synthetic.fact_questions(rng, cfg.batch_size, **task_options), memo)
        loss = llm(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, cfg.max_steps // 10) == 0:
            log.info("stage 1: step %d/%d loss %.4f", step + 1, cfg.max_steps, loss.item())
    return llm, fact_accuracy(llm, tokenizer, held_out)


def _fingerprint(llm_cfg: LLMConfig, task_options: dict, cfg: PretrainConfig) -> str:
    """What a pretrained LLM was made from: its architecture, the stage's settings and the benchmark's facts."""
    opts = synthetic.resolve_options(**task_options)
    # what the text questions and answers depend on, not what the images show
    images_only = ("fact_shown_by", "fact_hidden", "fact_cells", "fact_cells_by", "fact_split")
    facts = {k: opts.get(k) for k in (*synthetic.FACT_OPTIONS, "ocr_alphabet") if k not in images_only}
    facts["fact_shown"] = bool(facts["fact_shown"])  # a symbol answer or digits; how often it is shown is the image's
    stage = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint_dir", "eval_questions")}
    return json.dumps({"llm": asdict(llm_cfg), "stage": stage, "facts": facts}, sort_keys=True, default=list)


def load_or_pretrain(name: str, llm_cfg: LLMConfig, tokenizer, task_options: dict, cfg: PretrainConfig,
                     llm: torch.nn.Module | None = None) -> Path:
    """Stage 1 of LLM size ``name``: its file in checkpoint_dir, trained and saved atomically when missing, refused
    in one line when it was made from another LLM, stage or benchmark; with ``llm``, its weights loaded into it
    (a cell's own LLM: nothing else is built, so the cell's random state is untouched)."""
    path = Path(cfg.checkpoint_dir) / f"{name}.safetensors"
    wanted = _fingerprint(llm_cfg, task_options, cfg)
    if not path.exists():
        start = time.perf_counter()
        trained, acc = pretrain_llm(llm_cfg, tokenizer, task_options, cfg)
        log.info("stage 1: %s pretrained in %.1fs (%d steps); held-out fact accuracy %.3f -> %s", name,
                 time.perf_counter() - start, cfg.max_steps, acc, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_model(trained, str(tmp), metadata={"pretrain": wanted, "fact_accuracy": f"{acc:.6f}"})
        os.replace(tmp, path)
    try:
        with safe_open(str(path), "pt") as f:
            saved = (f.metadata() or {}).get("pretrain")
        if saved == wanted and llm is not None:
            load_model(llm, str(path))  # tied embeddings are saved once; load_model restores the tie
    except Exception as err:  # noqa: BLE001 - any decode or shape failure means "not this LLM's weights"
        raise UserError(f"pretrained LLM {path} cannot be read for llms.{name} ({str(err).splitlines()[0]})") from None
    if saved != wanted:
        raise UserError(f"pretrained LLM {path} was made for another LLM, llm_pretrain or benchmark; delete it "
                        "to retrain, or give llm_pretrain.checkpoint_dir its own folder")
    return path
