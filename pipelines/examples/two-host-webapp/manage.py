#!/usr/bin/env python3
"""A stand-in for the application's management script: `migrate` checks the database is reachable."""
import os
import sys

import psycopg2


def main() -> int:
    if sys.argv[1:] != ["migrate"]:
        print("usage: manage.py migrate", file=sys.stderr)
        return 2
    settings = dict(line.strip().split("=", 1) for line in open(".env") if "=" in line and not line.startswith("#"))
    with psycopg2.connect(settings["DATABASE_URL"]) as connection:
        connection.cursor().execute("SELECT count(*) FROM items")
    print("migrated", os.environ.get("APP_ENV", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
