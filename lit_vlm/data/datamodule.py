"""VLMDataModule: the synthetic benchmark (default), a user's image folder, or hub datasets, as batches.

Images are decoded lazily, per row, when a batch is built.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from lit_vlm.data.sampler import ResumableLoader, ResumableSampler
from lit_vlm.constants import FAMILIES
from lit_vlm.data.synthetic import build_synthetic_benchmark, load_image_folder
from lit_vlm.errors import UserError

SOURCES = ("synthetic", "folder", "hub")


@dataclass
class HubConfig:
    """Hub datasets for source "hub": the arguments of lit_vlm.data.hub.load_hub_mix, typed so that a dotted
    override (``--data.hub.streaming=false``) arrives as the field's type, not as a string."""

    train: list[str | dict] = field(default_factory=list)
    """Training sets: registry names ("textvqa:train" picks the source split) or spec mappings."""
    val: list[str | dict] = field(default_factory=list)
    """Validation sets, as train."""
    test: list[str | dict] = field(default_factory=list)
    """Test sets, as train."""
    max_examples: int | dict | None = None
    """Rows per data set: an int, or a dict keyed by entry and/or by split (the entry wins); None: all."""
    streaming: bool = False
    """Stream the sets instead of downloading them whole."""
    data_files: dict | None = None
    """Entry -> local files (and "<entry>/images" -> image files), instead of the hub."""
    seed: int | None = None
    """Seed of the subset draw."""
    on_bad_image: str | None = None
    """What to do with an undecodable image (see load_hub_mix)."""
    cache_dir: str | None = None
    """The datasets cache folder."""
    shuffle_buffer: int | None = None
    """Streaming only: rows in the seeded shuffle buffer; None sizes it from the rows asked for
    (lit_vlm.data.hub.shuffle_buffer_for)."""

    def as_kwargs(self) -> dict:
        """The fields that differ from their defaults (so a config's fingerprint does not change with them)."""
        default = HubConfig()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


@dataclass
class TaskOptions:
    """Knobs of the synthetic generator (lit_vlm.data.synthetic.DEFAULT_OPTIONS); unset (None) knobs keep
    the generator's defaults. Typed, so ``--data.task_options.max_shapes=3`` arrives as an int."""

    colors: list[str] | None = None
    """Colours the shapes (and the highlighted OCR character) are drawn in."""
    shapes: list[str] | None = None
    """Shapes the reasoning scenes use."""
    max_shapes: int | None = None
    """Most shapes in one scene."""
    reasoning_tasks: dict[str, float] | None = None
    """Reasoning task -> sampling weight."""
    ocr_tasks: dict[str, float] | None = None
    """OCR task -> sampling weight."""
    ocr_alphabet: str | None = None
    """Characters an OCR string is drawn from."""
    ocr_length: list[int] | None = None
    """[min, max] characters per line."""
    font_sizes: list[int] | None = None
    """Font sizes at 64 px (scaled with image_size)."""
    ocr_layout: str | None = None
    """free, grid or grid_left."""
    ocr_lines: int | None = None
    """Lines of text (grid layouts)."""
    ocr_cell: int | None = None
    """Grid cell size at 64 px (grid layouts)."""
    ocr_cells: dict[int, float] | None = None
    """Graded OCR (grid layouts): character cell size at 64 px (4, 8, 16, 32 or 64) -> sampling weight."""
    shape_radius: list[float] | None = None
    """[lo, hi] radius of a shape as a fraction of its 16 px scene cell (equal bounds: one size for all)."""
    fact_names: int | None = None
    """The "fact" reasoning task: how many two-letter names have a digit per object count to be learned."""
    fact_zipf: float | None = None
    """The "fact" task: Zipf exponent of how often each name is asked (0: all equally often)."""
    fact_seed: int | None = None
    """The "fact" task: seed of the names and their digits (fixed across splits and data seeds)."""
    fact_key: str | None = None
    """The "fact" task: what the image supplies to the lookup: "count" (objects), "color" (all objects share one) or
    "name" (nothing: the digit is the name's alone)."""
    fact_digits: int | None = None
    """The "fact" task with fact_key "name": digits in each name's answer (default 1)."""
    fact_shown: float | None = None
    """The "fact" task with fact_key "name": share of images that also show the name's answer (its first symbol,
    then one of the OCR alphabet) as the red character of an OCR grid (default 0: the image plays no part; see
    results/pilot_cpu_law_r15)."""
    fact_shown_by: str | None = None
    """The "fact" task with fact_shown: "image" (each image shows the answer with that probability, the default)
    or "name" (that share of the names, spread over the frequency ranks, shown in all their images, the rest in
    none: what the LLM must store for the hidden names does not depend on V)."""
    fact_hidden: str | None = None
    """The "fact" task with fact_shown: an image that does not show the answer is "grid" (an OCR grid with no red
    character, the default) or "scene" (shapes, no text: that the image does not help is plain to see)."""
    fact_cells: dict[int, float] | None = None
    """The "fact" task with fact_shown: character sizes of its OCR images, {cell px: weight} as ocr_cells (None:
    ocr_cells')."""
    fact_cells_by: str | None = None
    """The "fact" task with fact_shown_by "name" and fact_cells: "image" (each image draws its size, the default) or
    "name" (each shown name one size for all its images, so a name is readable at a V or not)."""
    fact_split: bool | None = None
    """The "fact" task: training asks only the names of even frequency rank, validation and test the odd ones
    (default false), so that what the VLM learns about names never reaches the tested ones."""


def _task_options(value) -> dict:
    """The knobs that are set (None: the generator's default), from a TaskOptions or a dict (Python, a grid)."""
    value = asdict(value) if value is not None and not isinstance(value, dict) else (value or {})
    return {k: v for k, v in value.items() if v is not None}


