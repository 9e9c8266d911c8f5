"""Your own classes: a head trained on the device from a few labelled examples, numpy only.

The backbone (an INT8 bundle from `convert`) stays as it is; its pooled embedding feeds a small
linear head (nearest class mean, or a regularised multinomial logistic regression, chosen by
cross-validation) that `learn` writes back into the bundle beside the same flatbuffer:

    examples  (one folder of images per class, `examples.py`)
      -> embeddings (the engine's second output, `features.py`)
      -> head fit + cross-validation (`fit.py`)  -> report (`report.py`)
      -> learned bundle (`learned.py`: head.npz inside, tied to the backbone's digest)

Everything here but `examples.py` (OpenCV, to read images), `store.py` and `learned.py` (files)
is pure numpy, so `classify`, the daemon and the workstation run the same code, and tests need no
model. Nothing here imports `classify` or the engine: `edge_resnet/learner.py` (the `learn` job)
and `edge_resnet/teach.py` (the daemon's teaching) sit above them.
"""
