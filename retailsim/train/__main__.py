"""``python -m retailsim.train`` (also ``torchrun --nproc_per_node=K -m retailsim.train``)."""
import sys

from retailsim.cli import module_main

sys.exit(module_main("retailsim.train.cli"))
