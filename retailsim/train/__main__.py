"""``python -m retailsim.train`` (also ``torchrun --nproc_per_node=K -m retailsim.train``)."""
import argparse
import sys

from retailsim.cli import run_guarded
from retailsim.train import cli

parser = argparse.ArgumentParser(prog="python -m retailsim.train", description=cli.DESCRIPTION,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
cli.add_arguments(parser)
sys.exit(run_guarded(cli.run, parser.parse_args()))
