import sys

from portwatch.cli import main

sys.exit(main())
