"""The `vbgw` command line: gateway.cli.main parses and dispatches; each subcommand family has
a module here, and the operator tools that talk to a running gateway share gateway.cli.client.
Benchmarks and simulators live in the tools package, imported only when their subcommand runs."""
