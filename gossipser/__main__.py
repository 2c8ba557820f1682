"""`python -m gossipser ...` is the `gossipser` command."""

import sys

from gossipser.cli.main import main

sys.exit(main())
