"""`python -m gateway.cli ...` is `vbgw ...`."""
import sys

from gateway.cli.main import main

sys.exit(main())
