import sys

from mdn_serve.tools.bench.cli import main

sys.exit(main())
