"""The workspace: one folder holding every stage's output for one volume.

Layout (see ``shared/CONTRACT.md``)::

    WS/
      volume.zarr/              zarr group, format 3; attribute "connectome" holds the frame
        raw/                    uint8        (z, y, x)
        vessel_mask/            uint8 {0,1}
        segmentation/           uint64 (0 = no object)
        synapse_prob/           uint8 (0..255 = 0..1)
        ...                     further arrays of later stages (same frame)
      blockwise/<stage>/        done-markers of resumable stages (see connectome.blockwise.markers)
      logs/                     one log file per stage run

*One frame for all arrays*: every array has the workspace's ``shape_zyx`` and carries the
attribute ``voxel_size_nm: [z, y, x]`` equal to the workspace's. A multi-channel array (e.g.
``boundary``) puts its channel axis first, ``(C, z, y, x)``, and names its channels in the
attribute ``channels`` (a list of C names); its chunks span all channels. Section 0's montage defines
the frame (origin = top-left of tile (0, 0) of section 0). Chunks are chosen by the stage that
writes an array: chunk shape == the stage's block write shape, so one block writes whole chunks.

*Array state*: every array written by a blockwise stage carries the attribute
``connectome_state = {"stage": <command>, "task": <task>, "complete": bool, "config_digest": str}``.
The runner sets ``complete: false`` when a task starts writing the array and ``complete: true``
only once every block of that task has a done-marker, so an array whose stage was killed or
failed stays marked incomplete. Consumers call :meth:`Workspace.require_complete`, which refuses
(exit 2) an incomplete array. Arrays written before this attribute existed (no
``connectome_state``) are treated as complete, so old workspaces keep working.

Opening a workspace validates it; any inconsistency raises :class:`UserInputError` naming
the array and what was expected.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, cast

import numpy as np

from connectome.errors import UserInputError
from connectome.inputs import finite_float

FORMAT_VERSION = 1
VOLUME = "volume.zarr"

#: the access modes of :meth:`Workspace.open` (zarr's)
OpenMode = Literal["r", "r+", "a", "w", "w-"]

#: dtypes the contract fixes for the well-known arrays.
KNOWN_DTYPES: dict[str, np.dtype] = {
    "raw": np.dtype("uint8"),
    "vessel_mask": np.dtype("uint8"),
    "segmentation": np.dtype("uint64"),
    "synapse_prob": np.dtype("uint8"),
    "boundary": np.dtype("uint8"),
}

#: which stage produces each well-known array (for "run X first" messages).
PRODUCERS = {
    "raw": "connectome import / connectome align",
    "vessel_mask": "connectome mask-vessels",
    "segmentation": "connectome segment",
    "synapse_prob": "connectome synapses",
    "boundary": "connectome predict-boundaries",
}

#: zarr attribute holding an array's completion state (see "Array state" above).
STATE_ATTR = "connectome_state"

#: blockwise task name -> the `connectome` command that runs it (for "rerun ..." messages).
TASK_COMMANDS = {
    "segment-subvolumes": "segment",
    "segment-write": "segment",
    "vessel-prob": "mask-vessels",
    "vessel-mask": "mask-vessels",
    "synapses-predict": "synapses",
    "synapses-label": "synapses",
    "synapses-join": "synapses",
    "synapses-partners": "synapses",
    "align": "align",
    "align-bridge": "align",
    "align-render": "align",
}


def stage_command(task: str) -> str:
    """The `connectome` subcommand that runs blockwise task ``task`` (e.g. segment-write -> segment)."""
    return TASK_COMMANDS.get(task, task)


def parse_zyx(text: str, what: str, cast=float, positive: bool = True) -> tuple:
    """Parse ``"Z,Y,X"`` into a 3-tuple, with a one-line error naming ``what``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        raise UserInputError(f"{what}: expected three comma-separated numbers Z,Y,X, got {text!r}") from None
    if len(values) != 3:
        raise UserInputError(f"{what}: expected three values Z,Y,X, got {len(values)} in {text!r}")
    if cast is float:
        for p in parts:
            finite_float(p, what)  # nan / inf: "--sigma-nm: expected a finite number, got 'nan'"
    if positive and any(not (v > 0) for v in values):
        raise UserInputError(f"{what}: values must be positive, got {text!r}")
    return values


