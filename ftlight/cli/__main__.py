import sys

from ftlight.cli.main import main

sys.exit(main())
