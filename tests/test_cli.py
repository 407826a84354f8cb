"""The command line: every YAML in configs/ parses, and every bad input ends in one clear line, exit 2."""

from pathlib import Path

import pytest
import torch

from lit_vlm.__main__ import main
from lit_vlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIT_CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "hub").glob("*.yaml"))
GRID_CONFIGS = sorted((ROOT / "configs" / "grid").glob("*.yaml"))


def run_cli(args, capsys, monkeypatch=None) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["lit_vlm", *args])  # as if typed: LightningCLI warns when argv and args differ
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("config", FIT_CONFIGS, ids=lambda p: p.name)
def test_fit_configs_parse(config, capsys):
    code, out, _ = run_cli(["fit", "--config", str(config), "--print_config"], capsys)
    assert code == 0
    assert "model:" in out and "visual_tokens" in out


@pytest.mark.parametrize("config", GRID_CONFIGS, ids=lambda p: p.name)
def test_grid_configs_parse(config):
    from lit_vlm.grid import GridConfig, build_parser, validate

    parser = build_parser()
    init = parser.instantiate(parser.parse_args(["--config", str(config)]))
    cfg = GridConfig(**{k: init[k] for k in GridConfig.__dataclass_fields__})
    if not cfg.vision.pretrained:  # hub towers need their checkpoint's config to know the grid
        validate(cfg)
    assert cfg.llms and cfg.visual_tokens


def test_help_shows_field_docs(capsys):
    code, out, _ = run_cli(["fit", "--help"], capsys)
    assert code == 0
    assert "visual_tokens" in out
    from lit_vlm.grid import build_parser

    grid_help = " ".join(build_parser().format_help().split())
    assert "Scale each cell's learning rates" in grid_help  # a dataclass field's docstring (GridConfig.lr_width)
    assert "classify every patch's object and character" in grid_help  # TowerConfig.objective


DEBUG = str(ROOT / "configs" / "debug.yaml")


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "override, needles",
    [
        (["--model.compressor", "bogus"], ["bogus", "avgpool"]),
        (["--model.visual_tokens", "9"], ["9", "1, 4, 16"]),
        (["--model.llm.hidden_size", "30", "--model.llm.num_heads", "4"], ["30"]),
        (["--model.vision.model_type", "resnet"], ["resnet"]),
        (["--model.not_a_key", "1"], ["not_a_key"]),
    ],
    ids=["compressor", "visual_tokens", "llm_hidden", "vision_type", "unknown_key"],
)
def test_bad_model_input(override, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["fit", "--config", DEBUG, *override], capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "lightning_logs").exists()


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml")


def test_unparsable_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n  visual_tokens: 4\n")
    code, _, err = run_cli(["fit", "--config", str(bad)], capsys)
    assert_one_line_error(code, err, "bad.yaml")


def test_checkpoint_that_is_not_a_checkpoint(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "fake.ckpt"
    fake.write_text("not a checkpoint")
    code, _, err = run_cli(["validate", "--config", DEBUG, "--ckpt_path", str(fake)], capsys)
    assert_one_line_error(code, err, "fake.ckpt")
    weights = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(1)}, weights)
    code, _, err = run_cli(["validate", "--config", DEBUG, "--ckpt_path", str(weights)], capsys)
    assert_one_line_error(code, err, "weights.ckpt", "state_dict")


def test_empty_data_dir(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        ["fit", "--config", DEBUG, "--data.source", "folder", "--data.data_dir", str(empty)], capsys
    )
    assert_one_line_error(code, err, str(empty))


def test_unreadable_image_in_data_dir(capsys, tmp_path):
    folder = tmp_path / "mydata"
    for split in ("train", "validation", "test"):
        (folder / split).mkdir(parents=True)
        (folder / split / "a.png").write_bytes(b"this is not a png")
        (folder / split / "metadata.jsonl").write_text(
            '{"file_name": "a.png", "question": "what is the text?", "answer": "AB", "family": "ocr"}\n'
        )
    code, _, err = run_cli(
        ["fit", "--config", DEBUG, "--data.source", "folder", "--data.data_dir", str(folder)], capsys
    )
    assert_one_line_error(code, err, "a.png")


QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.mark.slow
def test_quickstart_runs_with_the_committed_tower(tmp_path, capsys):
    """The README's main job, shortened: the committed stage-0 tower loads and a few steps train; the
    checkpoint then loads from another working directory (it holds the tower, the relative path is not read)."""
    args = ["fit", "--config", QUICKSTART, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--data.data_dir", str(tmp_path / "data"), "--data.num_train", "64", "--data.num_val", "16",
            "--data.num_test", "16", "--data.eval_batch_size", "16"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the config names the tower relative to the repository root, as README runs it
        patch.setattr("sys.argv", ["lit_vlm", *args])
        assert main(args) == 0
    assert list(tmp_path.rglob("last.ckpt"))
    ckpt = next(tmp_path.rglob("last.ckpt"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        from lit_vlm.module import LitVLM

        module = LitVLM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        assert module.hparams["vision"]["weights"] == "results/cpu_mini/tower.safetensors"  # kept as written
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        for name, value in module.state_dict().items():
            torch.testing.assert_close(value, state[name], rtol=0, atol=0, msg=name)
        args = ["validate", "--config", QUICKSTART, "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false",
                "--trainer.logger", "false", "--data.data_dir", str(tmp_path / "data"), "--data.num_train", "64",
                "--data.num_val", "16", "--data.num_test", "16", "--data.eval_batch_size", "16"]
        patch.setattr("sys.argv", ["lit_vlm", *args])
        assert main(args) == 0


def test_bad_tower_weights(capsys, tmp_path):
    code, _, err = run_cli(["fit", "--config", QUICKSTART, "--model.vision.weights", str(tmp_path / "nope.safetensors")],
                           capsys)
    assert_one_line_error(code, err, "nope.safetensors", "does not exist")


@pytest.mark.parametrize(
    "override, needles",
    [
        (["--model.optimizer.lr=-0.001"], ["model.optimizer.lr=-0.001", "positive"]),
        (["--trainer.max_steps=-5"], ["max_steps", "-5"]),
        (["--data.hub.streaming=maybe"], ["streaming", "maybe"]),
    ],
    ids=["negative_lr", "negative_max_steps", "streaming_not_bool"],
)
def test_bad_values_are_one_line(override, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["fit", "--config", DEBUG, *override], capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "data_cache").exists()


def test_dotted_overrides_into_the_hub_section_keep_their_types(capsys):
    import yaml

    code, out, _ = run_cli(["fit", "--config", DEBUG, "--data.source", "hub", "--data.hub.streaming=false",
                            "--data.hub.max_examples=7", "--print_config"], capsys)
    assert code == 0
    hub = yaml.safe_load(out)["data"]["hub"]
    assert hub["streaming"] is False and hub["max_examples"] == 7
    code, out, _ = run_cli(["fit", "--config", DEBUG, "--data.task_options.max_shapes=3",
                            "--model.compressor_options.depth=2", "--print_config"], capsys)
    config = yaml.safe_load(out)
    assert code == 0 and config["data"]["task_options"]["max_shapes"] == 3
    assert config["model"]["compressor_options"]["depth"] == 2
    from lit_vlm.data.datamodule import VLMDataModule

    assert VLMDataModule(source="hub", hub={"streaming": False, "train": ["x"]}).hub == {"train": ["x"]}
    with pytest.raises(UserError, match="data.hub has unknown key 'stream'"):
        VLMDataModule(source="hub", hub={"stream": True})


def test_out_of_memory_is_one_line_naming_the_knobs(capsys, tmp_path, monkeypatch):
    from lit_vlm.module import LitVLM

    def oom(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LitVLM, "training_step", oom)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["fit", "--config", DEBUG, "--data.data_dir", str(tmp_path / "data")], capsys)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("Saving the dataset"))  # progress
    assert_one_line_error(code, err, "ran out of memory", "data.batch_size (now 16", "model.visual_tokens=4")


def test_typed_task_options_cover_every_generator_knob():
    from dataclasses import fields

    from lit_vlm.data.datamodule import TaskOptions, VLMDataModule
    from lit_vlm.data.synthetic import DEFAULT_OPTIONS

    assert {f.name for f in fields(TaskOptions)} == set(DEFAULT_OPTIONS)
    assert VLMDataModule(task_options=TaskOptions(max_shapes=3)).task_options == {"max_shapes": 3}
    assert VLMDataModule(task_options={"max_shapes": 3}).task_options == {"max_shapes": 3}


def test_pickled_objects_in_a_checkpoint_are_refused(capsys, tmp_path, monkeypatch):
    import collections

    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": collections.OrderedDict(a=Path("x"))}, evil)  # a pickled class
    code, _, err = run_cli(["validate", "--config", DEBUG, "--ckpt_path", str(evil)], capsys)
    assert_one_line_error(code, err, "evil.ckpt", "not a loadable checkpoint")
