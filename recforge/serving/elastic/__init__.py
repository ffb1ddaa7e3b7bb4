"""Elastic serving (issue 13; docs/elastic.md): load traces, the fleet controller's control law and its baselines,
a discrete-event simulator of a fleet driven by a trace and a policy, and the live controller process.

Only the live controller (``live``, with ``live_signals``, ``live_actions`` and ``live_scaling``) touches a running
fleet: it reads Triton's metrics and HAProxy's stats, applies the law's weights, drains and shed fraction through
HAProxy's runtime API and its batching mode node by node (through the fleet handle), adds and removes nodes (one at a
time), and logs what a fleet cannot do (a batching switch of a model without dynamic batching) as advisory.
``traffic`` records what the fleet served from the balancer's request log as a traffic profile in MLflow (the next
night's profiling load); the rest does no I/O beyond trace files.
"""
