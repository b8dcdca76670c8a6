#!/bin/sh
# Runs in ~/src on `box`, the tree of the commit being built.
set -e
echo "build $GANTRY_BUILD of $GANTRY_REPO at $GANTRY_COMMIT on $GANTRY_HOST ($GANTRY_HOST_ADDR)"
test -f .gantry.yml
