"""The registry stage: profiled variants into the MLflow model registry, champions per target, rollout proposals.

policy      which variant to register and whether it replaces the champion (pure logic, RegisterConfig)
candidates  what there is to register: profiled training runs, their profile documents, data partitions
versions    registering a version: identity, tags, the measured ONNX file as source
aliases     champion-/previous-<target> moves, their history, promotion and rollback
proposals   the fleet and rollout commands for each new champion
show        what the registry holds, for a person
stage       register_family / register_all and the CLI (``python -m recforge.pipeline.registry.stage``)
"""
