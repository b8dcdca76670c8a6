#!/bin/sh
# Checks every shell script parses.
set -e
for f in ci/*.sh; do sh -n "$f"; done
echo "lint ok"
