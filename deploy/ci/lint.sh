#!/usr/bin/env bash
# Static checks of the deployment files (deploy/), with no network but the
# package index and no container runtime:
#   - hadolint on deploy/Dockerfile, shellcheck on deploy/ci/*.sh and .ci/*;
#   - yamllint on deploy/**/*.yaml;
#   - kubernetes-validate --strict on deploy/k8s/*.yaml, against the oldest
#     and the newest Kubernetes version supported;
#   - `docker compose config` on deploy/compose.yaml and compose.replicas.yaml
#     (the Compose v2 binary itself: the Python wrapper around it always exits 0);
#   - check_config.py: the files against each other, the server's settings
#     and the README's configuration table.
# The linters live in their own venv (deploy/ci/tools.sh), installed on first use.
#
# Usage: deploy/ci/lint.sh   (from any directory)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
# shellcheck source=deploy/ci/tools.sh
. deploy/ci/tools.sh

# Kubernetes versions the manifests must validate against: native gRPC probes
# and autoscaling/v2 need 1.27 or later; 1.30 is the oldest we claim.
K8S_VERSIONS=(1.30.0 1.37.0)

failed=()
run() {  # run NAME COMMAND...: run one check, keep going on failure
    local name=$1
    shift
    if "$@"; then
        echo "lint: $name ok"
    else
        echo "lint: $name FAILED"
        failed+=("$name")
    fi
}

compose_validate() {
    "$(compose_binary)" --file "$1" config --quiet
}

compose_rejects_invalid() {  # guard: the validator's exit status must be real
    local broken errors
    broken=$(mktemp --suffix=.yaml)
    sed 's/^\(    restart:\)/    restartx:/' deploy/compose.yaml >"$broken"
    if errors=$(compose_validate "$broken" 2>&1); then
        echo "the compose validator accepted an unknown key"
    fi
    rm -f "$broken"
    [[ $errors == *restartx* ]] || { echo "$errors"; return 1; }
}

kubernetes_validate() {
    local version
    for version in "${K8S_VERSIONS[@]}"; do
        "$TOOLS/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" \
            deploy/k8s/*.yaml || return 1
    done
}

ensure_tools
run hadolint "$TOOLS/bin/hadolint" --failure-threshold style deploy/Dockerfile
run shellcheck "$TOOLS/bin/shellcheck" deploy/ci/*.sh .ci/run .ci/typecheck .ci/import-tree
run yamllint "$TOOLS/bin/yamllint" --strict --config-file deploy/.yamllint.yaml deploy/
run kubernetes-validate kubernetes_validate
run "compose config" compose_validate deploy/compose.yaml
run "compose config (replicas)" compose_validate deploy/compose.replicas.yaml
run "compose validator exit status" compose_rejects_invalid
# The linters' venv has no seqserve: it imports the settings from the sources.
run "config consistency" env PYTHONPATH="$(bash "$repo/.ci/import-tree")" \
    "$TOOLS/bin/python" deploy/ci/check_config.py

if ((${#failed[@]})); then
    echo "lint: failed: ${failed[*]}"
    exit 1
fi
echo "lint: all deploy checks passed"
