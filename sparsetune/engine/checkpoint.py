"""Atomic, exactly-resumable checkpoints that cannot carry code.

A checkpoint holds only what changes in training (the method's trainable tensors and its own state),
the optimiser and scheduler, every RNG, the data position and the loop's running statistics. It is
written to a temporary folder and renamed into place, and `latest` is switched last, so a run killed
at any moment leaves the previous checkpoint intact.

Format (`checkpoints/step-<N>/`), nothing in it is ever unpickled:

- `model.safetensors` — the trainable tensors, keyed by parameter name (the `"model"` entry);
- `tensors.safetensors` — every other tensor (optimiser moments, RNG byte states, …), keyed by its
  path in the state, e.g. `optimizer/state/0/exp_avg`;
- `state.json` — everything else as JSON; a tensor becomes `{"__tensor__": KEY}` (a key of
  `tensors.safetensors`), a tuple `{"__tuple__": [...]}`, a dict whose keys are not all strings
  `{"__dict__": [[k, v], ...]}`, a numpy array `{"__ndarray__": [...], "dtype": ...}`, a non-finite
  float `{"__float__": "nan"}`;
- `manifest.json` — format version, step, and each file's size and sha256, verified before loading.

A legacy `state.pt` (torch pickle) is refused, never loaded: unpickling runs code.

Only a finite state is a checkpoint: `save_checkpoint` refuses weights, optimiser or method state with
a NaN/Inf (`NonFiniteStateError`; the loop reports the run as diverged), so `latest` always names a
state worth resuming. A write the disk refuses (full disk) or a second Ctrl-C removes the temporary
folder before the error goes up (`WriteFaultError`, one line); a first Ctrl-C or SIGTERM waits for the
write to finish (engine/interrupts.py). Nothing is written into a run folder that was deleted or moved
mid-run (engine/run_folder.py `check_present`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from sparsetune.engine.interrupts import critical
from sparsetune.engine.run_folder import (
    DISK_ERRNOS,
    atomic_write_text,
    check_present,
    owning_run,
    write_fault,
)
from sparsetune.errors import UserError

FORMAT = "sparsetune-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
MODEL = "model.safetensors"
TENSORS = "tensors.safetensors"
LEGACY = "state.pt"


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, or in a format sparsetune refuses to load."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are missing, truncated, or fail their manifest hashes."""


class NonFiniteStateError(ValueError):
    """The state to save holds NaN/Inf weights or optimiser/method state; nothing was written."""


# --- finiteness ------------------------------------------------------------------------------------
CHECKED = ("optimizer", "method", "scaler")  # state sections besides the weights that must be finite


