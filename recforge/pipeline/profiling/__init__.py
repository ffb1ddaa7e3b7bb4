"""The profiling stage: serving profiles of the validated variants per hardware target.

Modules, from the inside out: ``lbt`` (latency-bounded throughput search, measuring injected), ``search/``
(knob-search strategies and axes), ``document`` (the profile document), ``targets/`` (hardware targets and their
factory), ``profile_config`` and ``search_space`` (what one profiling run searches), ``profile_variant``
(profiling one variant on its targets; a CLI), ``stage_config``, ``selection``, ``runs`` (MLflow reads),
``summary``, ``plots``, ``stage`` (the DAG's logic: plan, profile_one, summarize) and ``cli`` (the stage's CLI).
"""
