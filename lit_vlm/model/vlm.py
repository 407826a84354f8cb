"""The VLM: vision tower -> compressor (V tokens) -> projector -> Hugging Face causal LM.

The image enters the LLM as V embeddings spliced in place of the single `<image>` placeholder token, so a
prompt of L tokens becomes L + V - 1 positions. Position ids are computed from the attention mask, which makes
left padding (used for generation) and right padding (used for training) give the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lit_vlm.constants import IMAGE_TOKEN
from lit_vlm.errors import UserError
from lit_vlm.model.answer_loss import answer_logits, answer_loss, supports_answer_loss
from lit_vlm.model.compressors import build_compressor
from lit_vlm.model.vision import VisionConfig, VisionTower


@dataclass
class LLMConfig:
    """The language model. Built offline from these sizes (random weights), or loaded from `pretrained`."""

    model_type: str = "llama"
    """Any transformers causal-LM model type (llama, qwen2, ...), used when `pretrained` is not set."""
    pretrained: str | None = None
    """Hub id or local path loaded with from_pretrained; when set, the size fields are ignored."""
    hidden_size: int = 64
    """Width of the LLM (must be divisible by num_heads)."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads per layer."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (must divide num_heads); None = num_heads."""
    intermediate_size: int | None = None
    """Width of each layer's feed-forward; None = 4 * hidden_size."""
    max_position_embeddings: int = 512
    """Longest sequence (prompt + visual tokens + answer) the model supports."""
    tie_word_embeddings: bool = True
    """Share the input embedding matrix with the output (lm_head) matrix."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa, eager (or flash_attention_2 where installed)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the checkpoint (only with `pretrained`)."""
    lora: dict | None = None
    """LoRA adapters (needs `pip install lit_vlm[lora]`): {r, alpha, dropout, target_modules}; only the adapters
    of the LLM train, its base weights stay frozen. None: no LoRA."""
    dtype: str = "float32"
    """Storage dtype of the LLM's weights: float32, bfloat16 or float16. Half precision only for weights that do
    not train (with `lora`, or in the align stage): mixed-precision training needs fp32 trainable weights."""
    load_in_4bit: bool = False
    """Load the pretrained LLM quantised to 4-bit NF4 (bitsandbytes, CUDA only; frozen base, use with `lora`)."""

    def validate(self) -> None:
        if self.dtype not in _DTYPES:
            raise UserError(f"llm.dtype={self.dtype!r} is not supported; allowed: {', '.join(_DTYPES)}")
        if self.lora is not None:
            _lora_options(self.lora)
            import importlib.util

            if importlib.util.find_spec("peft") is None:  # checked before a large checkpoint is loaded
                raise UserError("llm.lora needs peft: pip install lit_vlm[lora]")
        if self.load_in_4bit and self.pretrained is None:
            raise UserError("llm.load_in_4bit=true needs llm.pretrained (a random-weight LLM has nothing to quantise)")
        if self.pretrained is not None:
            return
        for name in ("hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise UserError(f"llm.{name}={getattr(self, name)} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise UserError(f"llm.hidden_size={self.hidden_size} must be divisible by llm.num_heads={self.num_heads}")
        kv = self.num_kv_heads
        if kv is not None and (kv < 1 or self.num_heads % kv):
            raise UserError(f"llm.num_kv_heads={kv} must divide llm.num_heads={self.num_heads}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise UserError(f"llm.intermediate_size={self.intermediate_size} must be a positive integer")

    def build(self, tokenizer) -> nn.Module:
        """The HF causal LM, with a vocabulary that covers `tokenizer` (random weights unless `pretrained`)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        self.validate()
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
        dtype = _DTYPES[self.dtype]
        if self.pretrained is not None:
            # dtype pinned (fp32 by default): v5 defaults to the checkpoint dtype; Lightning's precision plugin
            # autocasts the matmuls, and trainable weights must stay fp32 for the optimiser and GradScaler.
            kwargs = {"dtype": dtype, "attn_implementation": self.attn_implementation,
                      "trust_remote_code": self.trust_remote_code}
            if self.load_in_4bit:
                kwargs |= _quantization(dtype)
            try:
                llm = AutoModelForCausalLM.from_pretrained(self.pretrained, **kwargs)
            except OSError as e:  # missing id/path, offline without a cached copy, no config.json
                raise UserError(f"llm.pretrained={self.pretrained!r} cannot be loaded: {_first_line(e)}") from None
            if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
                llm.resize_token_embeddings(len(tokenizer))
        else:
            try:
                config = AutoConfig.for_model(
                    self.model_type,
                    vocab_size=len(tokenizer),
                    hidden_size=self.hidden_size,
                    num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads,
                    # always explicit: some configs (qwen2) default to far more kv heads than q heads
                    num_key_value_heads=self.num_kv_heads or self.num_heads,
                    intermediate_size=self.intermediate_size or 4 * self.hidden_size,
                    max_position_embeddings=self.max_position_embeddings,
                    tie_word_embeddings=self.tie_word_embeddings,
                    **ids,
                )
            except ValueError as e:  # unknown model type, or the config's own validation
                raise UserError(f"llm.model_type={self.model_type!r} cannot be built: {_first_line(e)}") from None
            try:
                llm = AutoModelForCausalLM.from_config(config, attn_implementation=self.attn_implementation)
            except ValueError as e:
                raise UserError(
                    f"llm.model_type={self.model_type!r} with attn_implementation={self.attn_implementation!r} "
                    f"cannot be built as a causal LM: {_first_line(e)}"
                ) from None
            llm = llm.to(dtype)
        if self.gradient_checkpointing:
            enable = getattr(llm, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5.x name
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            llm = _add_lora(llm, self.lora)
        return llm


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LORA_DEFAULTS = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    # the linear layers of llama / qwen2 / mistral-style blocks (SmolLM2 is llama, Qwen2.5 is qwen2)
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _lora_options(lora: dict) -> dict:
    if not isinstance(lora, dict):
        raise UserError(f"llm.lora={lora!r} must be a mapping with keys {', '.join(_LORA_DEFAULTS)}, or null")
    unknown = sorted(set(lora) - set(_LORA_DEFAULTS))
    if unknown:
        raise UserError(f"llm.lora has unknown key {unknown[0]!r}; allowed: {', '.join(_LORA_DEFAULTS)}")
    opts = {**_LORA_DEFAULTS, **lora}
    if not isinstance(opts["r"], int) or opts["r"] < 1:
        raise UserError(f"llm.lora.r={opts['r']!r} must be a positive integer")
    if not 0 <= float(opts["dropout"]) < 1:
        raise UserError(f"llm.lora.dropout={opts['dropout']!r} must be in [0, 1)")
    return opts


def _add_lora(llm: nn.Module, lora: dict) -> nn.Module:
    """Inject LoRA adapters in place (the model stays a plain HF causal LM); base weights frozen, adapters fp32."""
    opts = _lora_options(lora)
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError("llm.lora needs peft: pip install lit_vlm[lora]") from None
    config = LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=float(opts["dropout"]),
                        target_modules=opts["target_modules"], bias="none")
    llm.requires_grad_(False)
    try:
        llm = inject_adapter_in_model(config, llm)
    except ValueError as e:  # e.g. no module matches target_modules
        raise UserError(f"llm.lora cannot be applied: {_first_line(e)}") from None
    for name, p in llm.named_parameters():
        if _is_lora(name):
            # fp32 adapters whatever the base dtype: the optimiser and GradScaler need fp32 trainable weights
            p.data = p.data.float()
            p.requires_grad_(True)
    return llm


def _is_lora(name: str) -> bool:
    return ".lora_" in name


def _quantization(dtype: torch.dtype) -> dict:
    """from_pretrained arguments for a 4-bit NF4 LLM (QLoRA-style); CUDA + bitsandbytes only."""
    import importlib.util

    if not torch.cuda.is_available():
        raise UserError("llm.load_in_4bit=true needs a CUDA GPU (bitsandbytes); set it to false on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("llm.load_in_4bit=true needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=compute)
    # 4-bit weights are created on the GPU; they cannot be moved there later
    return {"quantization_config": q, "device_map": {"": torch.cuda.current_device()},
            "dtype": compute if dtype == torch.float32 else dtype}


def _first_line(e: Exception) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = lines[-1] if lines and "validation error" in lines[0].lower() else (lines[0] if lines else type(e).__name__)
    return text[:300]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from the attention mask: real tokens count 0, 1, 2, ... whatever the padding side."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class VLM(nn.Module):
    """vision_tower -> compressor -> projector -> llm, with splicing, loss and greedy generation."""

    def __init__(self, vision: VisionConfig, llm: LLMConfig, compressor: str, visual_tokens: int, tokenizer,
                 compressor_options: dict | None = None, projector_hidden: int | None = None):
        super().__init__()
        self.vision_config, self.llm_config = vision, llm
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or (
            self.image_token_id == tokenizer.unk_token_id and tokenizer.unk_token != IMAGE_TOKEN
        ):
            raise UserError(f"tokenizer has no {IMAGE_TOKEN!r} token; add it as a special token")
        if tokenizer.pad_token_id is None:
            raise UserError("tokenizer has no pad token; set tokenizer.pad_token")
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.visual_tokens = visual_tokens

        self.vision_tower = VisionTower(vision)
        self.llm = llm.build(tokenizer)
        hidden = self.llm.get_input_embeddings().embedding_dim
        self.compressor = build_compressor(
            compressor,
            in_dim=self.vision_tower.hidden_size,
            grid_side=self.vision_tower.grid_side,
            num_levels=self.vision_tower.num_levels,
            visual_tokens=visual_tokens,
            query_dim=hidden,
            **(compressor_options or {}),
        )
        # LLaVA's projector is as wide as the LLM; projector_hidden gives every LLM of a grid the same one
        # (only its last layer depends on the LLM), so the vision side does not grow with N
        mid = projector_hidden or hidden
        self.projector = nn.Sequential(nn.Linear(self.compressor.out_dim, mid), nn.GELU(), nn.Linear(mid, hidden))

    # --- images -> visual embeddings -----------------------------------------------------------------------
    def tower_pixels(self) -> int:
        """The side in pixels the tower sees: its own, or v patches for a compressor that resizes the image."""
        if self.compressor.resizes_image:
            return self.compressor.side * self.vision_tower.patch_size
        return self.vision_tower.image_size

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, n_levels, P, D] (P = V for `downsample`: the image is resized first)."""
        side = self.tower_pixels()
        if pixel_values.shape[-1] != side:
            # normalised pixels: resizing commutes with the per-channel affine normalisation; antialias
            # averages the pixels each output pixel covers instead of sampling a few of them
            pixel_values = nn.functional.interpolate(pixel_values, size=(side, side), mode="bilinear",
                                                     align_corners=False, antialias=True)
        return self.vision_tower(pixel_values)

    def image_features(self, batch: dict) -> torch.Tensor:
        """The batch's [B, n_levels, P, D]: its ``pixel_values`` through ``encode_images``, or, in a grid cell
        whose feature cache answers by row (lit_vlm.grid.cache), the store rows in ``feature_rows``."""
        if "pixel_values" in batch:
            return self.encode_images(batch["pixel_values"])
        lookup = getattr(self.vision_tower, "lookup_rows", None)
        if lookup is None or "feature_rows" not in batch:
            raise ValueError("the batch has no pixel_values (and no feature_rows a feature cache could answer)")
        return lookup(batch["feature_rows"])

    def question_query(self, question_ids: torch.Tensor, question_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The question's embedding for quecc: LLM last-layer state at the last real token, no grad. [B, H]."""
        if question_mask is None:
            question_mask = torch.ones_like(question_ids)
        with torch.no_grad():
            hidden = self.llm.base_model(
                input_ids=question_ids, attention_mask=question_mask, position_ids=_positions(question_mask),
                use_cache=False,
            ).last_hidden_state
            # the last position where mask == 1 (works for left and right padding)
            steps = torch.arange(question_ids.shape[1], device=question_ids.device)
            last = (question_mask.long() * (steps + 1)).argmax(-1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def visual_embeds(self, features: torch.Tensor, question_ids: torch.Tensor | None = None,
                      question_mask: torch.Tensor | None = None, return_attention: bool = False):
        """[B, n_levels, P, D] -> [B, V, H_llm] (and the compressor's attention [B, V, P] or None)."""
        query = None
        if self.compressor.needs_query:
            if question_ids is None:
                raise ValueError("this compressor is conditioned on the question: pass question_ids")
            query = self.question_query(question_ids, question_mask)
        features = features.to(self.projector[0].weight.dtype)  # the tower may run in another precision
        tokens, attn = self.compressor(features, query, return_attention=True)
        visual = self.projector(tokens)
        return (visual, attn) if return_attention else visual

    # --- splicing --------------------------------------------------------------------------------------------
    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: torch.Tensor,
               labels: torch.Tensor | None = None) -> dict:
        """Replace each row's single image token by its V visual embeddings: L -> L + V - 1 positions."""
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(1)
        if (counts != 1).any():
            row = int((counts != 1).nonzero()[0])
            n = int(counts[row])
            raise ValueError(f"row {row} of input_ids has {n} {IMAGE_TOKEN!r} tokens; expected exactly 1")
        B, L = input_ids.shape
        V = visual.shape[1]
        where = is_image.long().argmax(1, keepdim=True)  # [B, 1]: position of the placeholder
        if not attention_mask.gather(1, where).bool().all():
            raise ValueError(f"the {IMAGE_TOKEN!r} token sits on a padded position (attention_mask == 0)")

        # Output position t reads visual[t - where] inside the image span, else the text token it came from.
        t = torch.arange(L + V - 1, device=input_ids.device)[None]  # [1, L+V-1]
        offset = t - where  # [B, L+V-1]
        in_image = (offset >= 0) & (offset < V)
        text_idx = torch.where(offset < 0, t, t - V + 1).clamp(0, L - 1)
        image_idx = offset.clamp(0, V - 1)

        text = self.llm.get_input_embeddings()(input_ids)
        H = text.shape[-1]
        embeds = torch.where(
            in_image[..., None],
            visual.to(text.dtype).gather(1, image_idx[..., None].expand(-1, -1, H)),
            text.gather(1, text_idx[..., None].expand(-1, -1, H)),
        )
        mask = torch.where(in_image, 1, attention_mask.gather(1, text_idx)).to(attention_mask.dtype)
        out = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": _positions(mask), "labels": None}
        if labels is not None:
            out["labels"] = torch.where(in_image, -100, labels.gather(1, text_idx))
        return out

    # --- training / scoring ----------------------------------------------------------------------------------
    def forward(self, batch: dict):
        """CausalLMOutputWithPast; `.loss` is set when the batch has labels."""
        visual = self.visual_embeds(self.image_features(batch), batch.get("question_ids"),
                                    batch.get("question_mask"))
        s = self.splice(batch["input_ids"], batch["attention_mask"], visual, batch.get("labels"))
        return self.llm(**s, use_cache=False)

    def loss(self, batch: dict, fast: bool = False) -> torch.Tensor:
        """The batch's mean answer-token loss (``forward().loss``); ``fast`` runs the LLM's last layer at the
        answer positions only (lit_vlm/model/answer_loss.py), where the LLM supports it."""
        if not (fast and supports_answer_loss(self.llm)):
            return self(batch).loss
        return answer_loss(self.llm, **self._spliced(batch))

    def token_losses(self, batch: dict, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the summed cross-entropy of its answer tokens and how many there are ([B], [B]).

        ``forward().loss`` is the mean over one batch's tokens; evaluation sums these over a whole split instead.
        ``fast``: as in ``loss``.
        """
        s = self._spliced(batch)
        if fast and supports_answer_loss(self.llm):
            logits, targets = answer_logits(self.llm, **s)
        else:
            labels = s.pop("labels")
            logits = self.llm(**s, use_cache=False).logits
            # Position t predicts token t + 1, as in the LLM's own loss.
            targets = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        ce = nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        return ce.sum(1), (targets != -100).sum(1)

    def _spliced(self, batch: dict) -> dict:
        """The LLM's inputs for a batch with labels: embeddings with the visual tokens spliced in, mask,
        position ids and labels (-100 on the image)."""
        visual = self.visual_embeds(self.image_features(batch), batch.get("question_ids"), batch.get("question_mask"))
        return self.splice(batch["input_ids"], batch["attention_mask"], visual, batch["labels"])

    # --- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 8, use_cache: bool = True) -> torch.Tensor:
        """Greedy answers to the left-padded prompts: [B, max_new_tokens] new tokens, pad after eos."""
        visual = self.visual_embeds(self.image_features(batch), batch.get("question_ids"),
                                    batch.get("question_mask"))
        s = self.splice(batch["prompt_ids"], batch["prompt_mask"], visual)
        if use_cache:
            # HF returns only the new tokens when given inputs_embeds; we pass our position ids so it cannot
            # disagree with training (it would derive the same cumsum(mask) - 1 from the mask anyway).
            new = self.llm.generate(
                inputs_embeds=s["inputs_embeds"], attention_mask=s["attention_mask"], position_ids=s["position_ids"],
                max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            )
        else:
            new = self._greedy_no_cache(s, max_new_tokens)  # HF forces the cache on with inputs_embeds
        return self._pad_after_eos(new, max_new_tokens)

    def _greedy_no_cache(self, s: dict, max_new_tokens: int) -> torch.Tensor:
        """Reference decoding: re-run the whole sequence for every new token (slow, obviously correct)."""
        embeds, mask, pos = s["inputs_embeds"], s["attention_mask"], s["position_ids"]
        embed = self.llm.get_input_embeddings()
        done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        out = []
        for _ in range(max_new_tokens):
            logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).logits
            token = logits[:, -1].argmax(-1).masked_fill(done, self.pad_token_id)
            out.append(token)
            if self.eos_token_id is not None:
                done |= token == self.eos_token_id
            if done.all():
                break
            embeds = torch.cat([embeds, embed(token)[:, None].to(embeds.dtype)], 1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        return torch.stack(out, 1)

    def _pad_after_eos(self, ids: torch.Tensor, length: int) -> torch.Tensor:
        if self.eos_token_id is not None:
            is_eos = ids == self.eos_token_id
            after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
            ids = ids.masked_fill(after, self.pad_token_id)
        if ids.shape[1] < length:  # HF stops early once every row is done: fixed width for batching
            ids = torch.cat([ids, ids.new_full((ids.shape[0], length - ids.shape[1]), self.pad_token_id)], 1)
        return ids

    # --- bookkeeping -----------------------------------------------------------------------------------------
    def num_llm_params(self, with_embeddings: bool = True) -> int:
        """N in the paper's cost 2 N (Q + V); without embeddings drops the input embeddings (and an untied lm_head)."""
        # parameters() counts a tied matrix once; LoRA adapters are left out (they merge into the weights)
        total = sum(p.numel() for n, p in self.llm.named_parameters() if not _is_lora(n))
        if with_embeddings:
            return total
        emb = self.llm.get_input_embeddings().weight
        total -= emb.numel()
        head = self.llm.get_output_embeddings()
        if head is not None and head.weight is not emb:
            total -= head.weight.numel()
        return total

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by training stage: vision tower, compressor + projector, LLM.

        With LoRA the "llm" group holds only the adapters; the frozen base weights belong to no group (they
        never train), so a stage that trains the LLM trains its adapters.
        """
        if self.llm_config.lora is not None:
            llm = [p for n, p in self.llm.named_parameters() if _is_lora(n)]
        else:
            llm = list(self.llm.parameters())
        return {
            "vision": list(self.vision_tower.parameters()),
            "compressor": list(self.compressor.parameters()) + list(self.projector.parameters()),
            "llm": llm,
        }
