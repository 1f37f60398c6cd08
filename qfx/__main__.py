import sys

from qfx.cli import main

sys.exit(main())
