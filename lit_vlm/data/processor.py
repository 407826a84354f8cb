"""VLMProcessor: prompt formatting (the tokenizer's chat template), image transform and batch collation.

A batch follows the contract in ARCHITECTURE.md. Two layouts of the same examples are produced:
- ``input_ids`` (prompt + answer + eos, right padded) with ``labels`` for the loss, and
- ``prompt_ids`` (prompt only, left padded) for batched generation,
plus the bare question (right padded) that quecc runs through the LLM to get its query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from lit_vlm.data.tokenizer import IMAGE_TOKEN

IGNORE_INDEX = -100


def _pad(seqs: Sequence[list[int]], value: int, left: bool = False) -> torch.Tensor:
    # filled in numpy: a torch.tensor per row cost more than a small model's step
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        if s:
            if left:
                out[i, width - len(s) :] = s
            else:
                out[i, : len(s)] = s
    return torch.from_numpy(out)


def _pad_per_row(seqs: Sequence[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """``_pad`` as it was (a torch.tensor per row): the collate of LitVLM.legacy_step, for the bench's before."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            if left:
                out[i, width - len(s) :] = torch.tensor(s)
            else:
                out[i, : len(s)] = torch.tensor(s)
    return out


def image_to_tensor(image, image_size: int, mean, std) -> torch.Tensor:
    """PIL (or array) -> float tensor [3, H, W]: RGB, resized to image_size (bicubic), (x / 255 - mean) / std."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return torch.from_numpy((pixels - mean) / std)


class VLMProcessor:
    """Tokenizer + image transform + collate, shared by the model (token ids) and the data (batches)."""

    def __init__(
        self,
        tokenizer,
        image_size: int,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_answer_tokens: int = 32,
        image_processor=None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # a pretrained tower's AutoImageProcessor replaces our transform
        self.image_size = image_size
        self.mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.max_answer_tokens = max_answer_tokens
        # [3, 256]: channel c's value v normalised, (v / 255 - mean) / std in float32 as image_to_tensor computes it
        levels = np.arange(256, dtype=np.float32)[None, :] / 255.0
        self._levels = (levels - self.mean.reshape(3, 1)) / self.std.reshape(3, 1)
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        # Token ids of texts seen before, by text: a dataset repeats its questions and answers, and rendering
        # the chat template and tokenising each row every step cost a small model more than its arithmetic.
        # 0 turns the memo off. Plain dicts, so the processor still pickles into DataLoader workers.
        self.memo_size = 1 << 16
        self._memo: dict[tuple[str, str], list[int]] = {}

    def format_prompt(self, question: str) -> str:
        """The chat-templated prompt with exactly one image placeholder, ending with the generation prompt."""
        messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def image_to_tensor(self, image) -> torch.Tensor:
        """PIL (or array) -> normalised float tensor [3, H, W] at the tower's resolution."""
        if self.image_processor is not None:
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0].float()
        return image_to_tensor(image, self.image_size, self.mean, self.std)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # add_special_tokens=False: the chat template already placed bos where the model expects it.
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _memo_ids(self, kind: str, texts: list[str]) -> list[list[int]]:
        """``_ids`` of the texts (prompts: of their chat-templated prompt), each text rendered and tokenised
        once; the ids are those of ``_ids`` (a fast tokenizer encodes a text alone as in a batch)."""
        if not self.memo_size:
            return self._ids([self.format_prompt(q) for q in texts] if kind == "prompt" else texts)
        memo = self._memo
        new = list(dict.fromkeys(t for t in texts if (kind, t) not in memo))
        if new:
            if len(memo) + len(new) > self.memo_size:
                memo.clear()
            ids = self._ids([self.format_prompt(q) for q in new] if kind == "prompt" else new)
            memo.update(((kind, t), i) for t, i in zip(new, ids))
        return [memo[kind, t] for t in texts]

    def collate(self, rows: list[dict]) -> dict:
        questions = [r["question"] for r in rows]
        answers = [r["answer"] for r in rows]
        prompts = self._memo_ids("prompt", questions)
        answer_ids = [ids[: self.max_answer_tokens] + [self.eos_id] for ids in self._memo_ids("text", answers)]
        full = [p + a for p, a in zip(prompts, answer_ids)]
        labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answer_ids)]
        question_ids = self._memo_ids("text", questions)

        pad = _pad if self.memo_size else _pad_per_row
        batch = {
            "input_ids": pad(full, self.pad_id),
            "attention_mask": pad([[1] * len(s) for s in full], 0),
            "labels": pad(labels, IGNORE_INDEX),
            "prompt_ids": pad(prompts, self.pad_id, left=True),
            "prompt_mask": pad([[1] * len(s) for s in prompts], 0, left=True),
            "question_ids": pad(question_ids, self.pad_id),
            "question_mask": pad([[1] * len(s) for s in question_ids], 0),
            "index": torch.tensor([int(r.get("index", i)) for i, r in enumerate(rows)], dtype=torch.long),
            "answers": answers,
            "questions": questions,
            "families": [r.get("family", "reasoning") for r in rows],
            "tasks": [r.get("task", "") for r in rows],
        }
        if "answers" in rows[0] and isinstance(rows[0]["answers"], (list, tuple)):
            batch["answer_lists"] = [list(r["answers"]) for r in rows]  # e.g. VQA's 10 human answers
        if rows[0].get("metric"):
            batch["metrics"] = [r["metric"] for r in rows]  # hub rows name the metric their dataset uses
        if "feature_row" in rows[0]:  # a grid cell's feature cache answers these images by row: none decoded
            batch["feature_rows"] = torch.tensor([r["feature_row"] for r in rows], dtype=torch.long)
        else:
            batch["pixel_values"] = self.images_to_tensor([r["image"] for r in rows])
        return batch

    def images_to_tensor(self, images: list) -> torch.Tensor:
        """``image_to_tensor`` of each image, stacked [B, 3, H, W]; our transform normalises the whole batch by
        a lookup of the 256 values per channel, each computed as image_to_tensor computes it (so bitwise)."""
        if self.image_processor is not None or not self.memo_size:
            return torch.stack([self.image_to_tensor(im) for im in images])
        side = (self.image_size, self.image_size, 3)
        arrays = []
        for image in images:
            if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == side:
                arrays.append(image)  # already what the PIL path below makes of it (Rows' decoded images)
                continue
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            image = image.convert("RGB")
            if image.size != side[:2]:
                image = image.resize(side[:2], Image.Resampling.BICUBIC)
            arrays.append(np.asarray(image))
        # a lookup of each uint8 value's normalised float, computed with image_to_tensor's float32 operations
        values = np.stack(arrays)  # [B, H, W, 3] uint8
        pixels = np.empty((len(arrays), 3, *side[:2]), dtype=np.float32)
        for c in range(3):  # one take per channel: several times faster than the float arithmetic per image
            np.take(self._levels[c], values[..., c], out=pixels[:, c])
        return torch.from_numpy(pixels)
