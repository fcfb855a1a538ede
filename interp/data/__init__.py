"""interp's data: which recorded sub_calls to study (selection), clean/corrupt pairs, roll counting, activation shards."""
