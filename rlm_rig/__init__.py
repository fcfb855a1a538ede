"""rlm-rig: one namespace for the rooms (`rlm_rig.records`, `rlm_rig.controller`, `rlm_rig.worker`, ...).

The rooms are the repository's top-level folders; an install maps them here (pyproject's package-dir).
In a source checkout without an install (``PYTHONPATH=.``) this package also searches the checkout's
top level, so `rlm_rig.controller` is the `controller/` folder beside this one. The check is narrow: it
needs this project's pyproject.toml and its records room beside it, so an installed copy never picks up
an unrelated `controller` package from site-packages.
"""
from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "records" / "runlog.py").is_file() \
        and str(_checkout) not in __path__:
    __path__.append(str(_checkout))
