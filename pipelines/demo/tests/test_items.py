import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import app  # noqa: E402


def test_seed_data_is_there():
    titles = [title for title, _ in app.items()]
    assert titles == ["Write the pipeline", "Push the commit", "Read the results"]


def test_migration_ran():
    assert dict(app.items())["Write the pipeline"] is True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def test_page_lists_items():
    server = make_server(os.environ["GANTRY_HOST_ADDR"], 0, app.app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{os.environ['GANTRY_HOST_ADDR']}:{server.server_port}/"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        server.shutdown()
    assert body.count("<li>") == 3
