"""Elastic serving (issue 13; docs/elastic.md): load traces, the fleet controller's control law and its baselines,
a discrete-event simulator of a fleet driven by a trace and a policy, and the live controller process.

Only the live controller (``live``, with ``live_signals`` and ``live_actions``) touches a running fleet: it reads
Triton's metrics and HAProxy's stats, applies the law's weights and drains through HAProxy's runtime API, and logs
what the fleet cannot do yet (scaling, shedding, batching) as advisory. The rest does no I/O beyond trace files.
"""
