import sys

from medvlp.data.ingest.cli import main

sys.exit(main())
