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
import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

MANIFEST = ".rlm-rig-output.json"
MANIFEST_VERSION = 1
# Files that mark a folder as a rig run from before manifests existed (eval, ask and merged runs).
_LEGACY_RUN_MARKERS = ("eval.json", "trajectory.json", "samples.jsonl")
_LEGACY_RUN_DIRS = ("trajectories", "logs")  # what such a run holds below it


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


class _Lock:
    """An exclusive flock on the output folder, held while a command works in it (two commands, or two runs of
    one, never write one folder at once). The kernel drops it when the process dies, so a kill leaves none."""

    def __init__(self, folder: Path, shown: Path, wait_s: float = 0.0):
        self.made = None if folder.exists() else folder  # a folder the claim made, removed again if left empty
        folder.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.25)
        self.release()
        raise OutDirError(f"--out {shown} is in use by another rig command right now; wait for it, "
                          f"or choose another folder")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.made is not None:
                try:
                    self.made.rmdir()  # only if still empty: a refused or failed job leaves no folder behind
                except OSError:
                    pass

    def __del__(self) -> None:
        self.release()


@dataclass(frozen=True)
class OutDir(os.PathLike):
    """A claimed output folder. Path-like, so jobs that take ``out_dir`` accept it; ``staged_dir`` reads its claim.

    ``path`` is the folder as the user spelled it (for messages); ``real`` is the folder the checks were made on
    (links and ``..`` resolved the way the kernel resolves them), and every write goes there."""

    path: Path
    command: str
    force: bool = False
    own: frozenset[str] = field(default_factory=frozenset)  # files this command wrote here before (replaceable)
    real: Path | None = None
    lock: _Lock | None = field(default=None, compare=False, repr=False)

    def __fspath__(self) -> str:
        return str(self.where)

    def __truediv__(self, other: str) -> Path:
        return self.where / other

    @property
    def where(self) -> Path:
        return self.real if self.real is not None else self.path

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _resolved(p: str | Path) -> Path:
    """The folder the kernel would reach: links resolved component by component BEFORE ``..`` (os.path.abspath
    folds ``link/..`` textually and so names another folder than the one a write lands in). No ``~`` expansion:
    the shell does that; a literal ``~`` is a folder of that name, for the check and for the writes alike."""
    return Path(os.path.realpath(Path.cwd() / p))


