"""Output folders: every rig command that writes a folder claims it here first, and never touches what it did not write.

WHY: interp's output staging once replaced ``--out`` whole, so ``interp patch RUN --out RUN`` deleted the run
(trajectories, logs) and ``capture --out D`` then ``patch --out D`` deleted hours of captured activations. The rule,
one helper for every command (eval, ask, merge, report, view, export, interp, the studies):

- a command writes only its own files, and records them in a manifest (``.rlm-rig-output.json``) in the folder;
- it may replace a file only if the manifest says the *same command* wrote it; anything else in the folder stays
  byte for byte (a user's notes, another command's outputs);
- conflicts are refused before any work (``OutDirError``: one line, exit 2 in the CLI), never resolved by deletion:
  ``--out`` that is the run being read or an ancestor of it, a folder holding another command's outputs, a rig
  folder from before manifests, a file in the way, a folder that cannot be written, or (for commands whose outputs
  are costly to recompute) the same command's earlier outputs without ``--force``.

Two ways to write, one rule:
- ``staged(...)`` (interp jobs, report, view, export): files are written into a hidden sibling folder, then moved
  in one by one; a conflict found at that point leaves the folder untouched and keeps the staged files;
- direct writers (eval, ask, merge) claim the folder, write their own known file names into it, and the claim
  refuses up front when one of those names already exists and is not theirs.

This module imports nothing of the rig.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

MANIFEST = ".rlm-rig-output.json"
MANIFEST_VERSION = 1
# Files that mark a folder as a rig run from before manifests existed (eval, ask and merged runs).
_LEGACY_RUN_MARKERS = ("eval.json", "trajectory.json", "samples.jsonl")


class OutDirError(ValueError):
    """An output folder the command must not write to; the message names the folder and the way out."""


@dataclass(frozen=True)
class Manifest:
    command: str
    files: tuple[str, ...] = ()

    @staticmethod
    def read(folder: Path) -> "Manifest | None":
        p = folder / MANIFEST
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text())
            files = data.get("files", [])
            if not isinstance(data.get("command"), str) or not isinstance(files, list):
                raise ValueError("bad fields")
            for f in files:  # a manifest is a claim about this folder only: never a way to reach outside it
                parts = PurePosixPath(str(f)).parts
                if not parts or str(f).startswith("/") or ".." in parts or str(f) == MANIFEST:
                    raise ValueError(f"it lists {f!r}, which is not a file inside the folder")
            return Manifest(data["command"], tuple(str(f) for f in files))
        except (OSError, ValueError) as exc:
            raise OutDirError(f"{p} is not a readable rig manifest ({exc}); choose another --out folder") from None

    def write(self, folder: Path) -> None:
        body = json.dumps({"version": MANIFEST_VERSION, "command": self.command, "files": sorted(self.files)},
                          indent=1)
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
        with os.fdopen(fd, "w") as fh:
            fh.write(body + "\n")
        os.replace(tmp, folder / MANIFEST)


@dataclass(frozen=True)
class OutDir(os.PathLike):
    """A claimed output folder. Path-like, so jobs that take ``out_dir`` accept it; ``staged_dir`` reads its claim."""

    path: Path
    command: str
    force: bool = False
    own: frozenset[str] = field(default_factory=frozenset)  # files this command wrote here before (replaceable)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


def _check_writable(out: Path) -> None:
    """Try to create a file in the nearest existing folder: permission bits lie to root, a read-only mount does not."""
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutDirError(f"--out {out}: {probe_dir} is a file, not a folder; choose another folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rlm-rig-write-check-", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutDirError(f"--out {out}: cannot write in {probe_dir} ({exc.strerror or exc}); choose a writable folder") \
            from None


def claim(out: str | Path | OutDir, command: str, *, inputs: Iterable[str | Path] = (), force: bool = False,
          replace_own: bool = False, writes: Iterable[str] = ()) -> OutDir:
    """Check that ``command`` may write into ``out`` and return the claim; raise ``OutDirError`` otherwise.

    ``inputs``: folders the command reads (a run, a capture): ``out`` may be neither one of them nor an ancestor.
    ``replace_own``: the command's outputs are cheap to rebuild (report, view, export), so its own earlier files are
    replaced without ``--force``. ``writes``: file names a direct writer will create (checked now, since it has no
    staging step to check later). Call it before any model loads: it touches nothing but a write probe.
    """
    if isinstance(out, OutDir):
        out = out.path
    path = Path(out)
    real = _resolved(path)
    if real.exists() and not real.is_dir():
        raise OutDirError(f"--out {path} is a file, not a folder; choose another folder")
    for inp in inputs:
        r = _resolved(inp)
        if real == r:
            raise OutDirError(f"--out {path} is the folder this command reads ({inp}); write elsewhere, "
                              f"e.g. {Path(inp) / 'interp' / command.split()[-1]}")
        if _inside(r, real):
            raise OutDirError(f"--out {path} holds the folder this command reads ({inp}); choose a folder outside it")
    _check_writable(real)
    own: frozenset[str] = frozenset()
    if real.is_dir():
        manifest = Manifest.read(real)
        if manifest is not None and manifest.command != command:
            raise OutDirError(f"--out {path} holds the outputs of `rlm-rig {manifest.command}`; "
                              f"choose another folder for `rlm-rig {command}`")
        if manifest is None:
            legacy = [m for m in _LEGACY_RUN_MARKERS if (real / m).exists()]
            if legacy:
                raise OutDirError(f"--out {path} is a rig run folder ({legacy[0]}); choose another folder")
        else:
            own = frozenset(manifest.files)
            if own and not (force or replace_own):
                raise OutDirError(f"--out {path} holds earlier outputs of `rlm-rig {command}`; choose another folder, "
                                  f"or pass --force to replace them (only them)")
        clash = [w for w in writes if os.path.lexists(real / w) and w not in own]
        if clash:
            raise OutDirError(f"--out {path} already holds {clash[0]}, which `rlm-rig {command}` did not write; "
                              f"choose another folder")
    return OutDir(path, command, force, own)


def record(out: OutDir, files: Iterable[str]) -> None:
    """Write (or extend) the manifest of a direct writer's folder: these files are the command's own from now on."""
    out.path.mkdir(parents=True, exist_ok=True)
    Manifest(out.command, tuple(sorted(set(out.own) | set(files)))).write(out.path)


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


@contextmanager
def staged(out: str | Path | OutDir, command: str, *, force: bool = False, replace_own: bool = False,
           inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty hidden staging folder beside ``out``; on success move its files into ``out``.

    Only files that do not exist yet, or that ``out``'s manifest says this command wrote, are replaced; the
    command's own earlier files that the new run did not write are removed (they belong to the old outputs).
    On an exception the staging folder is removed and ``out`` is untouched. A conflict found at the end (the folder
    changed during the run) raises ``OutDirError`` and keeps the staged files, whose path the message gives.
    """
    claimed = out if isinstance(out, OutDir) and out.command == command else \
        claim(out, command, force=force or (isinstance(out, OutDir) and out.force), replace_own=replace_own,
              inputs=inputs)
    dest = claimed.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the folder may have changed while the job ran: read its manifest again before moving anything
    try:
        now = Manifest.read(dest) if dest.is_dir() else None
    except OutDirError as exc:
        raise OutDirError(f"{exc}; the outputs are kept in {tmp}") from None
    if now is not None and now.command != command:
        raise OutDirError(f"--out {dest} now holds the outputs of `rlm-rig {now.command}`; "
                          f"the outputs of `rlm-rig {command}` are kept in {tmp}")
    own = frozenset(now.files) if now is not None else frozenset()
    new = _files_under(tmp)
    clash = [f for f in new if os.path.lexists(dest / f) and f not in own]
    if clash:
        raise OutDirError(f"--out {dest} already holds {clash[0]}, which `rlm-rig {command}` did not write; "
                          f"its outputs are kept in {tmp}")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for f in [*new, *own]:  # a sub-folder swapped for a link must not carry a write or a removal out of the folder
        parent = (dest / f).parent
        if parent.exists() and not _inside(parent.resolve(), root):
            raise OutDirError(f"--out {dest}: {parent} leads outside the folder (a link?); "
                              f"the outputs of `rlm-rig {command}` are kept in {tmp}")
    for f in sorted(own - set(new)):
        stale = dest / f
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    for f in new:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / f, target)
    Manifest(command, tuple(new)).write(dest)
    _remove_empty_tree(tmp)
    _prune_empty_dirs(dest, own - set(new))


