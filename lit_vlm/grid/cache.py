"""The feature cache: the frozen tower's features, computed once per image and found again by the image itself,
or, in a grid cell, by the row it sits on.

``CachedTower`` stands in for the frozen ``VisionTower`` inside a cell's VLM and is called exactly like it,
with pixel values. It hashes each image's pixels (the exact bytes the processor made) and returns the
features the real tower computed for those bytes when the store was built; an image the store does not hold
goes through the real tower. The key is the input itself, so the cache cannot return another image's
features or a stale tower's: a changed tower, feature layer, resolution or dataset only costs misses. The
store on disk (``features/<digest>/``: ``keys.npy`` and a memory-mapped ``features.npy``) is named by the
tower's weights, its feature layers and the keys of the images it holds, so each tower and dataset gets its own.
The store holds full-size features only: a resized image (the ``downsample`` compressor's) bypasses it.

Keyed by row: decoding, normalising and hashing every image every step only to find features the store holds
was a third of a small cell's step. So the store also keeps, per dataset it was built from, the store row of
each of its rows (``rows-<dataset id>.npy``, the id from the dataset's fingerprint and length). ``attach``
given the cell's data hands the datamodule those maps (``VLMDataModule.feature_rows``) for the splits where it
can prove them: the store's name matches the cell's tower and the store's keys, the map is the one of this very
dataset, and a sample of rows hashed through the cell's own processor has the keys the map points to. Those
splits' batches then carry ``feature_rows`` instead of pixels and no image is decoded; any split that fails a
check, a resized image and a precision that casts the batch keep the pixel-keyed path above.

The collate function, the VLM and the FLOP counter know only that a batch may carry ``feature_rows`` instead of
``pixel_values``; ``attach`` swaps the tower (and the data's maps) for the length of a cell, so its checkpoint is
saved with the real tower, loadable without the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lit_vlm.data.processor import image_to_tensor
from lit_vlm.model.vision import VisionTower

BATCH = 128
VERIFY_ROWS = 32  # rows per split hashed when a cell attaches the store by row


def image_key(pixels: np.ndarray) -> bytes:
    """A 16-byte digest of one image's pixel values, shape and dtype."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{pixels.dtype}{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.digest()


def tower_fingerprint(tower: VisionTower) -> str:
    """Hash of the tower's weights and buffers (feature statistics included) and of its feature layers."""
    h = hashlib.sha256(json.dumps(list(tower.feature_layers)).encode())
    for name, value in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def store_digest(tower: VisionTower, keys: bytes) -> str:
    """A store's folder name: the tower's fingerprint and the keys of the images it holds, in store order."""
    return hashlib.sha256(tower_fingerprint(tower).encode() + keys).hexdigest()[:16]


def dataset_id(ds) -> str | None:
    """What names a dataset's row map: its ``datasets`` fingerprint (content-derived, saved with the data on
    disk) and its length; None for data without one (streamed), which then stays pixel-keyed."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if not fingerprint or not hasattr(ds, "__len__"):
        return None
    return hashlib.sha256(f"{fingerprint}:{len(ds)}".encode()).hexdigest()[:16]


class FeatureStore:
    """Features of a set of images, memory-mapped from ``folder``, found by image key (or by row map)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.keys = np.load(folder / "keys.npy")  # [n, 16] uint8, in store order
        self.rows = {bytes(k): i for i, k in enumerate(self.keys)}
        self.features = np.load(folder / "features.npy", mmap_mode="r")

    def row_map(self, ds) -> np.ndarray | None:
        """The store row of each row of ``ds`` as saved by build_store, or None (no map for this dataset)."""
        name = dataset_id(ds)
        path = self.folder / f"rows-{name}.npy"
        return np.load(path) if name is not None and path.exists() else None

    def __len__(self) -> int:
        return len(self.rows)


