"""``python -m retailsim VERB ...`` is the ``retailsim`` command."""
import sys

from retailsim.cli import main

sys.exit(main())
