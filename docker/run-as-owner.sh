#!/bin/sh
# run-as-owner.sh DIR COMMAND...: run COMMAND as the user and group that own DIR.
# The training image writes into the bind-mounted ./models: run as its owner, what lands there
# belongs to whoever ran `docker compose`, not to root or to a uid of the image's own.
set -eu
dir=$1
shift
uid=$(stat -c %u "$dir")
gid=$(stat -c %g "$dir")
if [ "$(id -u)" != 0 ] || [ "$uid" = 0 ]; then
    exec "$@"
fi
export HOME=/tmp
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
