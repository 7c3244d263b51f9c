"""Which ``--out`` folders convlens may replace, and the locking and renaming that replace them safely.

- A folder is replaced only when it is provably convlens's own output: convlens writes a manifest
  (``.convlens-output.json``: tool, version, command and every file with its size) on commit, and replaces a
  folder only when that manifest is there and nothing else is. An empty folder is written into. Anything else
  (foreign files, an older folder without a manifest) needs ``force=True``; a training run folder, a file, the
  root or home folder, and the current folder or one holding it are never replaced.
- Commits are serialised by an exclusive lock (``flock``) on the parent folder: concurrent writers to one
  ``--out`` each commit whole, the last one winning. The rules are checked again under the lock.
- Temporary and set-aside folders carry the writer's pid; a later writer removes those of dead processes.
- A symlinked ``--out`` that points to a folder writes the folder it points to (the link stays as it is);
  a link to anything else is refused.
- Folders get the normal permissions (the umask's); parent folders made for ``--out`` go again on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

MANIFEST = ".convlens-output.json"
MANIFEST_TOOL = "convlens-output"
# Files that make a folder a training run (a model of its own): never replaced by a computing command.
MODEL_COMMANDS = ("convert",)  # their folders are models: replaced only by the same command
RUN_FILES = ("last.safetensors", "best.safetensors", "last.optimizer.pt", "split.json", "metrics.json", "cv.json")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|old)$")


# -- which folders may be replaced -------------------------------------------------------------------------------
def target_folder(path: str | Path) -> Path:
    """The folder ``--out`` names: a symlink to a folder stands for that folder; other links are refused."""
    if str(path).strip() == "":
        raise ConvlensError("--out is empty: give a folder name")
    path = Path(path)
    if path.is_symlink():
        resolved = path.resolve()
        if not resolved.is_dir():
            raise ConvlensError(f"--out {path} is a symbolic link to {resolved}, which is not a folder; "
                                "choose another --out")
        return resolved
    return path


def check_out(path: str | Path, *, force: bool = False, run: bool = False, command: str | None = None) -> Path:
    """Refuse (ConvlensError, one line) an ``--out`` that must not be replaced; returns the folder to write.

    ``run``: the folder is a training run folder (``train``): an earlier run there needs ``force`` too.
    ``command``: the command writing; a model folder (``convert``'s) is replaced only by the same command.
    Checked under the parent folder's lock, so that another writer's commit cannot swap the folder mid-check."""
    requested = path
    path = target_folder(path)
    if path.parent.is_dir():
        with locked(path.parent):
            return check_out_locked(path, requested, force=force, run=run, command=command)
    return check_out_locked(path, requested, force=force, run=run, command=command)


def check_out_locked(path: Path, requested: str | Path | None = None, *, force: bool = False, run: bool = False,
                     command: str | None = None) -> Path:
    """``check_out`` for a caller that holds the parent's lock already (a commit's re-check)."""
    path = target_folder(path)
    requested = path if requested is None else requested
    problem, forceable = _replace_problem(path, force=force, run=run, command=command)
    if problem:
        how = "choose another --out or pass --force to replace it" if forceable else "choose another --out"
        raise ConvlensError(f"--out {requested} {problem}; {how}")
    return path


def _replace_problem(path: Path, *, force: bool, run: bool, command: str | None = None) -> tuple[str, bool]:
    """Why ``path`` may not be replaced ('' when it may) and whether ``force`` would allow it."""
    protected = _protected(path)
    if protected:
        return protected, False
    if not path.exists():
        return "", False
    if not path.is_dir():
        return "is a file, not a folder", False
    try:
        if not any(path.iterdir()):
            return "", False
    except OSError as exc:
        return f"cannot be read ({exc.strerror})", False
    manifest = read_manifest(path)
    if manifest is not None and not manifest.get("complete", True) and _alive(manifest.get("pid")):
        return f"is being written right now by convlens process {manifest.get('pid')}", False
    foreign = _foreign_file(path, manifest) if manifest is not None else None
    if manifest is not None and foreign is None:
        if manifest.get("command") in MODEL_COMMANDS and command != manifest.get("command"):
            return f"holds a model written by convlens {manifest.get('command')} (a model of its own)", False
        return "", False
    if is_run_folder(path):
        if not run:
            return "is a training run folder (its checkpoints are a model of their own)", False
        problem = "holds an earlier training run (continue it with convlens train --resume)"
    elif foreign is not None:
        problem = f"holds {foreign}, which convlens did not write there"
    else:
        problem = "exists and is not a convlens output folder"
    return ("", False) if force else (problem, True)


def _protected(path: Path) -> str:
    """Folders that are never replaced, whatever ``force`` says."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "is the root folder"
    with contextlib.suppress(RuntimeError, KeyError):
        if resolved == Path.home().resolve():
            return "is your home folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "is the current folder or holds it"
    return ""


