import sys

from revproxy.cli.main import main

sys.exit(main())
