import sys

from edge_llm.cli import main

sys.exit(main())
