#!/bin/sh
# The image's command: the package CLI named at build time (FT_CLI from ARG PACKAGE), with every argument.
# exec: the CLI replaces this shell, so tini (PID 1) signals the CLI itself.
exec "${FT_CLI:?FT_CLI is not set}" "$@"
