"""The LightningModule end to end on tiny configs: it learns, it resumes exactly, evaluation is invariant."""

import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.module import LitVLM

TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
TINY_LLM = dict(model_type="llama", hidden_size=32, num_layers=1, num_heads=2)


def tiny_module(**overrides) -> LitVLM:
    args = dict(vision=TINY_VISION, llm=TINY_LLM, compressor="avgpool", visual_tokens=4, max_new_tokens=6)
    return LitVLM(**{**args, **overrides})


def tiny_data(tmp_path, module, **overrides) -> VLMDataModule:
    args = dict(data_dir=str(tmp_path / "data"), num_train=48, num_val=24, num_test=24, batch_size=8, eval_batch_size=8)
    return VLMDataModule(**{**args, **overrides}, processor=module.processor)


def trainer(tmp_path, **overrides) -> L.Trainer:
    args = dict(
        accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, default_root_dir=tmp_path,
    )
    return L.Trainer(**{**args, **overrides})


@pytest.mark.slow
def test_overfits_one_batch(tmp_path):
    L.seed_everything(0)
    module = tiny_module(optimizer={"lr": 1e-2, "warmup_ratio": 0.0})
    dm = tiny_data(tmp_path, module)
    dm.prepare_data()
    dm.setup("fit")
    rows = dm._rows("train")
    batch = dm.processor.collate([rows[i] for i in range(8)])  # overfit_batches trains on the first 8, in order
    first = module.vlm(batch).loss.item()
    t = trainer(tmp_path, max_steps=150, overfit_batches=1, limit_val_batches=0)
    t.fit(module, dm)
    module.eval()
    last = module.vlm(batch).loss.item()
    assert last < 0.1 * first, (first, last)


def test_stages_freeze_the_right_parameters():
    align = tiny_module(stage="align")
    groups = align.vlm.param_groups()
    assert not any(p.requires_grad for p in groups["llm"])
    assert not any(p.requires_grad for p in groups["vision"])
    assert all(p.requires_grad for p in groups["compressor"])
    instruct = tiny_module(stage="instruct", vision={**TINY_VISION, "frozen": False})
    assert all(p.requires_grad for group in instruct.vlm.param_groups().values() for p in group)


