# Shared helpers for scripts/*.sh (sourced, not run).

# need CMD PACKAGE...: installs Debian packages when CMD is missing (as root).
need() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$0: '$cmd' is missing; install: apt-get install -y $*" >&2
    exit 1
  fi
  echo "$0: installing $* (for '$cmd')" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  fi
}

# need_postgres: the PostgreSQL server binaries the tests start privately
# (initdb, postgres). Debian keeps them in /usr/lib/postgresql/*/bin, off
# PATH; installs `postgresql` when neither place has them (as root). The
# package's own cluster is not used.
need_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$0: PostgreSQL server binaries are missing; install: apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "$0: installing postgresql (for the sink's tests)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
}
