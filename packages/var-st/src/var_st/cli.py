import argparse
from ftcore.errors import cli_main


@cli_main
def main(argv=None):
    argparse.ArgumentParser(prog="var-st").parse_args(argv)
