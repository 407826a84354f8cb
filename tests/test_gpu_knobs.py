"""Memory and precision knobs for one GPU, checked on a CPU: precision choice and refusals, the NaN stop,
the out-of-memory advice, gradient checkpointing, LoRA, half-precision frozen weights, 4-bit refusal."""

import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from lit_vlm import callbacks, gpu
from lit_vlm.errors import UserError
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import IMAGE_TOKEN, VLM, LLMConfig

VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def tok():
    words = ["<pad>", "<bos>", "<eos>", "<unk>", IMAGE_TOKEN] + [f"w{i}" for i in range(20)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", additional_special_tokens=[IMAGE_TOKEN])


def make_batch(tok):
    prompts = [f"w1 {IMAGE_TOKEN} w2 w3", f"w4 {IMAGE_TOKEN} w5"]
    answers = ["w6 w7 <eos>", "w8 <eos>"]
    rows = [tok(p).input_ids + tok(a).input_ids for p, a in zip(prompts, answers)]
    labels = [[-100] * len(tok(p).input_ids) + tok(a).input_ids for p, a in zip(prompts, answers)]
    n = max(map(len, rows))
    pad = lambda r, v: r + [v] * (n - len(r))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.tensor([pad(r, tok.pad_token_id) for r in rows]),
        "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
        "labels": torch.tensor([pad(r, -100) for r in labels]),
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
    }


def make_vlm(tok, **llm):
    torch.manual_seed(0)
    return VLM(VISION, LLMConfig(hidden_size=32, num_layers=2, num_heads=4, **llm), "tokenpacker", 4, tok)


# --- precision -------------------------------------------------------------------------------------------------
def fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


def test_choose_precision_per_device(monkeypatch):
    if not torch.cuda.is_available():
        assert gpu.choose_precision() == "32-true"
    fake_gpu(monkeypatch, (7, 5))  # T4
    assert gpu.choose_precision() == "16-mixed" and gpu.check_precision("auto") == "16-mixed"
    fake_gpu(monkeypatch, (8, 0))  # A100
    assert gpu.choose_precision() == "bf16-mixed" and gpu.check_precision(None) == "bf16-mixed"


def test_precision_refusals(monkeypatch):
    with pytest.raises(UserError, match="16-true cannot train.*use 16-mixed"):
        gpu.check_precision("16-true")
    assert gpu.check_precision("16-true", training=False) == "16-true"
    assert gpu.check_precision(16) == "16-mixed" and gpu.check_precision("bf16") == "bf16-mixed"
    with pytest.raises(UserError, match="'fp8' is not a precision"):
        gpu.check_precision("fp8")
    fake_gpu(monkeypatch, (7, 5))
    with pytest.raises(UserError, match="bf16-mixed needs a GPU with bf16.*Tesla T4.*use 16-mixed"):
        gpu.check_precision("bf16-mixed")


def test_precision_guard_refuses_half_trainable_weights():
    module = nn.Linear(2, 2).half()
    with pytest.raises(UserError, match="trainable weights are float16.*model.llm.dtype=float32"):
        callbacks.PrecisionGuard().on_fit_start(SimpleNamespace(precision="16-mixed"), module)
    module.requires_grad_(False)  # frozen half weights are fine
    callbacks.PrecisionGuard().on_fit_start(SimpleNamespace(precision="16-mixed"), module)
    with pytest.raises(UserError, match="16-true cannot train"):
        callbacks.PrecisionGuard().on_fit_start(SimpleNamespace(precision="16-true"), nn.Linear(2, 2))