class CachedTower(nn.Module):
    """The frozen tower with a lookup in front: features of known images from the store, others computed."""

    def __init__(self, tower: VisionTower, store: FeatureStore):
        super().__init__()
        self.tower, self.store = tower, store
        self.hits = self.misses = self.row_hits = 0

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            return getattr(self._modules["tower"], name)  # the tower's own: image_size, grid_side, num_levels ...

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != (self.tower.image_size,) * 2:
            # a resized image (the downsample compressor): the store holds full-size features only, so
            # such images always go through the real tower, never to a lookup
            self.misses += len(pixel_values)
            return self.tower(pixel_values)
        if pixel_values.dtype != torch.float32:  # keys are of fp32 pixels ("*-true" precision casts the batch)
            self.misses += len(pixel_values)
            return self.tower(pixel_values)
        pixels = pixel_values.detach().cpu().numpy()
        rows = [self.store.rows.get(image_key(p)) for p in pixels]
        hit = [i for i, r in enumerate(rows) if r is not None]
        miss = [i for i, r in enumerate(rows) if r is None]
        self.hits, self.misses = self.hits + len(hit), self.misses + len(miss)
        out = torch.empty((len(rows), *self.store.features.shape[1:]), device=pixel_values.device)
        if hit:
            out[hit] = torch.from_numpy(self.store.features[[rows[i] for i in hit]]).to(out.device)
        if miss:
            out[miss] = self.tower(pixel_values[miss]).to(out.dtype)
        return out

    def lookup_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Features of store rows [B] (a batch's ``feature_rows``): what ``forward`` finds for those images."""
        self.hits, self.row_hits = self.hits + len(rows), self.row_hits + len(rows)
        return torch.from_numpy(self.store.features[rows.cpu().numpy()]).to(rows.device)

    def summary(self) -> str:
        """grid.log's line on the cache for one cell."""
        return f"feature cache: {self.hits} hits, {self.misses} misses ({self.row_hits} of the hits by row)"


def row_keys(vlm: nn.Module, store: FeatureStore, data, trainer=None) -> dict[str, np.ndarray]:
    """split -> store row of each of its rows, for the splits of ``data`` (a set-up VLMDataModule) where the
    row-keyed lookup gives exactly what the pixel-keyed one would; {} where images must stay pixels."""
    if vlm.compressor.resizes_image:
        return {}  # the tower sees resized images, which the store does not hold
    if trainer is not None and trainer.precision_plugin.convert_input(torch.zeros(1)).dtype != torch.float32:
        return {}  # "*-true" precision casts the pixels, which then miss the fp32 keys: the tower runs
    tower = vlm.vision_tower
    tower = getattr(tower, "tower", tower)  # the real tower behind a CachedTower
    if store_digest(tower, store.keys.tobytes()) != store.folder.name:
        return {}  # another tower (or feature layers) than the store's
    found = {}
    for split, ds in data.datasets.items():
        rows = store.row_map(ds)
        if rows is None or len(rows) != len(ds) or len(rows) == 0 or rows.min() < 0 or rows.max() >= len(store):
            continue
        sample = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), VERIFY_ROWS)).round().astype(int))
        pixels = data.processor.images_to_tensor(ds[sample.tolist()]["image"]).numpy()
        if all(image_key(p) == store.keys[rows[i]].tobytes() for p, i in zip(pixels, sample)):
            found[split] = rows
    return found


@contextmanager
def attach(vlm: nn.Module, store: FeatureStore, data=None, trainer=None) -> Iterator[CachedTower]:
    """``vlm.vision_tower`` answered from ``store`` inside the block; the real tower again after it. Given the
    cell's ``data`` (a VLMDataModule; set up here if it is not) and its ``trainer`` (for its precision), the
    splits ``row_keys`` proves are also looked up by row, their images never decoded."""
    real = vlm.vision_tower
    vlm.vision_tower = CachedTower(real, store)
    before = data.feature_rows if data is not None else None
    try:
        if data is not None:
            if data.datasets is None:
                data.setup("fit")
            data.feature_rows = row_keys(vlm, store, data, trainer) or None
        yield vlm.vision_tower
    finally:
        vlm.vision_tower = real
        if data is not None:
            data.feature_rows = before


