import sys

from dmclient.cli import main

sys.exit(main())