# --- NaN / inf loss --------------------------------------------------------------------------------------------
class Blows(L.LightningModule):
    """Loss turns NaN at step 3 (as an fp16 overflow would)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(2, 1)

    def training_step(self, batch, i):
        loss = self.w(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step >= 3 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=4)


def test_nonfinite_loss_stops_training_with_the_knob(tmp_path):
    guard = callbacks.NonFiniteLossGuard()
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
                        default_root_dir=tmp_path)
    with pytest.raises(gpu.NonFiniteLossError, match=r"train loss is nan at step 3 with trainer.precision=32-true"):
        trainer.fit(Blows())
    assert trainer.global_step == 3


def test_nonfinite_advice_names_fp16_knobs():
    guard = callbacks.NonFiniteLossGuard(patience=1)
    guard.check(torch.tensor(float("inf")), 7, "16-mixed")  # one bad step is tolerated
    guard.check(torch.tensor(1.0), 8, "16-mixed")  # and a good one resets the count
    guard.check(torch.tensor(float("inf")), 9, "16-mixed")
    with pytest.raises(UserError, match=r"inf at step 10.*16-mixed.*trainer.precision=bf16-mixed.*model.llm.dtype"):
        guard.check(torch.tensor(float("inf")), 10, "16-mixed")
    assert issubclass(gpu.NonFiniteLossError, UserError)


# --- out of memory ---------------------------------------------------------------------------------------------
OOM_TEXT = ("CUDA out of memory. Tried to allocate 2.32 GiB. GPU 0 has a total capacity of 14.75 GiB of which "
            "1.06 GiB is free. Of the allocated memory 12.9 GiB is allocated by PyTorch")


def test_oom_becomes_a_user_error_naming_the_knobs():
    with pytest.raises(UserError) as info:
        with gpu.explain_oom(batch_size=16, precision="32-true", gradient_checkpointing=False, lora=None):
            raise torch.cuda.OutOfMemoryError(OOM_TEXT)
    msg = str(info.value)
    assert "\n" not in msg and "Tried to allocate 2.32 GiB" in msg and "Of the allocated" not in msg
    for knob in ("data.batch_size (now 16", "model.llm.gradient_checkpointing=true", "trainer.precision=bf16-mixed",
                 "model.llm.lora"):
        assert knob in msg, msg
    # knobs already turned are not suggested again
    with pytest.raises(UserError) as info:
        with gpu.explain_oom(batch_size=2, precision="bf16-mixed", gradient_checkpointing=True, lora={"r": 8},
                             llm_dtype="float32", visual_tokens=576):
            raise RuntimeError("CUDA error: out of memory")
    msg = str(info.value)
    assert "gradient_checkpointing" not in msg and "trainer.precision" not in msg
    assert "model.llm.dtype=bfloat16" in msg and "model.visual_tokens=576" in msg


def test_other_errors_pass_through_explain_oom():
    with pytest.raises(ValueError, match="unrelated"):
        with gpu.explain_oom(batch_size=1):
            raise ValueError("unrelated")
    assert gpu.is_oom(torch.cuda.OutOfMemoryError("x")) and not gpu.is_oom(RuntimeError("shape mismatch"))


# --- gradient checkpointing, LoRA, dtype -----------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tok):
    batch = make_batch(tok)
    plain, ckpt = make_vlm(tok).train(), make_vlm(tok, gradient_checkpointing=True).train()
    assert ckpt.llm.model.gradient_checkpointing and not plain.llm.model.gradient_checkpointing
    a, b = plain(batch).loss, ckpt(batch).loss
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_lora_trains_only_adapters_compressor_and_projector(tok):
    vlm = make_vlm(tok, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}).train()
    groups = vlm.param_groups()
    assert groups["llm"] and all(".lora_" in n for n, p in vlm.llm.named_parameters() if any(p is q for q in groups["llm"]))
    # what the align/instruct stages do (LitVLM._apply_stage): every group's params get requires_grad set
    for p in groups["vision"]:
        p.requires_grad_(False)
    for p in groups["compressor"] + groups["llm"]:
        p.requires_grad_(True)
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("compressor.", "projector.")) or ".lora_" in n for n in trainable)
    assert any(".lora_" in n for n in trainable)
    assert vlm.num_llm_params() == sum(p.numel() for n, p in vlm.llm.named_parameters() if ".lora_" not in n)

    base = {n: p.detach().clone() for n, p in vlm.llm.named_parameters() if ".lora_" not in n}
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    vlm(make_batch(tok)).loss.backward()
    assert all(p.grad is not None for p in groups["compressor"])
    assert all(p.grad is not None for n, p in vlm.llm.named_parameters() if "lora_A" in n)
    opt.step()
    assert all(torch.equal(p, base[n]) for n, p in vlm.llm.named_parameters() if ".lora_" not in n)


def test_lora_in_litvlm_stage(tok):
    from lit_vlm.module import LitVLM

    lit = LitVLM(vision=dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32),
                 llm=dict(hidden_size=32, num_layers=1, num_heads=2, lora={"r": 2}), visual_tokens=4)
    trainable = [n for n, p in lit.vlm.named_parameters() if p.requires_grad]
    assert all(n.startswith(("compressor.", "projector.")) or ".lora_" in n for n in trainable)


def test_half_precision_frozen_base_with_fp32_adapters(tok):
    vlm = make_vlm(tok, dtype="bfloat16", lora={"r": 2})
    dtypes = {n: p.dtype for n, p in vlm.llm.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if ".lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if ".lora_" not in n)
    loss = vlm.train()(make_batch(tok)).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_lora_without_peft_says_how_to_install(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UserError, match=r"pip install lit_vlm\[lora\]"):
        make_vlm(tok, lora={"r": 2})


@pytest.mark.parametrize("llm, match", [
    (dict(lora={"rank": 2}), "llm.lora has unknown key 'rank'; allowed: r, alpha, dropout, target_modules"),
    (dict(lora={"r": 0}), "llm.lora.r=0"),
    (dict(lora={"target_modules": ["nope_proj"]}), "llm.lora cannot be applied"),
    (dict(dtype="float8"), "llm.dtype='float8' is not supported; allowed: float32, bfloat16, float16"),
    (dict(load_in_4bit=True), "needs llm.pretrained"),
])
def test_bad_knobs_are_user_errors(tok, llm, match):
    with pytest.raises(UserError, match=match):
        make_vlm(tok, **llm)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_4bit_needs_cuda(tok):
    with pytest.raises(UserError, match="load_in_4bit=true needs a CUDA GPU"):
        LLMConfig(pretrained="any/model", load_in_4bit=True).build(tok)


# --- estimates -------------------------------------------------------------------------------------------------
def test_memory_estimate_by_hand():
    gib = 1024**3
    est = gpu.estimate_train_memory(llm_params=gib, trainable_params=gib // 4, hidden=1024, layers=2,
                                    intermediate=4096, kv_dim=256, vocab=1000, batch=2, seq=512,
                                    llm_dtype="float32", precision="bf16-mixed", overhead_gib=0.5)
    assert est.weights == 4 and est.autocast_cache == 2 and est.grads_and_optimizer == 3
    tokens = 1024
    assert est.activations == pytest.approx(2 * tokens * (16 * 1024 + 8 * 4096 + 4 * 256) / gib)
    assert est.logits == pytest.approx(tokens * 1000 * 10 / gib)
    ckpt = gpu.estimate_train_memory(llm_params=gib, trainable_params=0, hidden=1024, layers=2, intermediate=4096,
                                     kv_dim=256, vocab=1000, batch=2, seq=512, llm_dtype="bfloat16",
                                     gradient_checkpointing=True)
    assert ckpt.weights == 2 and ckpt.autocast_cache == 0 and ckpt.activations < est.activations
    assert ckpt.total == pytest.approx(sum(v for k, v in ckpt.as_dict().items() if k != "total"))


def test_step_flops_by_hand():
    f = gpu.train_step_flops(llm_params_no_embed=10, hidden=2, layers=1, vocab=3, batch=1, seq=4, llm_trains="full")
    fwd = 4 * (2 * 10 + 4 * 4 * 2 + 2 * 2 * 3)
    assert f == 3 * fwd
    assert gpu.train_step_flops(llm_params_no_embed=10, hidden=2, layers=1, vocab=3, batch=1, seq=4,
                                gradient_checkpointing=True) == 3 * fwd
