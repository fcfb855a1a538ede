"""`python -m interp capture|patch|probe|report ...`."""
from .cli import main

main()
