# shellcheck shell=bash
# Sourced by lint.sh and smoke.sh: the pinned linters and Compose in their own
# venv (lint-requirements.txt), installed on first use and whenever the pins
# change.
#   TOOLS                  the venv (SEQSERVE_LINT_VENV overrides it)
#   ensure_tools           install it if needed
#   compose_binary         print the path of the Compose v2 binary; the Python
#                          wrapper around it always exits 0, the binary does not

TOOLS=${SEQSERVE_LINT_VENV:-$repo/.ci-work/deploy-tools}

ensure_tools() {
    local requirements=$repo/deploy/ci/lint-requirements.txt
    if [[ -f $TOOLS/requirements.txt ]] && cmp -s "$requirements" "$TOOLS/requirements.txt"; then
        return
    fi
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    echo "installing the pinned deploy tools into $TOOLS"
    "$TOOLS/bin/python" -m pip install --disable-pip-version-check -r "$requirements" \
        >"$TOOLS/pip.log" 2>&1 || { tail -n 20 "$TOOLS/pip.log"; return 1; }
    cp "$requirements" "$TOOLS/requirements.txt"
}

compose_binary() {
    "$TOOLS/bin/python" -c \
        'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))'
}