def _pixel_batches(datasets: dict, tower: VisionTower, which: dict[str, list[int]] | None = None):
    """(split, pixels [B, 3, H, W]) over the images of every split (or the rows in ``which``), as the
    processor makes them for this tower (its resolution and normalisation)."""
    for split, ds in datasets.items():
        index = range(len(ds)) if which is None else which.get(split, [])
        for start in range(0, len(index), BATCH):
            images = ds[list(index[start : start + BATCH])]["image"]
            yield split, torch.stack([image_to_tensor(im, tower.image_size, tower.image_mean, tower.image_std)
                                      for im in images])


def _running(pid: int) -> bool:
    if os.name != "posix":
        return False  # cannot tell; unlinking a file another process holds open fails there anyway
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_builds(root: Path) -> None:
    """Temporary files of builds whose process is gone (kill -9 mid-build). Those of live processes stay:
    DDP ranks may build the same store side by side, each into its own file."""
    for tmp in root.glob("*/.*.npy.tmp"):  # .<name>.<pid>.npy.tmp
        pid = tmp.name.split(".")[-3]
        if pid.isdigit() and not _running(int(pid)):
            try:
                tmp.unlink()
            except OSError:
                pass


def build_store(root: Path, tower: VisionTower, datasets: dict) -> FeatureStore:
    """The store of ``tower``'s features for every image of ``datasets`` (split -> datasets.Dataset with an
    image column) under ``root``: loaded when it exists, else computed in batches into a temporary file
    and renamed into place."""
    tower.eval()
    first: dict[bytes, tuple[str, int]] = {}  # each distinct image once: key -> where it first occurs
    split_keys: dict[str, list[bytes]] = {split: [] for split in datasets}  # every row's key, in row order
    for split, pixels in tqdm(_pixel_batches(datasets, tower), desc="feature keys", leave=False):
        for p in pixels.numpy():
            key = image_key(p)
            first.setdefault(key, (split, len(split_keys[split])))
            split_keys[split].append(key)
    keys = list(first)
    folder = root / store_digest(tower, b"".join(keys))
    remove_stale_builds(root)
    if (folder / "features.npy").exists():
        _save_row_maps(folder, datasets, split_keys, keys)
        return FeatureStore(folder)

    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    which: dict[str, list[int]] = {}
    for split, i in first.values():
        which.setdefault(split, []).append(i)
    tmp = folder / f".features.{pid}.npy.tmp"
    shape = (len(keys), tower.num_levels, tower.num_patches, tower.hidden_size)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    done = 0
    with torch.no_grad():
        for _, pixels in tqdm(_pixel_batches(datasets, tower, which), desc="features", leave=False):
            out[done : done + len(pixels)] = tower(pixels).float().numpy()
            done += len(pixels)
    out.flush()
    del out
    keys_tmp = folder / f".keys.{pid}.npy.tmp"
    with keys_tmp.open("wb") as f:
        np.save(f, np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16))
    os.replace(keys_tmp, folder / "keys.npy")
    os.replace(tmp, folder / "features.npy")  # last: features.npy existing means the store is complete
    _save_row_maps(folder, datasets, split_keys, keys)
    return FeatureStore(folder)


def _save_row_maps(folder: Path, datasets: dict, split_keys: dict[str, list[bytes]], keys: list[bytes]) -> None:
    """Each dataset's row -> store row map (``rows-<dataset id>.npy``), from the keys just computed; written
    into place by rename, so a reader never sees half a map."""
    where = {k: i for i, k in enumerate(keys)}
    for split, ds in datasets.items():
        name = dataset_id(ds)
        if name is None or (folder / f"rows-{name}.npy").exists():
            continue
        tmp = folder / f".rows-{name}.{os.getpid()}.npy.tmp"
        with tmp.open("wb") as f:
            np.save(f, np.array([where[k] for k in split_keys[split]], dtype=np.int64))
        os.replace(tmp, folder / f"rows-{name}.npy")
