"""The feature cache: the frozen tower's features, computed once per image and found again by the image itself.

``CachedTower`` stands in for the frozen ``VisionTower`` inside a cell's VLM and is called exactly like it,
with pixel values. It hashes each image's pixels (the exact bytes the processor made) and returns the
features the real tower computed for those bytes when the store was built; an image the store does not hold
goes through the real tower. The key is the input itself, so the cache cannot return another image's
features or a stale tower's: a changed tower, feature layer, resolution or dataset only costs misses. The
store on disk (``features/<digest>/``: ``keys.npy`` and a memory-mapped ``features.npy``) is named by the
tower's weights, its feature layers and the keys of the images it holds, so each tower and dataset gets its own.
The store holds full-size features only: a resized image (the ``downsample`` compressor's) bypasses it.

The data, the collate function, the VLM and the FLOP counter know nothing of it: ``attach`` swaps the tower
for the length of a cell (its checkpoint is saved with the real tower, loadable without the cache).
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


class FeatureStore:
    """Features of a set of images, memory-mapped from ``folder``, found by image key."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows = {bytes(k): i for i, k in enumerate(np.load(folder / "keys.npy"))}
        self.features = np.load(folder / "features.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rows)


class CachedTower(nn.Module):
    """The frozen tower with a lookup in front: features of known images from the store, others computed."""

    def __init__(self, tower: VisionTower, store: FeatureStore):
        super().__init__()
        self.tower, self.store = tower, store
        self.hits = self.misses = 0

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


@contextmanager
def attach(vlm: nn.Module, store: FeatureStore) -> Iterator[CachedTower]:
    """``vlm.vision_tower`` answered from ``store`` inside the block; the real tower again after it."""
    real = vlm.vision_tower
    vlm.vision_tower = CachedTower(real, store)
    try:
        yield vlm.vision_tower
    finally:
        vlm.vision_tower = real


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
    position = {split: 0 for split in datasets}
    for split, pixels in tqdm(_pixel_batches(datasets, tower), desc="feature keys", leave=False):
        for p in pixels.numpy():
            first.setdefault(image_key(p), (split, position[split]))
            position[split] += 1
    keys = list(first)
    digest = hashlib.sha256(tower_fingerprint(tower).encode() + b"".join(keys)).hexdigest()[:16]
    folder = root / digest
    remove_stale_builds(root)
    if (folder / "features.npy").exists():
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
    return FeatureStore(folder)
