"""The static site viewer: ``build_site(run_dirs, out_dir)`` (``rlm-rig view``)."""
