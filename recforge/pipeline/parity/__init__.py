"""Accuracy parity of compressed variants: the gate that judges one variant against the fp32 model (``gate``) and
the compress_and_validate stage that builds, gates and tracks every variant of a candidate (``stage``)."""