def _check_writable(out: Path, shown: Path) -> None:
    """Try to create a file in the nearest existing folder: permission bits lie to root, a read-only mount does not."""
    probe_dir = out
    while not os.path.lexists(probe_dir):
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutDirError(f"--out {shown}: {probe_dir} is a file, not a folder; choose another folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rlm-rig-write-check-", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutDirError(f"--out {shown}: cannot write in {probe_dir} ({exc.strerror or exc}); "
                          f"choose a writable folder") from None


def _check_ancestors(real: Path, shown: Path) -> None:
    """``--out`` must not lie inside another command's outputs (``RUN/trajectories``, a site's ``report/``): a
    manifest above it listing files under it, or the run files of a rig run from before manifests."""
    for parent in real.parents:
        if not os.path.lexists(parent / MANIFEST) and not any(os.path.lexists(parent / m) for m in _LEGACY_RUN_MARKERS):
            continue
        rel = real.relative_to(parent).parts
        manifest = Manifest.read(parent)
        if manifest is not None:
            # an entry ending in "/" is a folder the command made for another command (a sweep's runs, its report)
            if any(f.endswith("/") and PurePosixPath(f).parts == rel for f in manifest.files):
                continue
            if any(PurePosixPath(f).parts[:len(rel)] == rel for f in manifest.files):
                raise OutDirError(f"--out {shown} lies inside the outputs of `rlm-rig {manifest.command}` in "
                                  f"{parent}; choose another folder")
        elif rel[0] in _LEGACY_RUN_DIRS:
            raise OutDirError(f"--out {shown} lies inside the run folder {parent} ({rel[0]}/); choose another folder")


def claim(out: str | Path | OutDir, command: str, *, inputs: Iterable[str | Path] = (), force: bool = False,
          replace_own: bool = False, writes: Iterable[str] = (), empty_or_own: bool = False,
          hold: bool = False, accept: Iterable[str] = (), wait_s: float = 0.0) -> OutDir:
    """Check that ``command`` may write into ``out`` and return the claim; raise ``OutDirError`` otherwise.

    ``inputs``: folders the command reads (a run, a capture): ``out`` may be neither one of them nor an ancestor.
    ``replace_own``: the command's outputs are cheap to rebuild (report, view, export), so its own earlier files are
    replaced without ``--force``. ``writes``: file names a direct writer will create (checked now, since it has no
    staging step to check later). ``empty_or_own``: costly commands (interp jobs) refuse a folder holding anything
    but their own earlier outputs, so a name clash can never surface after hours of compute. ``hold``: take the
    folder's lock until the claim is released or dropped (creates the folder). ``accept``: other commands whose
    folders this one may continue (``eval --resume`` of a merged run). Call it before any model loads.
    """
    if isinstance(out, OutDir):
        out = out.path
    path = Path(out)
    real = _resolved(path)
    if (os.path.lexists(real) and not real.is_dir()) or (os.path.lexists(path) and not path.is_dir()):
        raise OutDirError(f"--out {path} is a file (or a broken link), not a folder; choose another folder")
    for inp in inputs:
        r = _resolved(inp)
        if real == r:
            raise OutDirError(f"--out {path} is the folder this command reads ({inp}); write elsewhere, "
                              f"e.g. {Path(inp) / 'interp' / command.split()[-1]}")
        if _inside(r, real):
            raise OutDirError(f"--out {path} holds the folder this command reads ({inp}); choose a folder outside it")
    _check_writable(real, path)
    _check_ancestors(real, path)
    own: frozenset[str] = frozenset()
    if real.is_dir():
        manifest = Manifest.read(real)
        if manifest is not None and manifest.command != command and manifest.command not in set(accept):
            raise OutDirError(f"--out {path} holds the outputs of `rlm-rig {manifest.command}`; "
                              f"choose another folder for `rlm-rig {command}`")
        if manifest is None:
            legacy = [m for m in _LEGACY_RUN_MARKERS if (real / m).exists()]
            if legacy and not accept:
                raise OutDirError(f"--out {path} is a rig run folder ({legacy[0]}); choose another folder")
        else:
            own = frozenset(manifest.files)
            if own and not (force or replace_own):
                raise OutDirError(f"--out {path} holds earlier outputs of `rlm-rig {command}`; choose another folder, "
                                  f"or pass --force to replace them (only them)")
        if empty_or_own:
            other = [n for n in sorted(os.listdir(real)) if n != MANIFEST and not any(
                PurePosixPath(f).parts[0] == n for f in own)]
            if other:
                raise OutDirError(f"--out {path} holds {other[0]}, which is not an output of `rlm-rig {command}`; "
                                  f"choose an empty or new folder")
        clash = [w for w in writes if os.path.lexists(real / w) and w not in own]
        if clash:
            raise OutDirError(f"--out {path} already holds {clash[0]}, which `rlm-rig {command}` did not write; "
                              f"choose another folder")
    lock = None
    if hold:
        lock = _Lock(real, path, wait_s)
    return OutDir(path, command, force, own, real, lock)


def record(out: OutDir, files: Iterable[str]) -> None:
    """Write (or extend) the manifest of a direct writer's folder: these files are the command's own from now on."""
    out.where.mkdir(parents=True, exist_ok=True)
    Manifest(out.command, tuple(sorted(set(out.own) | set(files)))).write(out.where)


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _blocked(dest: Path, rel: str) -> Path | None:
    """The first path on the way to ``dest/rel`` that is not a folder (a file, a link): a move would fail there."""
    cur = dest
    for part in PurePosixPath(rel).parts[:-1]:
        cur = cur / part
        if os.path.islink(cur) or (os.path.lexists(cur) and not cur.is_dir()):
            return cur
    return None


@contextmanager
def staged(out: str | Path | OutDir, command: str, *, force: bool = False, replace_own: bool = False,
           inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty hidden staging folder beside ``out``; on success move its files into ``out``.

    Only files that do not exist yet, or that ``out``'s manifest says this command wrote, are replaced; the
    command's own earlier files that the new run did not write are removed (they belong to the old outputs).
    On an exception the staging folder is removed and ``out`` is untouched. A conflict found at the end (the folder
    changed during the run) raises ``OutDirError`` and keeps the staged files, whose path the message gives; every
    check is made before the first file moves, so a refusal at the end changes nothing either.
    """
    claimed = out if isinstance(out, OutDir) and out.command == command else \
        claim(out, command, force=force or (isinstance(out, OutDir) and out.force), replace_own=replace_own,
              inputs=inputs)
    lock = claimed.lock or None
    if lock is None:
        lock_claim = claim(claimed.path, command, force=True, replace_own=True, hold=True)
        lock = lock_claim.lock
    dest = claimed.where
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            lock.release()
        raise
    try:
        _install(tmp, dest, claimed, command, replace_own)
    finally:
        if lock is not None:
            lock.release()


def _install(tmp: Path, dest: Path, claimed: OutDir, command: str, replace_own: bool) -> None:
    """Move the staged files into ``dest`` after checking, all before the first move, that nothing else is hit."""
    def refuse(why: str) -> OutDirError:
        return OutDirError(f"--out {claimed.path} {why}; the outputs of `rlm-rig {command}` are kept in {tmp}")

    try:
        now = Manifest.read(dest) if dest.is_dir() else None
    except OutDirError as exc:
        raise OutDirError(f"{exc}; the outputs are kept in {tmp}") from None
    if now is not None and now.command != command:
        raise refuse(f"now holds the outputs of `rlm-rig {now.command}`")
    own = frozenset(now.files) if now is not None else frozenset()
    if own - claimed.own and not (claimed.force or replace_own):
        raise refuse(f"got outputs of another `rlm-rig {command}` run while this one ran (--force replaces them)")
    new = _files_under(tmp)
    clash = [f for f in new if os.path.lexists(dest / f) and f not in own]
    if clash:
        raise refuse(f"already holds {clash[0]}, which `rlm-rig {command}` did not write")
    blocked = [b for f in [*new, *own] if (b := _blocked(dest, f)) is not None]
    if blocked:
        raise refuse(f"has {blocked[0]} where a folder should be (a file or a link)")
    root = dest.resolve()
    for f in [*new, *own]:  # a sub-folder swapped for a link must not carry a write or a removal out of the folder
        parent = (dest / f).parent
        if parent.exists() and not _inside(parent.resolve(), root):
            raise refuse(f"has {parent}, which leads outside the folder (a link?)")
    dest.mkdir(parents=True, exist_ok=True)
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
    _check_writable(_resolved(p).parent, p)
    return p