def _hub_config(value) -> HubConfig:
    if value is None or isinstance(value, HubConfig):
        return value or HubConfig()
    names = {f.name for f in fields(HubConfig)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise UserError(f"data.hub has unknown key {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    return HubConfig(**value)


IMAGE_MEMO_BYTES = 256 << 20  # decoded training images kept per loader and worker (cpu_mini's 8,000 take 98 MB)


class Rows(Dataset):
    """One split as a torch Dataset of row dicts, with its row index.

    With ``memo_images`` (training that reads rows more than once), ``__getitems__`` keeps each decoded image as
    its RGB uint8 array, up to IMAGE_MEMO_BYTES: decoding the PNGs again every epoch was most of a small cell's
    step. The processor turns the array into bitwise the pixels of the PIL image it came from.
    With ``feature_rows`` (a grid cell's feature cache answers by row), each row carries its ``feature_row``
    instead of its image, and no image is read at all.
    """

    def __init__(self, hf_dataset, memo_images: bool = False, feature_rows: np.ndarray | None = None):
        self.feature_rows = feature_rows
        if feature_rows is not None and "image" in hf_dataset.column_names:
            hf_dataset, memo_images = hf_dataset.remove_columns("image"), False
        self.data = hf_dataset
        memo_images = memo_images and "image" in hf_dataset.column_names
        self.images: dict[int, np.ndarray] | None = {} if memo_images else None
        self._memo_bytes = 0
        if memo_images:
            self._text = hf_dataset.remove_columns("image")
            self._image_column = hf_dataset.select_columns(["image"])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.data[index])
        row["index"] = index
        if self.feature_rows is not None:
            row["feature_row"] = int(self.feature_rows[index])
        return row

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch's rows in one read (the DataLoader's fetcher prefers this): the same rows as __getitem__,
        without datasets' per-row formatting, which cost a small cell more than its arithmetic."""
        if self.images is None:
            columns = self.data[list(indices)]
            if self.feature_rows is not None:
                columns["feature_row"] = self.feature_rows[list(indices)].tolist()
            return [{**{k: v[i] for k, v in columns.items()}, "index": index} for i, index in enumerate(indices)]
        columns = self._text[list(indices)]
        missing = list(dict.fromkeys(i for i in indices if i not in self.images))
        decoded = dict(zip(missing, self._image_column[missing]["image"])) if missing else {}
        rows = []
        for i, index in enumerate(indices):
            image = self.images.get(index)
            if image is None:
                image = np.asarray(decoded[index].convert("RGB"))
                if self._memo_bytes + image.nbytes <= IMAGE_MEMO_BYTES:
                    self.images[index] = image
                    self._memo_bytes += image.nbytes
            rows.append({**{k: v[i] for k, v in columns.items()}, "image": image, "index": index})
        return rows


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
        processor: The VLMProcessor of the model (LitVLM.processor), which owns the tokenizer and the image
            transform. The CLI hands it over; from Python pass ``processor=module.processor``.
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
        task_options: TaskOptions | None = None,
        hub: HubConfig | None = None,
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
        self.task_options = _task_options(task_options)
        self.hub = _hub_config(hub).as_kwargs()  # a dict also works from Python (and from a grid's YAML)
        self.processor = processor
        self.datasets = None
        # split -> a store row per row: set by a grid cell's feature cache (lit_vlm.grid.cache.attach) for the
        # splits it can answer by row; those batches carry feature_rows instead of pixel_values
        self.feature_rows: dict[str, np.ndarray] | None = None

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
            raise UserError("VLMDataModule needs the model's processor: VLMDataModule(..., processor=module.processor)")
        if self.datasets is None:
            self.datasets = self._load()

    def family_counts(self, split: str) -> dict[str, int]:
        return dict(Counter(self.datasets[split]["family"]))

    def _rows(self, split: str, memo_images: bool = False) -> Rows:
        if split not in self.datasets:
            raise UserError(f"the data has no {split!r} split; it has {', '.join(self.datasets)}")
        return Rows(self.datasets[split], memo_images=memo_images, feature_rows=(self.feature_rows or {}).get(split))

    def _train_rows_repeat(self) -> bool:
        """Whether this fit reads the training rows more than once (then its loader keeps decoded images)."""
        t = self.trainer
        if t is None:
            return False
        if t.max_steps is not None and t.max_steps > 0:
            return t.max_steps * t.accumulate_grad_batches * self.batch_size > len(self.datasets["train"])
        return t.max_epochs != 1

    # --- loaders -----------------------------------------------------------------------------------------
    def _workers(self) -> dict:
        return {"collate_fn": self.processor.collate, "num_workers": self.num_workers,
                "persistent_workers": self.num_workers > 0}

    def _ranks(self) -> tuple[int, int]:
        """(rank, world size) of the Trainer this data is attached to; (0, 1) outside one or without DDP."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        rows = self._rows(split)
        rank, world = self._ranks()
        if world == 1:
            return DataLoader(rows, batch_size=batch_size, shuffle=False, **self._workers())
        # Each rank scores rows rank, rank + world, ...: every row exactly once. Lightning's default
        # DistributedSampler pads the split by repeating rows, which would count them twice in the metrics.
        sampler = UnrepeatedDistributedSampler(rows, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, **self._workers())

    def train_dataloader(self) -> ResumableLoader:
        rows = self._rows("train", memo_images=self._train_rows_repeat())
        rank, world = self._ranks()
        sampler = ResumableSampler(len(rows), self.seed, self.batch_size, num_replicas=world, rank=rank)
        return ResumableLoader(rows, batch_size=self.batch_size, sampler=sampler, **self._workers())

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)
