"""The static site viewer: ``build_site(run_dirs, out_dir)`` (``rlm-rig view``)."""
from experiments.view.site import SiteResult, build_site

__all__ = ["build_site", "SiteResult"]
