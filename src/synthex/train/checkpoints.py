"""Checkpoint folders of every trainer: one writer and one reader with fallback.

A checkpoint is a folder ``step_XXXXXXX`` holding ``state.json`` (at least ``{"step": k}``),
safetensors weights and ``optimizer.safetensors`` (AdamW state as tensors + JSON param groups;
nothing is unpickled). :func:`write_checkpoint` writes it into a temp folder, syncs every file
to disk and renames the folder, so a crash leaves the previous checkpoints intact.

:func:`load_latest_checkpoint` is the one reader: newest first, each candidate is validated
fully (``state.json`` parses and has the expected fields, every safetensors file opens and all
of its tensors load, the optimizer state parses, and the caller's ``apply`` accepts it) before
it is chosen. A checkpoint that fails is skipped with a warning naming it and why; unreadable
checkpoints newer than the chosen one are renamed ``unreadable_step_XXXXXXX`` (kept for
inspection, out of the way of the pruning of later checkpoints). When there are checkpoints but
none is readable, a :class:`~synthex.errors.SynthexError` names the folder and each reason.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from synthex.errors import SynthexError

logger = logging.getLogger(__name__)

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
_NAME = re.compile(r"^step_(\d+)$")


class UnreadableCheckpoint(Exception):
    """Internal: why one checkpoint folder cannot be used (the reader then tries an older one)."""


@dataclass
class Checkpoint:
    """A fully read checkpoint folder."""

    path: Path
    step: int
    state: dict[str, Any]
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)   # file stem -> tensors
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # file stem -> header metadata
    optimizer: dict[str, Any] | None = None                            # a torch optimizer state dict


def step_of(path: Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Every ``step_<digits>`` folder of ``folder`` (complete or not), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def complete_checkpoint_dirs(folder: Path) -> list[Path]:
    """The ``step_*`` folders that have a ``state.json`` (not validated), oldest first."""
    return [p for p in checkpoint_dirs(folder) if (p / STATE).is_file()]


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_optimizer_state(path: Path) -> dict[str, Any]:
    """The optimizer state dict stored by :func:`synthex.train.loop.save_optimizer`."""
    from safetensors import safe_open

    state: dict[int, dict] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if "param_groups" not in meta:
            raise UnreadableCheckpoint(f"{Path(path).name} has no param_groups")
        groups = json.loads(meta["param_groups"])
        for name in fh.keys():
            parts = name.split(".", 2)
            if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
                raise UnreadableCheckpoint(f"{Path(path).name}: unexpected tensor {name!r}")
            state.setdefault(int(parts[1]), {})[parts[2]] = fh.get_tensor(name)
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise UnreadableCheckpoint(f"{Path(path).name}: param_groups is not a list of groups")
    return {"state": state, "param_groups": groups}


def _read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def read_checkpoint(path: Path, files: list[str], state_fields: Mapping[str, type] | None = None,
                    expect: Mapping[str, Any] | None = None) -> Checkpoint:
    """Read and validate one checkpoint folder; raises :class:`UnreadableCheckpoint` with the reason.

    ``files``: the safetensors files that must be there (every other ``*.safetensors`` present
    is validated too); ``state_fields``: required ``state.json`` keys and their types (``step``
    is always required); ``expect``: values some of them must have.
    """
    path = Path(path)
    state_file = path / STATE
    if not state_file.is_file():
        raise UnreadableCheckpoint("no state.json (an interrupted write)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableCheckpoint(f"state.json is empty or not JSON ({err})") from err
    if not isinstance(state, dict):
        raise UnreadableCheckpoint("state.json does not hold an object")
    fields = {"step": int, **dict(state_fields or {})}
    for key, kind in fields.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UnreadableCheckpoint(f"state.json lacks {key!r} (a {kind.__name__})")
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise UnreadableCheckpoint(f"state.json has {key} {state.get(key)!r}, expected {value!r}")
    if step_of(path) is not None and state["step"] != step_of(path):
        raise UnreadableCheckpoint(f"state.json says step {state['step']}, the folder name {step_of(path)}")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise UnreadableCheckpoint(f"missing {', '.join(missing)}")
    ckpt = Checkpoint(path, int(state["step"]), state)
    names = sorted(set(files) | {p.name for p in path.glob("*.safetensors")})
    for name in names:
        try:
            if name == OPTIMIZER:
                ckpt.optimizer = read_optimizer_state(path / name)
            else:
                stem = name[: -len(".safetensors")]
                ckpt.tensors[stem], ckpt.metadata[stem] = _read_tensors(path / name)
        except UnreadableCheckpoint:
            raise
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, JSON errors: a bad file
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise UnreadableCheckpoint(f"{name} is truncated or corrupt ({type(err).__name__}: {reason})") from err
    return ckpt


def load_latest_checkpoint(folder: Path, files: list[str], apply: Callable[[Checkpoint], None], *,
                           state_fields: Mapping[str, type] | None = None, expect: Mapping[str, Any] | None = None,
                           what: str = "training", quarantine: bool = True,
                           error: type[SynthexError] = SynthexError) -> Checkpoint | None:
    """Apply the newest readable checkpoint of ``folder``; None when the folder has none.

    ``apply(checkpoint)`` loads it into the modules and optimizer; an exception there (a file
    that does not fit the model) also skips the checkpoint. Skipped checkpoints are logged;
    those newer than the chosen one are renamed ``unreadable_step_*`` when ``quarantine``.
    """
    folder = Path(folder)
    candidates = checkpoint_dirs(folder)
    skipped: list[tuple[Path, str]] = []
    for path in reversed(candidates):
        try:
            ckpt = read_checkpoint(path, files, state_fields, expect)
            try:
                apply(ckpt)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
                raise UnreadableCheckpoint(f"does not fit the model ({type(err).__name__}: "
                                           f"{str(err).splitlines()[0][:200] if str(err) else ''})") from err
        except UnreadableCheckpoint as err:
            logger.warning("%s: skipping checkpoint %s: %s", what, path, err)
            skipped.append((path, str(err)))
            continue
        if skipped:
            logger.warning("%s: resuming from the older checkpoint %s (step %d); newer unreadable: %s", what, path,
                           ckpt.step, ", ".join(p.name for p, _ in skipped))
            if quarantine:
                for bad, _ in skipped:
                    _quarantine(bad)
        else:
            logger.info("%s: resuming from %s (step %d)", what, path, ckpt.step)
        return ckpt
    if skipped:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in skipped)
        raise error(f"no readable checkpoint in {folder} ({reasons}); delete the broken step_* folders "
                    f"there to redo the {what} stage from its start, or start a new --out folder")
    return None


def _quarantine(path: Path) -> None:
    target = path.with_name("unreadable_" + path.name)
    n = 2
    while target.exists():
        target = path.with_name(f"unreadable_{path.name}_{n}")
        n += 1
    try:
        path.rename(target)
        logger.warning("moved the unreadable checkpoint %s to %s", path, target)
    except OSError as err:  # another process may have moved it already
        logger.info("could not move %s aside: %s", path, err)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, step: int, state: dict[str, Any], write: Callable[[Path], None],
                     keep: int) -> Path:
    """Write ``folder/step_XXXXXXX``: ``write(tmp_dir)`` puts the files, then ``state.json`` (with
    ``step``) is added, every file synced to disk and the folder renamed into place. Keeps the
    new checkpoint and the ``keep - 1`` newest older ones."""
    folder = Path(folder)
    final, tmp = folder / f"step_{step:07d}", folder / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / STATE).write_text(json.dumps({**state, "step": step}), encoding="utf-8")
    for path in tmp.iterdir():
        if path.is_file():
            _fsync(path)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync(folder)
    older = [p for p in checkpoint_dirs(folder) if step_of(p) < step]
    for old in older[: max(0, len(older) - (max(1, keep) - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final
