"""`python -m experiments.cli ...` is `rlm-rig ...`."""
from rlm_rig.experiments.cli import main

main()
