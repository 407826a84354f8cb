"""Run a lit_vlm command with the visual tokens changed, for round 19's diagnostics
(results/pilot_cpu_law_r19/README.md): why does V = 16 cost a small LLM its rare facts?

    python bench/patch_visual_tokens.py [--repeat] [--log-v-bias | --learned-bias] -m lit_vlm grid --config ... --launcher none --workers 1
    python bench/patch_visual_tokens.py [--repeat] [--log-v-bias | --learned-bias] bench/task_accuracy.py --config ... --cells ...

--repeat      avgpool gives V copies of the whole image's mean token: V positions holding V = 1's information.
--log-v-bias  every attention score on a visual position gets -log V added (eager attention with the bias), so
              V identical visual tokens weigh together what one does.
--learned-bias  the same bias as a parameter of each attention layer and head, starting at -log V and trained
              with the LLM (implies the attention of --log-v-bias).

The changes live in this process only: the grid must run its cells here (--launcher none), and checkpoints it
writes must be evaluated through this script with the same flags (the kit alone would see the real model).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.model import compressors  # noqa: E402
from lit_vlm.model import vlm as vlm_module  # noqa: E402

_VISUAL: dict[str, torch.Tensor | float] = {}  # the batch being run: its visual key positions [B, L] and log V


def repeated_mean(self, features, query):
    """[B, levels, P, D] -> [B, V, D]: the mean over every patch, V times (avgpool's V = 1 token, repeated)."""
    pooled = F.adaptive_avg_pool2d(self._grid(features[:, -1]), 1)  # [B, D, 1, 1]
    return pooled.flatten(2).transpose(1, 2).expand(-1, self.side * self.side, -1), None


def biased_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention, its additive mask plus the bias on the visual key positions."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    visual = _VISUAL["keys"]  # [B, L0]: the prompt's positions; generated tokens (the cache grows) are text
    visual = F.pad(visual, (0, key.shape[-2] - visual.shape[1]), value=False)[:, None, None, :]
    bias = getattr(module, "visual_bias", None)  # [heads] with --learned-bias, else the fixed -log V
    bias = bias[None, :, None, None] if bias is not None else -_VISUAL["log_v"]
    mask = bias * visual.to(query.dtype) + (0 if attention_mask is None else attention_mask)
    return eager_attention_forward(module, query, key, value, mask, scaling, dropout, **kwargs)


def install_bias(learned: bool = False) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("visual_bias", biased_attention)
    AttentionMaskInterface.register("visual_bias", eager_mask)  # the additive float mask the bias joins
    init, splice = vlm_module.VLM.__init__, vlm_module.VLM.splice

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.llm.config._attn_implementation = "visual_bias"
        _VISUAL["log_v"] = math.log(self.visual_tokens)
        if learned:  # before the optimizer is built, so the LLM's parameter group holds them
            for layer in self.llm.model.layers:
                attn = layer.self_attn
                attn.visual_bias = torch.nn.Parameter(torch.full((attn.config.num_attention_heads,),
                                                                 -_VISUAL["log_v"]))

    def patched_splice(self, input_ids, attention_mask, visual, labels=None):
        out = splice(self, input_ids, attention_mask, visual, labels)
        V = visual.shape[1]
        start = (input_ids == self.image_token_id).long().argmax(1, keepdim=True)  # the placeholder's position
        steps = torch.arange(out["inputs_embeds"].shape[1], device=input_ids.device)[None, :]
        _VISUAL["keys"] = (steps >= start) & (steps < start + V)
        return out

    vlm_module.VLM.__init__, vlm_module.VLM.splice = patched_init, patched_splice


def main(argv: list[str]) -> None:
    import runpy

    flags = {"--repeat", "--log-v-bias", "--learned-bias"}
    chosen = set()
    while argv and argv[0] in flags:
        chosen.add(argv.pop(0))
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        sys.exit("usage: python bench/patch_visual_tokens.py [--repeat] [--log-v-bias | --learned-bias] (-m MODULE | SCRIPT) [ARGS ...]")
    if "--repeat" in chosen:
        compressors.AvgPool.compress = repeated_mean
    if chosen & {"--log-v-bias", "--learned-bias"}:
        install_bias(learned="--learned-bias" in chosen)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
