"""``python -m neulig.report``."""
import sys

from neulig.report.cli import main

sys.exit(main())
