"""Output folders that appear only when finished, and never at the cost of a file the job did not write.

Every interp job writes into a hidden staging folder next to its target and moves its files into place at the
end (``records.outdirs.staged``: the one rule every rig command follows). A job that fails, is refused or is
killed leaves nothing that looks finished (a 0-row ``index.parquet`` once did); a finished earlier output of the
same command is replaced only with ``--force`` (or an ``OutDir`` claimed with it); files of the user or of another
command in the folder are never touched (the old version replaced the folder whole and so deleted them).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from typing import Iterable

from rlm_rig.records.outdirs import OutDir, claim, staged

# Commands whose outputs are cheap to rebuild replace their own earlier files without --force.
_CHEAP = {"interp report", "interp aggregation"}


def claim_out(out_dir: str | Path | OutDir, command: str, inputs: Iterable[str | Path] = (), *,
              force: bool = False, hold: bool = True) -> OutDir:
    """Check the output folder before any model loads (jobs call it first; the CLI already did, with --force)."""
    if isinstance(out_dir, OutDir) and out_dir.command == command:
        return out_dir
    cheap = command in _CHEAP  # costly outputs get a folder of their own, so no clash can surface after the work
    return claim(out_dir, command, inputs=inputs, force=force, replace_own=cheap, empty_or_own=not cheap, hold=hold)


@contextmanager
def staged_dir(out_dir: str | Path | OutDir, command: str) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files land in `out_dir` beside whatever else is there."""
    with staged(claim_out(out_dir, command), command, replace_own=command in _CHEAP) as tmp:
        yield tmp