def _fit_and_validate(tmp_path, ckpt_dir=None, max_steps=12, ckpt_path=None):
    L.seed_everything(0)
    module = tiny_module()
    dm = tiny_data(tmp_path, module)
    callbacks = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_top_k=-1, filename="{step}"))
    t = trainer(tmp_path, max_steps=max_steps, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=bool(callbacks))
    t.fit(module, dm, ckpt_path=ckpt_path, weights_only=True)
    metrics = trainer(tmp_path).validate(module, dm, verbose=False)[0]
    return metrics, {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(tmp_path):
    # 48 examples / batch 8 = 6 batches an epoch: the step-5 checkpoint sits mid-epoch.
    full_metrics, full_state = _fit_and_validate(tmp_path, ckpt_dir=tmp_path / "ckpts")
    ckpt = tmp_path / "ckpts" / "step=5.ckpt"
    assert ckpt.exists()
    # Lightning saved the loader's own position (the stateful-dataloader protocol), not a loop counter.
    saved = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved == [{"epoch": 0, "batches_done": 5}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed_metrics, resumed_state = _fit_and_validate(tmp_path, ckpt_path=str(ckpt))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=0, atol=0, msg=name)
    assert resumed_metrics == full_metrics


def _memorised_module(tmp_path):
    """A tiny model trained until it answers its 16 training rows well above chance, and those rows as its
    validation split: the task metrics it is scored with are far from 0."""
    L.seed_everything(0)
    module = tiny_module(optimizer={"lr": 1e-2, "warmup_ratio": 0.0})
    dm = tiny_data(tmp_path, module, num_train=16, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    dm.datasets["validation"] = dm.datasets["train"]
    trainer(tmp_path, max_steps=200, limit_val_batches=0).fit(module, dm)
    return module, dm


@pytest.mark.slow
def test_evaluation_is_batch_size_invariant(tmp_path):
    module, dm = _memorised_module(tmp_path)
    results = []
    for eval_batch_size in (1, 5, 16):
        dm.eval_batch_size = eval_batch_size
        results.append(trainer(tmp_path).validate(module, dm, verbose=False)[0])
    accuracy = {k: v for k, v in results[0].items() if "accuracy" in k or "anls" in k or "cer" in k}
    assert accuracy
    # Above chance: the memorised rows are mostly answered right (exact match), so a mismatch would show.
    assert max(v for k, v in accuracy.items() if k.endswith("/accuracy")) > 0.5, accuracy
    for other in results[1:]:
        assert other["val/loss"] == pytest.approx(results[0]["val/loss"], rel=1e-5)
    for other in results[1:]:
        for key, value in accuracy.items():
            assert other[key] == pytest.approx(value, abs=1e-6), key


def test_cost_metrics_are_logged(tmp_path):
    module = tiny_module()
    dm = tiny_data(tmp_path, module)
    metrics = trainer(tmp_path).validate(module, dm, verbose=False)[0]
    n = module.vlm.num_llm_params(with_embeddings=False)
    assert metrics["cost/llm_params"] == n
    assert metrics["cost/visual_tokens"] == 4
    q = metrics["cost/text_tokens"]
    assert q > 0
    assert metrics["cost/inference_flops"] == pytest.approx(2 * n * (q + 4), rel=1e-6)


def test_predict_returns_answers(tmp_path):
    module = tiny_module()
    dm = tiny_data(tmp_path, module)
    predictions = trainer(tmp_path).predict(module, dm)
    rows = [row for batch in predictions for row in batch]
    assert len(rows) == 24
    assert {"question", "answer", "prediction", "family"} <= set(rows[0])


def _answer_tokens(dm, split):
    rows = dm._rows(split)
    batch = dm.processor.collate([rows[i] for i in range(len(rows))])
    return (batch["labels"] != -100).sum(1), batch["families"]


def test_eval_loss_is_a_per_token_mean_over_the_split(tmp_path):
    """Answers of 1 to 9 tokens: the loss is summed token losses / tokens, the same at every eval batch size."""
    L.seed_everything(0)
    module = tiny_module()
    options = {"ocr_length": [2, 8], "ocr_tasks": {"read": 1.0}}
    dm = tiny_data(tmp_path, module, task_options=options)
    dm.prepare_data()
    dm.setup("validate")
    tokens, families = _answer_tokens(dm, "validation")
    assert len(set(tokens.tolist())) > 2, tokens  # the split really mixes answer lengths
    rows = dm._rows("validation")
    module.eval()
    with torch.no_grad():
        sums, counts = module.vlm.token_losses(dm.processor.collate([rows[i] for i in range(len(rows))]))
    expected = float(sums.sum() / counts.sum())
    per_family = {f: float(sum(s for s, g in zip(sums, families) if g == f) / sum(c for c, g in zip(counts, families) if g == f))
                  for f in set(families)}
    # The old definition (per-batch means averaged by example count) is not this number on this split.
    assert float((sums / counts).mean()) != pytest.approx(expected, rel=1e-4)
    for eval_batch_size in (1, 5, 24):
        dm.eval_batch_size = eval_batch_size
        metrics = trainer(tmp_path).validate(module, dm, verbose=False)[0]
        assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5), eval_batch_size
        for family, value in per_family.items():
            assert metrics[f"val/loss_{family}"] == pytest.approx(value, rel=1e-5), (family, eval_batch_size)
    assert set(per_family) == {"reasoning", "ocr"}


def test_the_model_package_does_not_import_the_data_pipeline():
    code = "import sys, lit_vlm.model; print(sorted(m for m in sys.modules if m.startswith('lit_vlm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "lit_vlm.model.vlm" in out
    assert "lit_vlm.data" not in out and "lit_vlm.data.synthetic" not in out, out


def test_families_and_image_token_are_defined_once():
    from lit_vlm import constants
    from lit_vlm.data import hub, synthetic, tokenizer
    from lit_vlm.model import vlm
    from lit_vlm.scaling import table

    for module in (hub, synthetic, table):
        assert module.FAMILIES is constants.FAMILIES
    assert tokenizer.IMAGE_TOKEN is constants.IMAGE_TOKEN is vlm.IMAGE_TOKEN


def test_datamodule_without_the_model_processor_is_one_clear_error(tmp_path):
    from lit_vlm.errors import UserError

    dm = VLMDataModule(data_dir=str(tmp_path / "data"), num_train=8, num_val=4, num_test=4)
    with pytest.raises(UserError, match="processor=module.processor"):
        dm.setup("fit")


@pytest.mark.parametrize("key, value", [("lr", -0.001), ("llm_lr", 0.0), ("warmup_ratio", 1.5), ("weight_decay", -1)])
def test_bad_optimizer_values_are_refused(key, value):
    from lit_vlm.errors import UserError

    with pytest.raises(UserError, match=f"model.optimizer.{key}={value}"):
        tiny_module(optimizer={key: value})


def test_lr_schedule_is_warmup_then_cosine_to_the_floor():
    from lit_vlm.module import warmup_cosine_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine_schedule(opt, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.2)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.2 + 0.8 * 0.5, abs=1e-6) and lrs[-1] == pytest.approx(0.2, abs=1e-3)


def test_projector_hidden_sets_the_projector_width_and_the_llm_width_is_the_default():
    default = tiny_module().vlm
    llm_width = default.llm.get_input_embeddings().embedding_dim
    assert default.projector[0].out_features == llm_width  # LLaVA's projector: as wide as the LLM
    wide = tiny_module(projector_hidden=40)
    assert wide.hparams["projector_hidden"] == 40  # kept for a checkpoint's rebuild
    first, last = wide.vlm.projector[0], wide.vlm.projector[2]
    assert (first.in_features, first.out_features) == (default.projector[0].in_features, 40)
    assert (last.in_features, last.out_features) == (40, llm_width)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_projector_hidden_is_refused_in_one_line(value):
    from lit_vlm.errors import UserError

    with pytest.raises(UserError, match=rf"model.projector_hidden={value!r} is not allowed"):
        tiny_module(projector_hidden=value)
