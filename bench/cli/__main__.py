import sys

from bench.cli.commands import main

sys.exit(main())