def is_run_folder(path: Path) -> bool:
    """A convlens training run (or cross-validation) folder: checkpoints, split or metrics at the top or in
    ``fold_N``, or a summary of ``train``."""
    for folder in [path, *sorted(p for p in path.glob("fold_*") if p.is_dir())]:
        if any((folder / name).exists() for name in RUN_FILES):
            return True
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if str(json.loads((path / "summary.json").read_text()).get("command", "")).startswith("train"):
            return True
    return False


def read_manifest(path: Path) -> dict | None:
    """The folder's convlens manifest, or None when there is none (or it is not convlens's)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("tool") != MANIFEST_TOOL:
        return None
    if not isinstance(manifest.get("files", {}), dict):
        return None
    return manifest


def _foreign_file(path: Path, manifest: dict) -> str | None:
    """The first file under ``path`` that the manifest does not list with that size (None: all are convlens's).

    An incomplete manifest (a build in place whose process died) lists nothing yet: its folder was made by
    convlens, so everything in it counts as convlens's."""
    if not manifest.get("complete", True):
        return None
    listed = manifest.get("files", {})
    for root, folders, files in os.walk(path):
        for name in files + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            full = os.path.join(root, name)
            relative = os.path.relpath(full, path)
            if relative == MANIFEST:
                continue
            if os.path.islink(full):
                return relative
            try:
                size = os.path.getsize(full)
            except FileNotFoundError:  # removed meanwhile by someone else: no longer in the folder
                continue
            if listed.get(relative) != size:
                return relative
    return None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(folder: Path, command: str, complete: bool = True) -> None:
    """Record every file convlens wrote in ``folder`` (what makes it replaceable later)."""
    from convlens import __version__

    files = {}
    if complete:
        for root, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(root, name)
                relative = os.path.relpath(full, folder)
                if relative != MANIFEST:
                    files[relative] = os.path.getsize(full)
    record = {"tool": MANIFEST_TOOL, "convlens": __version__, "command": command, "complete": complete,
              "pid": os.getpid(), "files": files}
    (folder / MANIFEST).write_text(json.dumps(record, indent=1))


# -- creating, locking, swapping ---------------------------------------------------------------------------------
@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (the parent of ``--out``) for the check-and-swap of a commit."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): commits are not serialised
        yield
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # an unreadable parent: unserialised (writing there fails later with its own message)
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock (some network mounts): unserialised
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents (normal permissions); returns those created, deepest last."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    created = []
    try:
        for parent in reversed(missing):
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            created.append(parent)
    except OSError as exc:
        remove_created(created)
        raise ConvlensError(f"--out: cannot create {parent} ({exc.strerror})") from None
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders ``make_parents`` made, deepest first, where they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def hidden_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def new_hidden_dir(path: Path) -> Path:
    """A new folder beside ``path`` for building it; ``mkdir`` applies the umask (mkdtemp would give 0700)."""
    while True:
        candidate = hidden_name(path, "tmp")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConvlensError(f"--out {path}: cannot write in {path.parent} ({exc.strerror})") from None


def remove_leftovers(path: Path) -> None:
    """Temporary and set-aside folders of ``path`` left by convlens processes that are gone (killed)."""
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = _LEFTOVER.match(entry.name)
            if match and match["name"] == path.name and not _alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)


def swap_in(built: Path, path: Path) -> Path | None:
    """Rename ``built`` to ``path`` (under the lock); an existing ``path`` is set aside and returned."""
    aside = None
    if path.exists():
        aside = hidden_name(path, "old")
        os.rename(path, aside)
    try:
        os.rename(built, path)
    except OSError:
        if aside is not None:
            os.rename(aside, path)
        raise
    return aside
