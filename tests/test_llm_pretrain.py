"""Stage 1: each LLM size pretrained on the benchmark's facts as text, saved once, loaded by every cell."""

import numpy as np
import pytest
import torch
import yaml

from lit_vlm.data import synthetic
from lit_vlm.data.tokenizer import load_tokenizer
from lit_vlm.errors import UserError
from lit_vlm.llm_pretrain import PretrainConfig, load_or_pretrain, pretrain_llm
from lit_vlm.model.vlm import LLMConfig

FACTS = {"reasoning_tasks": {"fact": 1.0}, "fact_key": "name", "fact_names": 6, "fact_zipf": 0.0}
SHOWN = {**FACTS, "fact_shown": 0.5, "ocr_layout": "grid", "ocr_alphabet": "ACEHKNPTX4"}
TINY_LLM = LLMConfig(hidden_size=16, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.parametrize("options", [FACTS, {**FACTS, "fact_digits": 2}, SHOWN], ids=["digit", "two-digits", "shown"])
def test_text_questions_give_each_name_the_answer_its_image_questions_have(options):
    opts = synthetic.resolve_options(**options)
    rows = [synthetic._draw("train", i, 3, 32, ("reasoning",), 0, opts) for i in range(60)]
    in_images = {r["question"]: r["answer"] for r in rows}
    as_text = dict(synthetic.fact_questions(np.random.default_rng(0), 400, **options))
    assert set(in_images) <= set(as_text)  # 6 equally common names: 400 draws hold them all
    assert all(as_text[q] == a for q, a in in_images.items())


@pytest.mark.parametrize("options", [{"reasoning_tasks": {"count": 1.0}}, {**FACTS, "fact_key": "color"}])
def test_text_questions_need_the_name_keyed_fact_task(options):
    with pytest.raises(UserError, match="fact_key: name") as err:
        synthetic.fact_questions(np.random.default_rng(0), 4, **options)
    assert "\n" not in str(err.value)


def test_pretraining_stores_the_facts(tokenizer):
    before = pretrain_llm(TINY_LLM, tokenizer, FACTS, PretrainConfig(max_steps=0, eval_questions=200))[1]
    llm, after = pretrain_llm(TINY_LLM, tokenizer, FACTS, PretrainConfig(max_steps=150, lr=1e-2, eval_questions=200))
    assert before < 0.3 and after > 0.9  # 6 names, one digit each: learned from text alone


def test_the_pretrained_llm_is_saved_once_and_refused_for_another_setup(tmp_path, tokenizer, monkeypatch):
    cfg = PretrainConfig(max_steps=5, checkpoint_dir=str(tmp_path / "llms"), eval_questions=50)
    trained = pretrain_llm(TINY_LLM, tokenizer, FACTS, cfg)[0].state_dict()  # what the stage makes, deterministically
    path = load_or_pretrain("xs", TINY_LLM, tokenizer, FACTS, cfg)
    assert path == tmp_path / "llms" / "xs.safetensors" and path.is_file() and not list(path.parent.glob(".*tmp"))

    def no_training(*args, **kwargs):
        raise AssertionError("a saved pretrained LLM was trained again")

    monkeypatch.setattr("lit_vlm.llm_pretrain.pretrain_llm", no_training)
    llm = TINY_LLM.build(tokenizer)
    assert load_or_pretrain("xs", TINY_LLM, tokenizer, FACTS, cfg, llm=llm) == path
    again = llm.state_dict()
    assert trained.keys() == again.keys() and all(torch.equal(trained[k], again[k]) for k in trained)
    assert llm.get_input_embeddings().weight is llm.get_output_embeddings().weight  # still tied after loading
    for llm, options, stage in [(TINY_LLM, {**FACTS, "fact_seed": 1}, cfg),
                                (TINY_LLM, FACTS, PretrainConfig(**{**cfg.__dict__, "max_steps": 6}))]:
        with pytest.raises(UserError, match="made for another LLM, llm_pretrain or benchmark"):
            load_or_pretrain("xs", llm, tokenizer, options, stage)
    wider = LLMConfig(hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(UserError, match="made for another LLM"):
        load_or_pretrain("xs", wider, tokenizer, FACTS, cfg, llm=wider.build(tokenizer))
    with pytest.raises(UserError, match="cannot be read for llms.xs"):  # this file, into an LLM of another shape
        load_or_pretrain("xs", TINY_LLM, tokenizer, FACTS, cfg, llm=wider.build(tokenizer))
    path.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot be read"):
        load_or_pretrain("xs", TINY_LLM, tokenizer, FACTS, cfg)


def test_options_that_change_only_the_images_leave_the_fingerprint_alone():
    from lit_vlm.llm_pretrain import _fingerprint

    cfg = PretrainConfig(max_steps=5)
    base = _fingerprint(TINY_LLM, SHOWN, cfg)
    for images_only in (dict(fact_shown=0.3), dict(fact_shown_by="name"), dict(fact_hidden="scene"),
                        dict(fact_cells={32: 1.0}), dict(fact_split=True)):
        assert _fingerprint(TINY_LLM, {**SHOWN, **images_only}, cfg) == base, images_only
    assert _fingerprint(TINY_LLM, {**SHOWN, "fact_digits": 2}, cfg) != base  # the text answers change


def test_grid_cells_start_from_their_sizes_pretrained_llm(tmp_path):
    from test_grid import TINY, load, read_rows, write_config

    from lit_vlm.grid import run_grid

    data = {**TINY["data"], "task_options": FACTS}
    stage = {"max_steps": 20, "checkpoint_dir": str(tmp_path / "llms"), "eval_questions": 50}
    cfg = load(write_config(tmp_path, llms={"xs": TINY["llms"]["xs"]}, visual_tokens=[1], data=data,
                            llm_pretrain=stage, trainer={**TINY["trainer"], "max_steps": 0}))
    run_grid(cfg)
    assert "stage 1: xs pretrained" in (tmp_path / "grid" / "grid.log").read_text()
    (checkpoint,) = {row["checkpoint"] for row in read_rows(tmp_path / "grid" / "results.csv")}  # one cell
    cell = torch.load(checkpoint, weights_only=True)["state_dict"]
    llm = cfg.llms["xs"].build(load_tokenizer())
    load_or_pretrain("xs", cfg.llms["xs"], load_tokenizer(), FACTS, cfg.llm_pretrain, llm=llm)
    # no VLM step was taken: the cell's LLM is exactly stage 1's
    assert all(torch.equal(cell[f"vlm.llm.{k}"], v) for k, v in llm.state_dict().items())


@pytest.mark.parametrize("overrides, needle", [
    ({"data": {"task_options": {"reasoning_tasks": {"count": 1.0}}}}, "LLM pretraining needs the fact task"),
    ({"llm_pretrain": {"max_steps": 5, "batch_size": 0}}, "llm_pretrain: max_steps=5, batch_size=0"),
])
def test_bad_stage_1_configs_are_one_line_before_any_file(tmp_path, overrides, needle):
    from test_grid import TINY, load, write_config

    from lit_vlm.grid import run_grid

    stage = {"max_steps": 5, "checkpoint_dir": str(tmp_path / "llms"), **overrides.get("llm_pretrain", {})}
    data = {**TINY["data"], **overrides.get("data", {"task_options": FACTS})}
    cfg = load(write_config(tmp_path, data=data, llm_pretrain=stage))
    with pytest.raises(UserError, match=needle) as err:
        run_grid(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "grid").exists() and not (tmp_path / "llms").exists()
