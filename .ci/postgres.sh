#!/usr/bin/env bash
# Start a local PostgreSQL server for tests/protocol/test_postgres.py and print its URL.
#
#   url=$(.ci/postgres.sh) && export HUNDRED_TEST_POSTGRES=$url
#
# Installs Debian's `postgresql` package when it is missing (as root, with apt-get), starts a
# cluster with the Debian wrappers (the server refuses to run as root), creates the role
# `hundred` and the database `hundred_test`, checks that a password login works and prints
# postgresql+psycopg://hundred:hundred@127.0.0.1:PORT/hundred_test on stdout. Progress goes
# to stderr. When a step fails it prints one line saying why and exits 1: the caller goes on,
# and the PostgreSQL test is skipped. An HUNDRED_TEST_POSTGRES already set is printed as is.
set -uo pipefail

ROLE=hundred PASSWORD=hundred DATABASE=hundred_test

fail() {
    echo "PostgreSQL could not be started: $*; the PostgreSQL test will be skipped" >&2
    exit 1
}
say() { echo "postgres: $*" >&2; }

if [[ -n "${HUNDRED_TEST_POSTGRES:-}" ]]; then
    say "using the HUNDRED_TEST_POSTGRES given"
    echo "$HUNDRED_TEST_POSTGRES"
    exit 0
fi

as_postgres() {  # run a command as the postgres user (we are root, or postgres itself)
    if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}

if ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
    [[ $(id -u) -eq 0 ]] || fail "it is not installed and installing needs root"
    command -v apt-get >/dev/null || fail "it is not installed and there is no apt-get"
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -qq </dev/null >&2 \
        || fail "apt-get update failed"
    timeout 900 apt-get install -y -qq postgresql </dev/null >&2 \
        || fail "apt-get install postgresql failed"
fi
[[ $(id -u) -eq 0 || $(id -un) == postgres ]] \
    || fail "starting a cluster needs root or the postgres user (or set HUNDRED_TEST_POSTGRES)"

# the first cluster (Debian creates VERSION/main on install); create one if there is none
read -r version cluster port status _ < <(pg_lsclusters -h 2>/dev/null | head -n 1)
if [[ -z "${version:-}" ]]; then
    version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$version" ]] || fail "no server under /usr/lib/postgresql"
    say "creating cluster $version/main"
    pg_createcluster "$version" main >&2 || fail "pg_createcluster $version main failed"
    read -r version cluster port status _ < <(pg_lsclusters -h | head -n 1)
fi
if [[ "$status" != online* ]]; then
    say "starting cluster $version/$cluster on port $port"
    timeout 120 pg_ctlcluster "$version" "$cluster" start >&2 \
        || fail "pg_ctlcluster $version $cluster start failed (see /var/log/postgresql/)"
fi
for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || fail "the server on port $port does not accept connections"

psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@" </dev/null; }
psql_admin -c "DO \$\$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  ELSE
    CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
  END IF;
END \$\$;" >&2 || fail "cannot create the role $ROLE"
if [[ -z $(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") ]]; then
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2 || fail "cannot create the database $DATABASE"
fi
PGPASSWORD=$PASSWORD psql -X -q -h 127.0.0.1 -p "$port" -U "$ROLE" -d "$DATABASE" -tA \
    -c "SELECT 1" </dev/null >/dev/null \
    || fail "the role $ROLE cannot log in to $DATABASE over TCP with its password"
say "PostgreSQL $version is running on 127.0.0.1:$port, database $DATABASE"
echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$port/$DATABASE"
