"""Evaluation-leakage control: bit-identical fast pHash (:mod:`.phash`), content-keyed hash cache (:mod:`.cache`),
train-vs-eval Hamming matching (:mod:`.match`) and the side-by-side report gallery (:mod:`.gallery`)."""
