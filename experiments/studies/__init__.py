"""Studies built on the rig: the generated dice-roll counting set and the SmolLM2 interp study."""
