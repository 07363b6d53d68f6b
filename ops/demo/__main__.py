"""Entry point of `python -m ops.demo`; see ops/demo/run.py."""

import sys

from ops.demo.run import main

sys.exit(main())
