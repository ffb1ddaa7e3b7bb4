"""Serving-knob search strategies, one per module behind one interface (as Triton model_analyzer's
``config/generate/``): :mod:`.base` (the interface and its result), :mod:`.hill_climb`, :mod:`.grid`,
:mod:`.factory` (a strategy from a run config) and :mod:`.axes` (the usual ordered axes)."""
