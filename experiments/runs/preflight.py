"""Eval failures a user can act on, found early and said in one line.

Two kinds: bad input (a dataset path that does not exist, rows without the columns a loader needs),
checked by `check_inputs` *before* any model server starts, so a typo costs a second and not a
35-second server start; and a full disk mid-run, turned into a message that says which disk, how
many finished samples are safe, and the command that continues the run.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from rlm_rig.records.runlog import RunFolder

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RunInputError(ValueError):
    """The eval's input is wrong (dataset, method, rows); nothing has started yet."""


class DiskFullError(RuntimeError):
    """The disk holding the run folder filled up; finished samples are intact and resumable."""


def check_inputs(spec: Any, methods: Any) -> None:
    """Resolve the dataset and read its first example, without loading any model."""
    from rlm_rig.experiments.datasets.rows import SchemaError
    from rlm_rig.experiments.runs.examples import iter_examples, resolve_dataset

    if spec.method not in methods:
        raise RunInputError(f"unknown method {spec.method!r}; expected one of {', '.join(methods)}")
    try:
        resolve_dataset(spec)
        # the token filter needs the worker's tokenizer; the first row's schema does not
        peek = spec.model_copy(update=dict(max_context_tokens=None, limit=1, sample=None, shard=None))
        next(iter_examples(peek), None)
    except (SchemaError, FileNotFoundError, IsADirectoryError) as e:
        raise RunInputError(f"--dataset {spec.dataset!r}: {e}") from None
    except ValueError as e:
        raise RunInputError(str(e)) from None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def mount_point(path: Path) -> Path:
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def disk_full_message(run_dir: Path, n_kept: int, exc: OSError) -> str:
    where = exc.filename or run_dir
    return (f"disk full on {mount_point(Path(run_dir))} (writing {where}): {n_kept} finished samples are kept in "
            f"{RunFolder(run_dir).samples_path}; free some space there, then continue with: "
            f"rlm-rig eval --resume {run_dir}")
