"""answer_loss: the loss with the LLM's last layer at the answer positions only equals the full model's (loss,
gradients, per-row evaluation sums) for every padding and answer length, and falls back where it cannot run."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_vlm.model.answer_loss import answer_logits, answer_loss, supports_answer_loss
from lit_vlm.model.vlm import LLMConfig
from test_vlm import ANSWERS, PROMPTS, batch, make_vlm, tok  # noqa: F401 - tok is a fixture


def tiny_llm(model_type="llama", layers=2, heads=4, kv_heads=4, **kw):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                                  num_key_value_heads=kv_heads, intermediate_size=64, vocab_size=40,
                                  max_position_embeddings=64, **kw)
    llm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():  # HF's 0.02 init gives near-uniform logits: larger weights make differences show
        for p in llm.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return llm


def ragged_inputs(side="right", B=5, T=12, seed=0):
    """Rows of different lengths and 1-3 answer tokens at the end of each row's real tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = [T, T - 3, T - 1, T - 5, T - 2][:B]
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for b, n in enumerate(lengths):
        real = slice(0, n) if side == "right" else slice(T - n, T)
        mask[b, real] = 1
        end = n if side == "right" else T
        answer = 1 + b % 3
        labels[b, end - answer:end] = torch.randint(0, 40, (answer,), generator=g)
    embeds = torch.randn(B, T, 32, generator=g)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions, labels


def full_loss(llm, embeds, mask, positions, labels):
    return llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels, use_cache=False).loss


@pytest.mark.parametrize("model_type,layers,kv_heads", [("llama", 2, 4), ("llama", 3, 2), ("llama", 1, 4),
                                                        ("qwen2", 2, 2)])
@pytest.mark.parametrize("side", ["right", "left"])
def test_loss_and_gradients_equal_the_full_models(model_type, layers, kv_heads, side):
    llm = tiny_llm(model_type, layers=layers, kv_heads=kv_heads)
    assert supports_answer_loss(llm)
    inputs = ragged_inputs(side)
    grads = []
    for loss_fn in (full_loss, answer_loss):
        llm.zero_grad()
        loss = loss_fn(llm, *inputs)
        loss.backward()
        # the input embeddings get no gradient: the inputs are embeddings already
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in llm.named_parameters() if p.grad is not None}))
    (full, g_full), (fast, g_fast) = grads
    assert full.item() > 0.5  # a loss that means something, not a degenerate 0
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_full.keys() and len(g_full) >= 9 * layers  # every layer's weights, both ways
    for name in g_full:
        torch.testing.assert_close(g_fast[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_answer_logits_are_the_full_models_at_the_answer_positions():
    llm = tiny_llm()
    embeds, mask, positions, labels = ragged_inputs()
    logits, targets = answer_logits(llm, embeds, mask, positions, labels)
    with torch.no_grad():
        full = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    for b in range(labels.shape[0]):
        where = (shifted[b] != -100).nonzero().flatten()
        assert targets[b, : len(where)].tolist() == shifted[b, where].tolist()
        assert (targets[b, len(where):] == -100).all()  # a shorter row's padding is never scored
        torch.testing.assert_close(logits[b, : len(where)], full[b, where], rtol=1e-5, atol=1e-5)


def test_models_it_cannot_run_are_refused():
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4,
                                                                 vocab_size=40, n_positions=64))
    assert not supports_answer_loss(gpt2)
    flash = tiny_llm()
    flash.config._attn_implementation = "flash_attention_2"  # a kernel whose mask answer_loss does not build
    assert not supports_answer_loss(flash)
    assert not supports_answer_loss(tiny_llm(attention_dropout=0.1))
    assert not supports_answer_loss(torch.nn.Linear(2, 2))


def test_vlm_loss_and_token_losses_fast_equal_full(tok):
    m = make_vlm(tok, V=4).train()
    b = batch(tok, PROMPTS, ANSWERS)
    torch.testing.assert_close(m.loss(b, fast=True), m(b).loss, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        (s_full, n_full), (s_fast, n_fast) = m.token_losses(b), m.token_losses(b, fast=True)
    assert n_fast.tolist() == n_full.tolist() == [2, 4, 2]
    torch.testing.assert_close(s_fast, s_full, rtol=1e-5, atol=1e-5)


def test_lora_adapters_are_run_by_the_fast_loss_too(tok):
    pytest.importorskip("peft")
    lora = LLMConfig(hidden_size=32, num_layers=2, num_heads=4,
                     lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    m = make_vlm(tok, llm=lora).train()
    with torch.no_grad():  # B starts at 0: make the adapters change the forward, so skipping one would show
        for n, p in m.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    assert supports_answer_loss(m.llm)  # PEFT injects its layers in place: answer_loss calls them
    b = batch(tok, PROMPTS, ANSWERS)
    grads = []
    for fast in (False, True):
        m.zero_grad()
        loss = m.loss(b, fast=fast)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.llm.named_parameters() if "lora_" in n}))
    (full, g_full), (fast, g_fast) = grads
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert len(g_full) == 8  # A and B of q_proj and v_proj in 2 layers
    for name in g_full:
        torch.testing.assert_close(g_fast[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_vlm_fast_loss_falls_back_to_the_full_model(tok):
    gpt2 = LLMConfig(model_type="gpt2", hidden_size=32, num_layers=2, num_heads=4)
    m = make_vlm(tok, llm=gpt2)
    assert not supports_answer_loss(m.llm)
    b = batch(tok, PROMPTS, ANSWERS)
    assert m.loss(b, fast=True).item() == m(b).loss.item()


def test_litvlm_option_trains_with_the_fast_loss_and_validates_the_same(tmp_path):
    import lightning as L
    from test_module import tiny_data, tiny_module, trainer

    losses = {}
    for fast in (False, True):
        L.seed_everything(0)
        module = tiny_module(fast_answer_loss=fast)
        assert module.hparams["fast_answer_loss"] is fast  # saved with the checkpoint, as every option
        seen = []
        module.vlm.loss = (lambda f: lambda batch, fast: seen.append(fast) or f(batch, fast=fast))(module.vlm.loss)
        dm = tiny_data(tmp_path, module)
        trainer(tmp_path).fit(module, dm)
        assert seen == [fast] * 6  # every training step took the path the option names
        losses[fast] = trainer(tmp_path).validate(module, dm, verbose=False)[0]["val/loss"]
    # float rounding over 6 steps of training, not a different loss
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
