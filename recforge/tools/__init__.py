"""Benchmarks and measurement tools built on the stages and the fleet: `make bench` (bench/), the roofline
(hw_limits), `make bench-fleet` (fleet_bench), `make bench-faults` (fault_bench*), `make fleet-perf` (perf_fleet)."""
