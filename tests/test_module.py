"""The LightningModule end to end on tiny configs: it learns, it resumes exactly, evaluation is invariant."""

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


def test_resume_mid_epoch_is_exact(tmp_path):
    # 48 examples / batch 8 = 6 batches an epoch: the step-5 checkpoint sits mid-epoch.
    full_metrics, full_state = _fit_and_validate(tmp_path, ckpt_dir=tmp_path / "ckpts")
    ckpt = tmp_path / "ckpts" / "step=5.ckpt"
    assert ckpt.exists()
    resumed_metrics, resumed_state = _fit_and_validate(tmp_path, ckpt_path=str(ckpt))
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=0, atol=0, msg=name)
    assert resumed_metrics == full_metrics


def test_evaluation_is_batch_size_invariant(tmp_path):
    L.seed_everything(0)
    module = tiny_module()
    results = []
    for eval_batch_size in (1, 5, 24):
        dm = tiny_data(tmp_path, module, eval_batch_size=eval_batch_size)
        results.append(trainer(tmp_path).validate(module, dm, verbose=False)[0])
    accuracy = {k: v for k, v in results[0].items() if "accuracy" in k or "anls" in k or "cer" in k}
    assert accuracy
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
