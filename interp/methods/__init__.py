"""interp's methods, one module each: capture, patching, heads, attribution, lens, probes, faithfulness, replay, aggregation. Every architecture access goes through interp.model."""
