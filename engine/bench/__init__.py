"""Engine benchmarks (`vbgw bench accuracy|speed`)."""
