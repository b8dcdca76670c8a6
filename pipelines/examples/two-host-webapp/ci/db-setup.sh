#!/bin/sh
# Runs on `db` (in its home, where `data/` was pushed): start a private PostgreSQL on this host's
# own address and load the seed. Gantry stops every process the host started at teardown.
set -e
initdb -D "$HOME/pg" -U postgres --auth=trust >/dev/null
pg_ctl -D "$HOME/pg" -o "-c listen_addresses=$GANTRY_HOST_ADDR -k $HOME" -l "$HOME/pg.log" -w start
createdb -h "$GANTRY_HOST_ADDR" -U postgres app
psql -h "$GANTRY_HOST_ADDR" -U postgres -d app -v ON_ERROR_STOP=1 -f data/seed.sql
