"""Elastic serving without a server: load traces, the fleet controller's control law and its baselines, and a
discrete-event simulator of a fleet driven by a trace and a policy (issue 13; docs/elastic.md).

Nothing here does I/O beyond reading and writing trace files: the live controller process wires these pieces to
Triton's metrics, HAProxy's runtime socket and the fleet's node lifecycle.
"""
