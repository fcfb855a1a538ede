"""interp: replay recorded worker sub_calls in transformers+nnsight to find where a count was lost.

capture (activations + teacher-forced faithfulness to what vLLM generated), patch (exact activation
patching), attribute (attribution patching), heads (per-head patching), lens (logit lens), probe
(linear probes per layer), report. Imports `worker`, `configs` and the controller's record leaves.
Heavy dependencies (torch, nnsight, sklearn) load lazily on first use of a name that needs them.
"""
