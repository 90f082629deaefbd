import sys

from uqa_cli.main import main

sys.exit(main())
