"""Serving-knob search strategies, one per module behind one interface (as Triton model_analyzer's
``config/generate/``): :mod:`.base` (the interface and its result), :mod:`.hill_climb`, :mod:`.grid`,
:mod:`.race` (racing coordinate search), :mod:`.factory` (a strategy from a run config), :mod:`.axes` (the usual
ordered axes and which Triton knobs go together) and :mod:`.lbt_probe` (the race's measurements in the stage)."""
