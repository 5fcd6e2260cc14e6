#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL 15 cluster, then removes it.
#
#   scripts/with-postgres.sh cargo test -p polydev-store
#
# The cluster lives in a fresh temporary directory, listens only on 127.0.0.1 (at
# the first free port from $POLYDEV_PG_PORT, default 54329) and uses trust
# authentication: for local tests only, never for anything that holds real data.
# The command runs with
#   POLYDEV_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/polydev_test
# and this script exits with its status; the cluster is stopped and its directory
# removed however the command ends. Run as root, the server runs as the
# `postgres` OS user (created, and postgresql-15 installed, if missing); run as
# anyone else, it runs as that user.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
first_port="${POLYDEV_PG_PORT:-54329}"

log() { echo "with-postgres: $*" >&2; }

if [ ! -x "$PGBIN/initdb" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        log "installing postgresql-15 (no $PGBIN/initdb)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 </dev/null >&2
    else
        log "no PostgreSQL 15 at $PGBIN (set PGBIN, or install postgresql-15)"
        exit 1
    fi
fi

# as_pg CMD...: run CMD as the user that owns the cluster.
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        log "creating system user postgres"
        useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
            --shell /usr/sbin/nologin postgres
    fi
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/polydev-pg.XXXXXX")"
started=""
cleanup() {
    local status=$?
    if [ -n "$started" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
fi
chmod 700 "$dir"

as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; log "initdb failed"; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=""
for p in $(seq "$first_port" $((first_port + 50))); do
    port_in_use "$p" && continue
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$p -c unix_socket_directories='$dir' -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
        port="$p"
        started=1
        break
    fi
    # Most likely another process took the port between the check and the start.
    log "could not start on port $p, trying the next one"
done
if [ -z "$port" ]; then
    cat "$dir/server.log" >&2 2>/dev/null || true
    log "PostgreSQL did not start"
    exit 1
fi

as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$port" -U postgres polydev_test
export POLYDEV_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/polydev_test"
log "PostgreSQL 15 at $POLYDEV_TEST_POSTGRES_URL (data in $dir)"

set +e
"$@"
status=$?
set -e
exit "$status"
