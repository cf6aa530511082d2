"""Readers for aligned input volumes (``connectome import``), all giving (z, y, x) arrays.

Accepted sources, detected from ``SRC``:

* a zarr array (format 2 or 3): ``path/to/array.zarr`` or ``group.zarr/array``;
* a multi-page TIFF: ``stack.tif`` / ``stack.tiff`` (one page per section);
* a folder of per-section images (``*.tif``, ``*.tiff``, ``*.png``), sorted by the numbers in
  their names (``s2.png`` before ``s10.png``);
* an HDF5 dataset: ``file.h5:/dataset`` (also ``.hdf5``).

Sources are small picklable descriptions; files are opened inside :meth:`read`, so a worker
process reads only the box it was given (out-of-core: memory is bounded by the block size).
Opening validates what can be checked cheaply (exists, 3 dimensions, uint8/uint16, all
sections the same shape) and raises :class:`UserInputError` naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectome.blockwise.geometry import Box
from connectome.errors import UserInputError

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class VolumeSource:
    description: str
    shape_zyx: tuple[int, int, int]
    dtype: str

    def read(self, box: Box) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def identity(self) -> dict:
        """What identifies the input for resume checks (path, shape, dtype, modification)."""
        return {"source": self.description, "shape_zyx": list(self.shape_zyx), "dtype": self.dtype}


@dataclass(frozen=True)
class ZarrSource(VolumeSource):
    path: str = ""

    def read(self, box):
        import zarr

        return np.asarray(zarr.open_array(self.path, mode="r")[box.slices])


@dataclass(frozen=True)
class TiffStackSource(VolumeSource):
    path: str = ""

    def read(self, box):
        import tifffile

        try:
            mm = tifffile.memmap(self.path, mode="r")
            return np.array(mm[box.slices])
        except (ValueError, OSError):
            pass  # compressed or non-contiguous: read the pages of this box
        z0, z1 = box.begin_zyx[0], box.end_zyx[0]
        pages = tifffile.imread(self.path, key=range(z0, z1))
        pages = pages.reshape((z1 - z0,) + pages.shape[-2:])
        return pages[:, box.slices[1], box.slices[2]]


@dataclass(frozen=True)
class ImageFolderSource(VolumeSource):
    files: tuple[str, ...] = ()

    def read(self, box):
        out = np.empty(box.shape_zyx, dtype=self.dtype)
        for i, z in enumerate(range(box.begin_zyx[0], box.end_zyx[0])):
            img = _read_image(self.files[z])
            out[i] = img[box.slices[1], box.slices[2]]
        return out


@dataclass(frozen=True)
class HDF5Source(VolumeSource):
    path: str = ""
    dataset: str = ""

    def read(self, box):
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.dataset][box.slices])


def _read_image(path: str) -> np.ndarray:
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _image_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an image without decoding its pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                s = tf.series[0]
                return tuple(s.shape), np.dtype(s.dtype)
        from PIL import Image

        with Image.open(path) as im:
            mode_dtype = {
                "L": "uint8",
                "I;16": "uint16",
                "I;16B": "uint16",
                "I;16L": "uint16",
                "I": "int32",
                "F": "float32",
                "1": "bool",
            }
            if im.mode in ("RGB", "RGBA", "LA", "P", "CMYK"):
                return (im.height, im.width, len(im.getbands())), np.dtype("uint8")
            return (im.height, im.width), np.dtype(mode_dtype.get(im.mode, "uint8"))
    except Exception as exc:
        raise UserInputError(f"{path}: not a readable TIFF/PNG image ({type(exc).__name__}: {exc})") from None


def _check(shape, dtype, where: str, dtypes=SUPPORTED_DTYPES) -> tuple[tuple[int, int, int], str]:
    dtype = np.dtype(dtype)
    if len(shape) != 3:
        raise UserInputError(f"{where}: expected a 3D volume (z, y, x), got {len(shape)}D shape {list(shape)}")
    if any(s <= 0 for s in shape):
        raise UserInputError(f"{where}: volume is empty (shape {list(shape)})")
    if dtypes is None:  # label volumes: any dtype here; the caller checks it
        return tuple(int(s) for s in shape), dtype.name  # type: ignore[return-value]
    if dtype not in dtypes:
        raise UserInputError(f"{where}: unsupported dtype {dtype} (expected uint8 or uint16 grayscale)")
    return tuple(int(s) for s in shape), dtype.name  # type: ignore[return-value]


def open_source(src: str, dtypes=SUPPORTED_DTYPES) -> VolumeSource:
    """Detect and open ``src``; raises :class:`UserInputError` on anything wrong with it.
    ``dtypes=None`` accepts any dtype (label volumes, ``connectome review import``)."""
    m = re.match(r"^(.*\.(?:h5|hdf5|hdf)):(/?.+)$", src, re.IGNORECASE)
    if m:
        return _open_hdf5(m.group(1), m.group(2), dtypes)
    p = Path(src)
    if not p.exists():
        raise UserInputError(f"{src}: source not found")
    if p.is_dir():
        if (p / "zarr.json").exists() or (p / ".zarray").exists() or (p / ".zgroup").exists():
            return _open_zarr(p, dtypes)
        return _open_folder(p, dtypes)
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(p, dtypes)
    if suffix in (".h5", ".hdf5", ".hdf"):
        raise UserInputError(f"{src}: HDF5 source needs a dataset: {src}:/path/to/dataset")
    raise UserInputError(
        f"{src}: unsupported source (expected a zarr array, a multi-page TIFF, a folder of "
        "per-section TIFF/PNG images, or file.h5:/dataset)"
    )


def _open_zarr(p: Path, dtypes=SUPPORTED_DTYPES) -> VolumeSource:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise UserInputError(f"{p}: not a readable zarr array ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Group):
        names = sorted(n for n, _ in node.arrays())
        raise UserInputError(
            f"{p}: is a zarr group, not an array; name one of its arrays: "
            + (", ".join(f"{p}/{n}" for n in names) or "(it has none)")
        )
    shape, dtype = _check(node.shape, node.dtype, str(p), dtypes)
    return ZarrSource(f"zarr:{p.resolve()}", shape, dtype, path=str(p.resolve()))


def _open_tiff(p: Path, dtypes=SUPPORTED_DTYPES) -> VolumeSource:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            series_shape, series_dtype = tuple(series.shape), series.dtype
    except Exception as exc:
        raise UserInputError(f"{p}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    shape, dtype = _check(series_shape, series_dtype, str(p), dtypes)
    return TiffStackSource(f"tiff:{p.resolve()}", shape, dtype, path=str(p.resolve()))


def _open_folder(p: Path, dtypes=SUPPORTED_DTYPES) -> VolumeSource:
    files = sorted(
        (f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")),
        key=lambda f: _natural_key(f.name),
    )
    if not files:
        raise UserInputError(f"{p}: folder has no .tif/.tiff/.png section images")
    shape0, dtype0 = _image_header(files[0])
    if len(shape0) != 2:
        raise UserInputError(f"{files[0]}: expected a 2D grayscale section, got shape {list(shape0)}")
    for f in files[1:]:
        f_shape, f_dtype = _image_header(f)
        if f_shape != shape0 or f_dtype != dtype0:
            raise UserInputError(
                f"{f}: section has shape {list(f_shape)} {f_dtype}, but {files[0].name} has "
                f"{list(shape0)} {dtype0}; all sections must match"
            )
    shape, dtype = _check((len(files),) + shape0, dtype0, str(p), dtypes)
    return ImageFolderSource(f"folder:{p.resolve()}", shape, dtype, files=tuple(str(f.resolve()) for f in files))


def _open_hdf5(path: str, dataset: str, dtypes=SUPPORTED_DTYPES) -> VolumeSource:
    import h5py

    if not os.path.isfile(path):
        raise UserInputError(f"{path}: source not found")
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise UserInputError(f"{path}: has no dataset '{dataset}'")
            d = f[dataset]
            if not isinstance(d, h5py.Dataset):
                raise UserInputError(f"{path}:{dataset} is a group, not a dataset")
            shape, dtype = d.shape, d.dtype
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from None
    shape, dtype = _check(shape, dtype, f"{path}:{dataset}", dtypes)
    return HDF5Source(
        f"hdf5:{Path(path).resolve()}:{dataset}", shape, dtype, path=str(Path(path).resolve()), dataset=dataset
    )
