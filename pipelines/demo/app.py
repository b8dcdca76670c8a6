"""A very small web app: lists the items stored in PostgreSQL."""
import html
import sys
from wsgiref.simple_server import make_server

import psycopg2

from settings import database_url


def items():
    with psycopg2.connect(database_url()) as conn, conn.cursor() as cur:
        cur.execute("SELECT title, done FROM items ORDER BY id")
        return cur.fetchall()


def app(environ, start_response):
    rows = "".join(
        f"<li>{'[x]' if done else '[ ]'} {html.escape(title)}</li>" for title, done in items()
    )
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [f"<h1>Items</h1><ul>{rows}</ul>".encode()]


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    make_server(host, port, app).serve_forever()
