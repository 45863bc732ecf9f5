#!/usr/bin/env bash
# The roles of lmcsweep's containers (docker/compose.yaml); runs outside a container too.
#   server   MLflow's tracking server with basic auth, on the database in $LMCSWEEP_TRACKING_DB
#   driver   plan a sweep into the shared store and queue: driver SWEEP_FILE
#   worker   claim and run jobs until none is left
# Credentials come from the environment or from secret files (*_FILE), never from arguments:
#   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or ..._FILE): what clients log in with,
#   and the server's admin; MLFLOW_FLASK_SERVER_SECRET_KEY (or ..._FILE).
set -euo pipefail

secret() {  # secret NAME: $NAME, else the contents of the file named by $NAME_FILE
    local name=$1 file_var="${1}_FILE"
    if [ -n "${!name:-}" ]; then return; fi
    if [ -n "${!file_var:-}" ]; then export "$name"="$(cat "${!file_var}")"; fi
}
secret MLFLOW_TRACKING_USERNAME
secret MLFLOW_TRACKING_PASSWORD
secret MLFLOW_FLASK_SERVER_SECRET_KEY
LMCSWEEP=${LMCSWEEP:-lmcsweep}
MLFLOW=${MLFLOW:-mlflow}
STORE=${LMCSWEEP_STORE:-/store}

role=${1:?usage: entrypoint.sh server|driver SWEEP_FILE|worker [lmcsweep worker options]}
shift
case "$role" in
server)
    : "${LMCSWEEP_TRACKING_DB:?the database URI of the tracking server}"
    : "${MLFLOW_TRACKING_USERNAME:?admin user (or MLFLOW_TRACKING_USERNAME_FILE)}"
    : "${MLFLOW_TRACKING_PASSWORD:?admin password (or MLFLOW_TRACKING_PASSWORD_FILE)}"
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?a secret key (or MLFLOW_FLASK_SERVER_SECRET_KEY_FILE)}"
    auth=$(mktemp -d)/basic_auth.ini   # the admin's password stays in the environment, off the disk
    umask 077
    cat > "$auth" <<INI
[mlflow]
default_permission = EDIT
database_uri = ${LMCSWEEP_AUTH_DB:-$LMCSWEEP_TRACKING_DB}
admin_username = ${MLFLOW_TRACKING_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH=$auth MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
    exec "$MLFLOW" server --app-name basic-auth --backend-store-uri "$LMCSWEEP_TRACKING_DB" \
        --artifacts-destination "${LMCSWEEP_ARTIFACTS:-$STORE/artifacts}" \
        --host "${LMCSWEEP_HOST:-127.0.0.1}" --port "${LMCSWEEP_PORT:-5000}" --workers "${LMCSWEEP_SERVER_WORKERS:-2}" "$@"
    ;;
driver)
    exec "$LMCSWEEP" --store "$STORE" run --plan-only "$@"
    ;;
worker)
    exec "$LMCSWEEP" --store "$STORE" worker "$@"
    ;;
*)
    echo "entrypoint.sh: unknown role '$role' (server, driver or worker)" >&2
    exit 2
    ;;
esac
