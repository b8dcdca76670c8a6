"""Reads the `.env` file that Gantry renders from ci/app.env.j2."""
import os
import pathlib


def database_url():
    env = pathlib.Path(__file__).with_name(".env")
    for line in env.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "DATABASE_URL":
            return value.strip()
    return os.environ["DATABASE_URL"]