@dataclass(frozen=True)
class Frame:
    """The common geometry of all arrays in a workspace."""

    shape_zyx: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "shape_zyx": list(self.shape_zyx),
            "voxel_size_nm": [float(v) for v in self.voxel_size_nm],
        }


class Workspace:
    """An opened, validated workspace. Create with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, group, frame: Frame):
        self.path = Path(path)
        self.group = group
        self.frame = frame

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, shape_zyx: Sequence[int], voxel_size_nm: Sequence[float]) -> "Workspace":
        """Create a workspace, or open an existing one whose frame matches exactly."""
        import zarr

        path = Path(path)
        frame = Frame(
            cast("tuple[int, int, int]", tuple(int(s) for s in shape_zyx)),
            cast("tuple[float, float, float]", tuple(float(v) for v in voxel_size_nm)),
        )
        if any(s <= 0 for s in frame.shape_zyx):
            raise UserInputError(f"workspace {path}: shape must be positive, got {list(frame.shape_zyx)}")
        if any(not v > 0 for v in frame.voxel_size_nm):
            raise UserInputError(f"workspace {path}: voxel size must be positive, got {list(frame.voxel_size_nm)}")
        if cls.exists(path):
            ws = cls.open(path, mode="r+")
            ws.check_frame(frame)
            return ws
        if path.exists() and not path.is_dir():
            raise UserInputError(f"workspace {path}: exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            if (path / VOLUME).is_dir():  # only temporary files of a killed first write (see exists)
                for p in (path / VOLUME).iterdir():
                    p.unlink()
            # the frame goes into the group's first (atomic) metadata write: a run killed here
            # leaves either no group or a complete one, never a group without its frame
            group = zarr.open_group(
                _store(path / VOLUME), mode="w-", zarr_format=3, attributes={"connectome": frame.to_json()}
            )
        except OSError as exc:
            raise UserInputError(f"workspace {path}: cannot create ({exc.strerror or exc})") from None
        return cls(path, group, frame)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether ``path`` holds a workspace (or something else named ``volume.zarr`` that
        :meth:`open` judges). A ``volume.zarr`` folder holding nothing but the temporary files of
        an interrupted first write (a creating run killed before its group's metadata landed)
        is no workspace yet: creating one there goes ahead."""
        vol = Path(path) / VOLUME
        if not vol.exists():
            return False
        if (vol / "zarr.json").is_file() or not vol.is_dir():
            return True
        return any(not p.name.endswith(".partial") for p in vol.iterdir())

    @classmethod
    def open(cls, path: str | Path, mode: OpenMode = "r+") -> "Workspace":
        """Open and validate an existing workspace."""
        import zarr

        path = Path(path)
        vol = path / VOLUME
        if not path.is_dir():
            raise UserInputError(
                f"workspace {path}: not found (create it with `connectome import` or `connectome stitch`)"
            )
        if not (vol / "zarr.json").is_file():
            raise UserInputError(
                f"workspace {path}: no {VOLUME} (zarr format 3 group) inside; not a connectome workspace"
            )
        try:
            group = zarr.open_group(_store(vol, read_only=(mode == "r")), mode=mode, zarr_format=3)
        except Exception as exc:  # zarr raises a variety of errors for broken metadata
            raise UserInputError(f"workspace {path}: {VOLUME} is not a readable zarr v3 group ({exc})") from None
        meta: Any = dict(group.attrs).get("connectome")  # unchecked JSON: any failure below is reported
        try:
            frame = Frame(
                cast("tuple[int, int, int]", tuple(int(s) for s in meta["shape_zyx"])),
                cast("tuple[float, float, float]", tuple(float(v) for v in meta["voxel_size_nm"])),
            )
            assert len(frame.shape_zyx) == 3 and len(frame.voxel_size_nm) == 3
        except Exception:
            raise UserInputError(
                f"workspace {path}: {VOLUME} lacks a valid 'connectome' frame attribute (shape_zyx, voxel_size_nm)"
            ) from None
        ws = cls(path, group, frame)
        for name in ws.array_names():
            ws._validate_array(name)
        return ws

    # ------------------------------------------------------------------ queries
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.frame.shape_zyx

    @property
    def voxel_size_nm(self) -> tuple[float, float, float]:
        return self.frame.voxel_size_nm

    def array_names(self) -> list[str]:
        return sorted(name for name, _ in self.group.arrays())

    def has(self, name: str) -> bool:
        return name in self.array_names()

    def array(self, name: str):
        """A validated array of the workspace; a clear error if it does not exist."""
        if not self.has(name):
            hint = f" (run `{PRODUCERS[name]}` first)" if name in PRODUCERS else ""
            raise UserInputError(f"workspace {self.path}: has no array '{name}'{hint}")
        return self._validate_array(name)

    def check_frame(self, frame: Frame) -> None:
        if frame.shape_zyx != self.frame.shape_zyx:
            raise UserInputError(
                f"workspace {self.path}: frame shape is {list(self.frame.shape_zyx)} (z,y,x) "
                f"but the input has shape {list(frame.shape_zyx)}; use a new workspace"
            )
        if not np.allclose(frame.voxel_size_nm, self.frame.voxel_size_nm):
            raise UserInputError(
                f"workspace {self.path}: voxel size is {list(self.frame.voxel_size_nm)} nm (z,y,x) "
                f"but {list(frame.voxel_size_nm)} nm was given"
            )

    def _validate_array(self, name: str):
        arr = self.group[name]
        where = f"workspace {self.path}: array '{name}'"
        chans = arr.attrs.get("channels")
        if arr.ndim == 4 and isinstance(chans, list) and len(chans) == arr.shape[0]:
            if tuple(arr.shape[1:]) != self.frame.shape_zyx:
                raise UserInputError(
                    f"{where} has shape {list(arr.shape)}, expected (channels,) + the frame "
                    f"{list(self.frame.shape_zyx)}"
                )
        elif tuple(arr.shape) != self.frame.shape_zyx:
            raise UserInputError(
                f"{where} has shape {list(arr.shape)}, expected the frame {list(self.frame.shape_zyx)}"
            )
        vs = arr.attrs.get("voxel_size_nm")
        if vs is None or len(vs) != 3 or not np.allclose([float(v) for v in vs], self.frame.voxel_size_nm):
            raise UserInputError(f"{where} has voxel_size_nm {vs}, expected {list(self.frame.voxel_size_nm)}")
        expected = KNOWN_DTYPES.get(name)
        if expected is not None and np.dtype(arr.dtype) != expected:
            raise UserInputError(f"{where} has dtype {arr.dtype}, expected {expected}")
        return arr

    # ------------------------------------------------------------------ writing
    def require_array(
        self,
        name: str,
        dtype,
        chunks_zyx: Sequence[int],
        attrs: dict | None = None,
        fill_value: Any = 0,
        recreate: bool = False,
        channels: Sequence[str] = (),
    ):
        """Create an array in the frame, or return the existing one if its spec matches.

        ``channels``: names of the channels of a channel-first array ``(C, z, y, x)`` (chunks
        span all channels); empty for a plain ``(z, y, x)`` array. With ``recreate`` an existing
        array whose dtype, chunking or channels differ is replaced; without it, such a mismatch
        is an error.
        """
        dtype = np.dtype(dtype)
        expected = KNOWN_DTYPES.get(name)
        if expected is not None and dtype != expected:
            raise ValueError(f"array '{name}' must be {expected}, not {dtype}")
        chunks = tuple(int(min(c, s)) for c, s in zip(chunks_zyx, self.frame.shape_zyx))
        shape = tuple(self.frame.shape_zyx)
        all_attrs = {"voxel_size_nm": list(self.frame.voxel_size_nm), **(attrs or {})}
        if channels:
            chunks, shape = (len(channels),) + chunks, (len(channels),) + shape
            all_attrs["channels"] = list(channels)
        if self.has(name):
            arr = self.group[name]
            same = np.dtype(arr.dtype) == dtype and tuple(arr.chunks) == chunks and tuple(arr.shape) == shape
            if same:
                arr.attrs.update(all_attrs)
                return self._validate_array(name)
            if not recreate:
                raise UserInputError(
                    f"workspace {self.path}: array '{name}' exists with dtype {arr.dtype} and "
                    f"chunks {list(arr.chunks)}, not {dtype} / {list(chunks)}; rerun with --restart"
                )
            del self.group[name]
        return self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, attributes=all_attrs
        )

    # ------------------------------------------------------------------ array state
    def array_state(self, name: str) -> dict | None:
        """The array's ``connectome_state`` attribute, or None for an array written before array
        states existed (treated as complete) or by something other than a blockwise stage."""
        state = self.group[name].attrs.get(STATE_ATTR)
        return dict(state) if isinstance(state, dict) else None

    def is_complete(self, name: str) -> bool:
        """False only for an array explicitly marked incomplete; no state attribute = complete."""
        state = self.array_state(name)
        return state is None or bool(state.get("complete", True))

    def mark_incomplete(self, name: str, task: str, config_digest: str = "") -> None:
        """Record that ``task`` has started (re)writing ``name``: it is not finished until
        :meth:`mark_complete`."""
        self.group[name].attrs[STATE_ATTR] = {
            "stage": stage_command(task),
            "task": task,
            "complete": False,
            "config_digest": config_digest,
        }

    def mark_complete(self, name: str) -> None:
        state = self.array_state(name) or {}
        self.group[name].attrs[STATE_ATTR] = {**state, "complete": True}

    def require_complete(self, name: str, consumer: str):
        """The validated array ``name`` if it exists and its stage finished; otherwise exit 2
        (:class:`UserInputError`) naming the array and the command that finishes it.
        An array without a state attribute (written before states existed) counts as complete."""
        arr = self.array(name)
        if not self.is_complete(name):
            cmd = (self.array_state(name) or {}).get("stage") or PRODUCERS.get(name, "?")
            raise UserInputError(
                f"{self.path / VOLUME / name} is incomplete (stage '{cmd}' did not finish; "
                f"{consumer} needs it finished); rerun `connectome {cmd} --workspace {self.path}` "
                "to finish it"
            )
        return arr

    def stage_dir(self, stage: str) -> Path:
        """``WS/blockwise/<stage>/`` (not created here)."""
        return self.path / "blockwise" / stage

    def logs_dir(self) -> Path:
        d = self.path / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def remove_array(self, name: str) -> None:
        if self.has(name):
            del self.group[name]
            shutil.rmtree(self.path / VOLUME / name, ignore_errors=True)


def _store(path: Path, read_only: bool = False):
    """A zarr LocalStore. zarr >= 3.1 writes each chunk to a temporary file and renames it into
    place, so a killed writer never leaves a torn chunk visible."""
    from zarr.storage import LocalStore

    return LocalStore(str(path), read_only=read_only)


def open_array(path: str | Path, name: str, mode: str = "r"):
    """Open one array of a workspace by path, for use inside block processors (workers)."""
    import zarr

    return zarr.open_array(_store(Path(path) / VOLUME / name, read_only=(mode == "r")), mode=mode, zarr_format=3)
