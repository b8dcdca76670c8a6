# Starts the app on this host's address, as a server of the build would, and fetches a page.
set -eu
python3 app.py "$GANTRY_HOST_ADDR" 8000 >app.log 2>&1 &
python3 - "$GANTRY_HOST_ADDR" <<'PY'
import sys, time, urllib.request
url = f"http://{sys.argv[1]}:8000/"
deadline = time.monotonic() + 30
while True:
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
assert "Push the commit" in body, body
print("smoke: the app served", body.count("<li>"), "items from the db host")
PY