def _remove_empty_tree(root: Path) -> None:
    """Remove a staging folder whose files were all moved out (folders only: a file left is a bug, kept)."""
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        root.rmdir()
    except OSError:
        pass


def _prune_empty_dirs(dest: Path, removed: Iterable[str]) -> None:
    """Folders that held only the command's own removed files, and are now empty, go too."""
    for f in removed:
        d = (dest / f).parent
        while d != dest and _inside(d, dest):
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent


def relocate(value: Any, staging: Path, dest: Path) -> Any:
    """The same value with every path under the staging folder pointing into its destination (for a writer that
    returns the paths it wrote)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: relocate(getattr(value, f.name), staging, dest)
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {k: relocate(v, staging, dest) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocate(v, staging, dest) for v in value)
    if isinstance(value, Path) and (value == staging or staging in value.parents):
        return dest / value.relative_to(staging)
    return value


def claim_file(path: str | Path, *, force: bool = False) -> Path:
    """A single output file (``score --out``): never overwrite an existing file unless asked."""
    p = Path(path)
    if p.is_dir():
        raise OutDirError(f"--out {p} is a folder; name a file")
    if p.exists() and not force:
        raise OutDirError(f"--out {p} exists; choose another file, or pass --force to overwrite it")
    _check_writable(_resolved(p).parent)
    return p
