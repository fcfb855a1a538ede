"""The RLM loop: controller backends, system prompt, parsing, caps, the context guard, the `Rig`.

The records it writes (trajectory, sample row, run folder) live in the records room (`records/`).
Names load lazily, so importing the package does not pull in the sandbox or the model backends.
"""