def _bad_count(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() or t.is_complex() else 0


def _nonfinite_paths(obj: Any, path: str, out: list[str]) -> None:
    if isinstance(obj, torch.Tensor):
        if _bad_count(obj):
            out.append(path)
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            out.append(path)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _nonfinite_paths(v, f"{path}/{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _nonfinite_paths(v, f"{path}/{i}", out)


def nonfinite(state: dict[str, Any]) -> str | None:
    """None when the weights (`model`) and the optimiser, method and scaler state are all finite;
    otherwise what is not, in words (how many weights; which state entries)."""
    weights = [t for t in (state.get("model") or {}).values() if isinstance(t, torch.Tensor)]
    bad = sum(_bad_count(t) for t in weights)
    paths: list[str] = []
    for section in CHECKED:
        if section in state:
            _nonfinite_paths(state[section], section, paths)
    parts = []
    if bad:
        parts.append(f"{bad:,} of {sum(t.numel() for t in weights):,} trained weights are not finite")
    if paths:
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        parts.append(f"non-finite state in {', '.join(paths[:3])}{more}")
    return "; ".join(parts) or None


def _os_error(exc: BaseException) -> BaseException:
    """safetensors reports a full disk as `IoError(Os { code: 28, ..., message: "No space left on device" })`:
    the OSError inside, when there is one."""
    found = re.search(r"Os \{ code: (\d+)", str(exc))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else exc


# --- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]  # (version, tuple of 625 ints, gauss_next)
    random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --- encoding: nested python state <-> JSON + named tensors ----------------------------------------
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__ndarray__", "__float__")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        while key in tensors:
            key += "_"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), path, tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, f"{path}/key{i}", tensors), _encode(v, f"{path}/{k}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"checkpoint state at '{path}' has a {type(obj).__name__}, which the checkpoint format "
                    "cannot store (allowed: None, bool, int, float, str, list, tuple, dict, tensor, ndarray)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise DamagedCheckpointError(f"state.json refers to tensor '{key}', which {TENSORS} lacks")
        return tensors[key]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__float__" in obj:
        return float(obj["__float__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (int, float, str, bool, tuple)) or key is None:
        return key
    raise DamagedCheckpointError(f"state.json has a dict key of type {type(key).__name__}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- save / find / load -------------------------------------------------------------------------
def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `folder/step-<N>/` atomically and point `folder/latest` at it.

    Raises NonFiniteStateError (nothing written) for a non-finite state, RunFolderGoneError when the
    run folder was deleted or moved, WriteFaultError when the disk refuses a write (the temporary
    folder is removed first; `latest` still names the previous checkpoint)."""
    folder = Path(folder)
    check_present(folder)
    problem = nonfinite(state)
    if problem:
        raise NonFiniteStateError(problem)
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-step-{step:07d}"
    try:
        with critical():
            # inside a locked run folder, never recreate a deleted parent (check_present's race window)
            folder.mkdir(parents=owning_run(folder) is None, exist_ok=True)
            for stale in folder.glob(".tmp-step-*"):  # left by a killed writer (this process holds the lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
            state = dict(state)
            model = {k: v.detach().cpu().contiguous().clone() for k, v in (state.pop("model", None) or {}).items()}
            tensors: dict[str, torch.Tensor] = {}
            encoded = _encode(state, "", tensors)
            safetensors.torch.save_file(model, str(tmp / MODEL))
            safetensors.torch.save_file(tensors, str(tmp / TENSORS))
            (tmp / STATE).write_text(json.dumps(encoded, allow_nan=False) + "\n")
            files = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                     for name in (MODEL, TENSORS, STATE)}
            atomic_write_text(tmp / MANIFEST, json.dumps({"format": FORMAT, "version": VERSION, "step": step,
                                                          "files": files}, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            atomic_write_text(folder / "latest", final.name + "\n")
            for old in sorted(folder.glob("step-*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):
            check_present(folder)  # the folder deleted during this write: say so, not ENOENT
        cause = _os_error(exc) if isinstance(exc, SafetensorError) else exc
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            raise write_fault(f"checkpoint {final.name}", cause) from None
        raise
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder `latest` points at, if it exists (not verified: see `load_checkpoint`)."""
    pointer = Path(folder) / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name or "/" in name or name in (".", ".."):
        return None
    path = Path(folder) / name
    return path if path.is_dir() else None


def step_folders(folder: Path) -> list[Path]:
    """Checkpoint folders `step-<N>`, oldest first."""
    return sorted(p for p in Path(folder).glob("step-*") if p.is_dir() and p.name[5:].isdigit())


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check the manifest and every file's size and sha256; return the manifest. Reads no payload."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if (path / LEGACY).exists():
            raise CheckpointError(
                f"checkpoint {path.name} is in the old pickle format ({LEGACY}), which sparsetune no longer "
                "loads because unpickling can run arbitrary code; start a new run")
        raise DamagedCheckpointError(f"no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        ok = manifest.get("format") == FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DamagedCheckpointError(f"{MANIFEST} is not valid") from None
    if not ok:
        raise DamagedCheckpointError(f"{MANIFEST} is not a sparsetune checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path.name} has format version {manifest.get('version')}; "
                              f"this sparsetune reads version {VERSION}")
    for name in (MODEL, TENSORS, STATE):
        if name not in files:
            raise DamagedCheckpointError(f"{MANIFEST} does not list {name}")
    for name, info in files.items():
        if name not in (MODEL, TENSORS, STATE):
            raise DamagedCheckpointError(f"{MANIFEST} lists an unexpected file {name!r}")
        f = path / name
        if not f.is_file():
            raise DamagedCheckpointError(f"{name} is missing")
        if f.stat().st_size != info.get("size"):
            raise DamagedCheckpointError(f"{name} has {f.stat().st_size} bytes, expected {info.get('size')}")
        if _sha256(f) != info.get("sha256"):
            raise DamagedCheckpointError(f"{name} fails its sha256 check")
    return manifest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify and load one checkpoint folder. Raises CheckpointError (a UserError) on any problem."""
    path = Path(path)
    try:
        verify_checkpoint(path)
        try:
            model = safetensors.torch.load_file(str(path / MODEL))
            tensors = safetensors.torch.load_file(str(path / TENSORS))
            state = _decode(json.loads((path / STATE).read_text()), tensors)
        except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as exc:
            raise DamagedCheckpointError(f"unreadable: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("loop"), dict):
            raise DamagedCheckpointError(f"{STATE} lacks the loop state")
    except DamagedCheckpointError as exc:
        raise DamagedCheckpointError(f"checkpoint {path.name} is damaged ({exc})") from None
    state["model"] = model
    return state


def find_resumable(folder: Path, warn=None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint `latest` points at, verified and loaded; if it is damaged, the newest earlier
    good one (with a warning through `warn`). A missing/empty/dangling `latest` or no good checkpoint
    raises a one-line CheckpointError: resuming never silently restarts from step 0."""
    folder = Path(folder)
    pointer = folder / "latest"
    if not pointer.is_file():
        found = step_folders(folder) if folder.is_dir() else []
        extra = f" (found {', '.join(p.name for p in found)} but no pointer)" if found else ""
        raise CheckpointError(f"cannot resume: {pointer} is missing{extra}; no checkpoint to resume from")
    name = pointer.read_text(errors="replace").strip()
    if not name:
        raise CheckpointError(f"cannot resume: {pointer} is empty")
    target = latest_checkpoint(folder)
    if target is None:
        raise CheckpointError(f"cannot resume: {pointer} points at {name!r}, which does not exist")
    try:
        return target, load_checkpoint(target)
    except DamagedCheckpointError as exc:
        first = exc
    reasons = [str(first)]
    earlier = [p for p in reversed(step_folders(folder)) if p.name < target.name]
    for candidate in earlier:
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError as exc:
            reasons.append(str(exc))
            continue
        if warn:
            warn(f"{first}; resuming from {candidate.name}")
        return candidate, ckpt
    raise CheckpointError(f"cannot resume: no good checkpoint in {folder}: " + "; ".join(reasons))
