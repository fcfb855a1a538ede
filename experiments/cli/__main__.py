"""`python -m experiments.cli ...` is `rlm-rig ...`."""
from experiments.cli import main

main()
