"""Datasets: one folder each (loader, official scorer, provenance), one name registry.

`load_examples(name, source, filters=...)` streams `Example`s lazily; `score_output` gives the
official score of an answer for any dataset; `split_instructions` and `model_views` say what each
model is shown. Each folder (`oolong_real/`, `oolong_synth/`, `sniah/`, `edge/`) registers its
datasets in `registry.py`; shared pieces (row readers, filters, the boxed-answer parser) sit beside it.
"""
