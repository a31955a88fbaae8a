"""Everything that is not run time: the AudioHook simulator, the benchmarks, calibration fitting,
TTS-detector training, EER/DET metrics and the trial-protocol reader. Installed with the project
(the `vbgw bench ...` and `vbgw audiohook-sim` subcommands import it lazily), never imported by
the running gateway or the engine (tests/test_import_graph.py holds that)."""
