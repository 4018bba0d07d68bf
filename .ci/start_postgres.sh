#!/usr/bin/env bash
# Start a throwaway PostgreSQL server (Debian's `postgresql` package) for the label-store tests.
# Prints one line, `export FEEDBACK_LM_TEST_PG_URL=...`, so callers can `eval "$(.ci/start_postgres.sh)"`.
# Used by .ci/run and by hand; running it again reuses the running server.
set -euo pipefail

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$PGBIN" ]; then
  echo "start_postgres: no PostgreSQL server found; apt-get install postgresql" >&2
  exit 1
fi
DIR=${FEEDBACK_LM_PG_DIR:-/tmp/feedback_lm_pg}
PORT=${FEEDBACK_LM_PG_PORT:-54329}
DB=feedback_lm_test

# The server refuses to run as root: run it as the `postgres` user the Debian package creates.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ ! -f "$DIR/PG_VERSION" ]; then
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  as_owner "$PGBIN/initdb" -D "$DIR" -U postgres -A trust -E UTF8 --no-sync >"$DIR.initdb.log" 2>&1 \
    || { cat "$DIR.initdb.log" >&2; exit 1; }
fi
if ! as_owner "$PGBIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  as_owner "$PGBIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null \
    || { cat "$DIR/server.log" >&2; exit 1; }
fi
if ! as_owner "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" \
    | grep -q 1; then
  as_owner "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi
echo "export FEEDBACK_LM_TEST_PG_URL=postgresql://postgres@127.0.0.1:$PORT/$DB"
