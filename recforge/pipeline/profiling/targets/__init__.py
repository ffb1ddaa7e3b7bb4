"""Hardware targets a variant is profiled on, one per module behind one interface (:mod:`.base`), chosen by
:mod:`.factory`: :mod:`.cpu_onnxruntime`, :mod:`.cpu_triton`, :mod:`.gpu_onnxruntime`, :mod:`.hybrid`. A
target's name is its kind (``recforge.contracts.targets``)."""
