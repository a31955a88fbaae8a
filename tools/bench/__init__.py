"""Benchmarks: `vbgw bench <name>` (gateway.cli.main.BENCHES lists them)."""
