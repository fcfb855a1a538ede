"""Running evaluations: methods (the RLM and baselines), the eval loop, run folders, resume, shards."""
from experiments.runs.evaluate import merge_runs, resume_eval, run_eval
from records.runlog import EvalSpec, RunFolder
from experiments.runs.methods import METHODS, run_method

__all__ = ["EvalSpec", "METHODS", "RunFolder", "merge_runs", "resume_eval", "run_eval", "run_method"]
