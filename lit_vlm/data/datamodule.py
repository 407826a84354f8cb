"""VLMDataModule: the synthetic benchmark (default), a user's image folder, or hub datasets, as batches.

Images are decoded lazily, per row, when a batch is built.
"""

from __future__ import annotations

import warnings
from collections import Counter

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lit_vlm.data.sampler import ResumableSampler
from lit_vlm.data.synthetic import FAMILIES, build_synthetic_benchmark, load_image_folder
from lit_vlm.errors import UserError

SOURCES = ("synthetic", "folder", "hub")

# Our loader *is* resumable, through the datamodule's state_dict below; Lightning only checks the DataLoader.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


class Rows(Dataset):
    """One split as a torch Dataset of row dicts, with its row index."""

    def __init__(self, hf_dataset):
        self.data = hf_dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.data[index])
        row["index"] = index
        return row


class VLMDataModule(L.LightningDataModule):
    """Batches of (image, question, answer) for training and per-family evaluation.

    Args:
        source: "synthetic" (drawn offline with Pillow), "folder" (your images + metadata.jsonl per split) or
            "hub" (datasets by name, see ``hub``).
        data_dir: Cache folder of the synthetic benchmark, or the image folder for source "folder".
        seed: Seed of the synthetic benchmark and of the shuffling order.
        image_size: Resolution the synthetic images are drawn at (the processor resizes to the tower's).
        num_train: Training examples (synthetic).
        num_val: Validation examples (synthetic).
        num_test: Test examples (synthetic).
        families: Task families to use: reasoning, ocr.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (results do not depend on it).
        num_workers: DataLoader worker processes.
        task_options: Knobs of the synthetic generator (see lit_vlm.data.synthetic.DEFAULT_OPTIONS).
        hub: For source "hub": arguments of lit_vlm.data.hub.load_hub_mix (dataset names, subset sizes).
        processor: Python API only: the VLMProcessor; when None it is taken from the LightningModule.
    """

    def __init__(
        self,
        source: str = "synthetic",
        data_dir: str = "data_cache",
        seed: int = 0,
        image_size: int = 64,
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 500,
        families: list[str] = list(FAMILIES),
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        task_options: dict | None = None,
        hub: dict | None = None,
        processor=None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"data.source={source!r} is not allowed; use one of {', '.join(SOURCES)}")
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise UserError(f"data.families={list(families)} is not allowed; choose from {', '.join(FAMILIES)}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise UserError(f"data.{name}={value} must be a positive integer")
        self.source, self.data_dir, self.seed, self.image_size = source, data_dir, seed, image_size
        self.sizes = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
        self.families = list(families)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.task_options = task_options or {}
        self.hub = hub or {}
        self.processor = processor
        self.datasets = None
        self._sampler: ResumableSampler | None = None
        self._resume: dict | None = None

    # --- data --------------------------------------------------------------------------------------------
    def _load(self):
        if self.source == "synthetic":
            return build_synthetic_benchmark(
                self.data_dir, seed=self.seed, image_size=self.image_size, families=tuple(self.families),
                **self.sizes, **self.task_options,
            )
        if self.source == "folder":
            dd = load_image_folder(self.data_dir)
            return dd.filter(lambda fam: fam in self.families, input_columns="family") if len(self.families) < len(FAMILIES) else dd
        from lit_vlm.data.hub import load_hub_mix

        return load_hub_mix(**self.hub)

    def prepare_data(self) -> None:
        if self.source == "synthetic":
            self._load()  # generate once, on one process; setup() then reads the cache

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            if self.trainer is None:
                raise RuntimeError("VLMDataModule needs a processor: pass processor= or attach it to a Trainer")
            self.processor = self.trainer.lightning_module.processor
        if self.datasets is None:
            self.datasets = self._load()

    def family_counts(self, split: str) -> dict[str, int]:
        return dict(Counter(self.datasets[split]["family"]))

    def _rows(self, split: str) -> Rows:
        if split not in self.datasets:
            raise UserError(f"the data has no {split!r} split; it has {', '.join(self.datasets)}")
        return Rows(self.datasets[split])

    # --- loaders -----------------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            self._rows(split),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.processor.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        rows = self._rows("train")
        self._sampler = ResumableSampler(len(rows), self.seed, self.batch_size)
        if self._resume:
            self._sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
            self._resume = None
        return self._loader("train", self.batch_size, self._sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    # --- exact resume: Lightning stores this in checkpoints ---------------------------------------------------
    def state_dict(self) -> dict:
        if self.trainer is None or self._sampler is None:
            return {}
        # 'processed' counts the batch whose end triggered this checkpoint; Lightning resumes after it.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
