# Runs on the `db` host as its setup: a private PostgreSQL cluster in this host's home,
# listening on this host's own address, seeded with the pushed data.
set -eu
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$PGBIN/initdb" --pgdata="$HOME/pgdata" --username=postgres --auth=trust --no-sync >/dev/null
cat >>"$HOME/pgdata/postgresql.conf" <<CONF
listen_addresses = '$GANTRY_HOST_ADDR'
port = 5432
unix_socket_directories = '$HOME'
fsync = off
CONF
# Other hosts of the build reach this one over 127.0.0.0/8 on the local provider.
echo "host all all 127.0.0.0/8 trust" >>"$HOME/pgdata/pg_hba.conf"
"$PGBIN/pg_ctl" --pgdata="$HOME/pgdata" --log="$HOME/postgres.log" --wait start >/dev/null
"$PGBIN/psql" -h "$GANTRY_HOST_ADDR" -U postgres -q -c 'CREATE DATABASE app'
"$PGBIN/psql" -h "$GANTRY_HOST_ADDR" -U postgres -d app -q -v ON_ERROR_STOP=1 -f "$HOME/data/seed.sql"
echo "PostgreSQL is up on $GANTRY_HOST_ADDR:5432"
