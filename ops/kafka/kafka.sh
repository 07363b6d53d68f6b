#!/usr/bin/env bash
# Run one local Apache Kafka node (KRaft broker and controller) on 127.0.0.1 for development,
# tests and CI, from jars that Maven fetches from Maven Central into ops/kafka/lib/.
#
#   ops/kafka/kafka.sh fetch                         resolve the jars once (no-op when present)
#   ops/kafka/kafka.sh start [--port N] [--timeout S] start in the background, print HOST:PORT
#   ops/kafka/kafka.sh stop [--timeout S] [--keep-data]
#                                                    SIGTERM, then SIGKILL after S seconds
#   ops/kafka/kafka.sh restart [--timeout S] [--port N]
#                                                    stop --keep-data, then start again
#   ops/kafka/kafka.sh status                        print HOST:PORT and exit 0 while running
#                                                    (the pid goes to stderr), else exit 3
#   ops/kafka/kafka.sh logs [-n LINES]               print the end of the broker log
#
# Options may come before or after the subcommand. A subcommand ignores the options that its
# line above leaves out, except --keep-data, which only stop accepts. --port defaults to
# $KAFKA_PORT, else 0 for a free port. Restart keeps the broker's port, so a --port given to
# restart must name that port. --timeout defaults to 90 s for start and 30 s for stop, and a
# --timeout given to restart applies to both steps. -n defaults to 50 lines.
# The numbers are whole decimal numbers, and leading zeros are allowed: 007 is 7.
#
# Every subcommand takes --state-dir DIR (default $KAFKA_STATE_DIR, else .local/kafka in the
# repository). That folder holds the pid file, the bootstrap address, the generated
# server.properties and broker.log; the broker's data lives in a fresh temporary folder that
# `stop` deletes. `stop --keep-data` keeps that folder, and the next `start` runs the broker
# again on it, with the same topics, offsets and port (a broker outage drill). Needs Java 17
# and python3; `fetch` needs Maven.
# Environment: KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m), KAFKA_JVM_OPTS (extra JVM flags).
# Exit status: 0 on success, 1 when a step fails, 2 for a bad subcommand, option or value, and
# 3 from status when no broker runs.

set -euo pipefail

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KAFKA_DIR/../.." && pwd)"
LIB_DIR="$KAFKA_DIR/lib"

# Print the comment block at the top of this file, without the comment marks.
usage() {
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

# Report a bad subcommand, option or value, and exit 2 like the project's other commands.
usage_error() {
    echo "kafka.sh: $*" >&2
    exit 2
}

# Print a free TCP port on 127.0.0.1, chosen by the kernel. Another process could take it before
# the broker binds it, and then `start` fails with "Address already in use" in broker.log.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Print a Kafka cluster id: 16 random bytes in URL-safe base64 without padding. Ids that start
# with "-" are drawn again, as Uuid.randomUuid of kafka-clients 4.1.1 does.
new_cluster_id() {
    python3 - <<'PY'
import base64, os
while True:
    cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not cluster_id.startswith("-"):
        print(cluster_id)
        break
PY
}

jars_present() {
    [[ -f "$LIB_DIR/.complete" ]]
}

# Fill JAVA_CMD with the java command line up to the main class.
set_java_cmd() {
    local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
    command -v "$java" >/dev/null || die "java not found: install Java 17 or set JAVA_HOME"
    local heap_opts jvm_opts
    read -r -a heap_opts <<<"${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
    read -r -a jvm_opts <<<"${KAFKA_JVM_OPTS:-}"
    JAVA_CMD=("$java" "${heap_opts[@]}" "${jvm_opts[@]}"
        "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties" -cp "$LIB_DIR/*")
}

cmd_fetch() {
    if jars_present; then
        echo "Kafka jars already in $LIB_DIR"
        return
    fi
    command -v mvn >/dev/null || die "mvn not found: install Maven 3 (Debian package maven)"
    echo "Fetching Kafka jars with Maven into $LIB_DIR"
    rm -rf "$LIB_DIR"
    mvn -B -q -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" package
    touch "$LIB_DIR/.complete"
    echo "Fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

read_pid() {
    [[ -f "$STATE_DIR/pid" ]] && cat "$STATE_DIR/pid"
}

# Succeed when the pid file names a live broker of this state folder. Checking the command line
# keeps `stop` from signalling an unrelated process that reused the pid of a crashed broker.
# -ww: without it, ps cuts the command line at the width of a terminal on any standard stream,
# and the long class path pushes the path of server.properties beyond 80 columns.
is_running() {
    local pid
    pid="$(read_pid)" || return 1
    ps -ww -p "$pid" -o args= 2>/dev/null | grep -qF "$STATE_DIR/server.properties"
}

write_config() {
    local port="$1" controller_port="$2" data_dir="$3"
    sed -e "s|@PORT@|$port|g" \
        -e "s|@CONTROLLER_PORT@|$controller_port|g" \
        -e "s|@DATA_DIR@|$data_dir|g" \
        "$KAFKA_DIR/server.properties.template" >"$STATE_DIR/server.properties"
}

# Wait until the broker responds to a Metadata request. Fail at once when the JVM exits. On a
# timeout, stop the broker, and keep its data when keep_data is 1.
wait_ready() {
    local bootstrap="$1" timeout="$2" pid="$3" keep_data="$4"
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$STATE_DIR/broker.log" >&2
            die "the broker exited during start-up: see $STATE_DIR/broker.log"
        fi
        if python3 "$KAFKA_DIR/probe.py" "$bootstrap" --timeout 2 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    tail -n 40 "$STATE_DIR/broker.log" >&2
    cmd_stop 10 "$keep_data" >&2
    die "timed out after ${timeout}s waiting for a Metadata response from $bootstrap: see $STATE_DIR/broker.log, or raise --timeout"
}

cmd_start() {
    local port="$1" timeout="$2"
    jars_present || die "Kafka jars not found in $LIB_DIR: run '$0 fetch' first"
    if is_running; then
        die "a broker is already running for $STATE_DIR (pid $(read_pid), $(cat "$STATE_DIR/bootstrap")): stop it or pass another --state-dir"
    fi
    if [[ -f "$STATE_DIR/kept" ]]; then
        resume_kept "$port" "$timeout"
        return
    fi

    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port > 65535)); then
        die "invalid port $port: expected 1 to 65535, or 0 for a free port"
    fi
    mkdir -p "$STATE_DIR"
    ((port == 0)) && port="$(free_port)"
    local controller_port data_dir bootstrap="127.0.0.1:$port"
    controller_port="$(free_port)"
    data_dir="$(mktemp -d "${TMPDIR:-/tmp}/hiertcn-kafka.XXXXXX")"
    echo "$data_dir" >"$STATE_DIR/data_dir"
    write_config "$port" "$controller_port" "$data_dir"
    : >"$STATE_DIR/broker.log"

    set_java_cmd
    "${JAVA_CMD[@]}" kafka.tools.StorageTool format --cluster-id "$(new_cluster_id)" \
        --config "$STATE_DIR/server.properties" >>"$STATE_DIR/broker.log" 2>&1 \
        || { tail -n 20 "$STATE_DIR/broker.log" >&2; die "formatting KRaft storage in $data_dir failed"; }

    launch "$bootstrap" "$timeout" 0
}

# Start the broker again on the data folder and port that `stop --keep-data` kept.
resume_kept() {
    local port="$1" timeout="$2" bootstrap data_dir
    bootstrap="$(cat "$STATE_DIR/bootstrap")"
    data_dir="$(cat "$STATE_DIR/data_dir")"
    [[ -d "$data_dir" ]] || die "the kept broker data folder $data_dir is missing: run '$0 stop' to forget it, then start again"
    if [[ "$port" != 0 && "127.0.0.1:$port" != "$bootstrap" ]]; then
        usage_error "the kept broker data belongs to a broker on $bootstrap, not port $port: omit --port, or run '$0 stop' to delete the data"
    fi
    echo "resuming the broker on $bootstrap with the data kept in $data_dir" >&2
    set_java_cmd
    launch "$bootstrap" "$timeout" 1
    rm -f "$STATE_DIR/kept"
}

# Run the broker in the background with $STATE_DIR/server.properties, wait until it responds
# and print HOST:PORT. keep_data=1 keeps the data folder when the broker does not respond.
launch() {
    local bootstrap="$1" timeout="$2" keep_data="$3"
    # setsid gives the broker its own session, so a Ctrl-C in the calling shell does not reach
    # it. The script runs without job control, so setsid execs java in place and $! is its pid.
    setsid "${JAVA_CMD[@]}" kafka.Kafka "$STATE_DIR/server.properties" \
        >>"$STATE_DIR/broker.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$STATE_DIR/pid"
    echo "$bootstrap" >"$STATE_DIR/bootstrap"

    wait_ready "$bootstrap" "$timeout" "$pid" "$keep_data"
    echo "$bootstrap"
}

# Stop the broker. keep_data=1 keeps its data folder and address for the next `start`.
cmd_stop() {
    local timeout="$1" keep_data="${2:-0}" pid
    if ! is_running; then
        echo "no broker running for $STATE_DIR"
    else
        pid="$(read_pid)"
        kill -TERM "$pid"
        local deadline=$((SECONDS + timeout))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "the broker (pid $pid) did not stop within ${timeout}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped the broker (pid $pid)"
    fi
    if ((keep_data)) && [[ -f "$STATE_DIR/data_dir" && -f "$STATE_DIR/bootstrap" ]]; then
        touch "$STATE_DIR/kept"
        rm -f "$STATE_DIR/pid"
        echo "kept the broker data in $(cat "$STATE_DIR/data_dir"): 'start' resumes it on $(cat "$STATE_DIR/bootstrap")"
        return
    fi
    if [[ -f "$STATE_DIR/data_dir" ]]; then
        rm -rf "$(cat "$STATE_DIR/data_dir")"
        rm -f "$STATE_DIR/data_dir"
    fi
    rm -f "$STATE_DIR/pid" "$STATE_DIR/bootstrap" "$STATE_DIR/kept"
}

cmd_restart() {
    local port="$1" stop_timeout="$2" start_timeout="$3"
    if is_running; then
        # The restart keeps the port, so another --port would fail only after the stop.
        local bootstrap
        bootstrap="$(cat "$STATE_DIR/bootstrap")"
        if [[ "$port" != 0 && "127.0.0.1:$((10#$port))" != "$bootstrap" ]]; then
            usage_error "the running broker listens on $bootstrap, and restart keeps its port: omit --port"
        fi
        cmd_stop "$stop_timeout" 1 >&2
    elif [[ ! -f "$STATE_DIR/kept" ]]; then
        die "no broker running for $STATE_DIR and no kept data to resume: use '$0 start'"
    fi
    cmd_start "$port" "$start_timeout"
}

# Print only HOST:PORT on stdout, so that `--brokers "$(kafka.sh status)"` works; the rest goes
# to stderr.
cmd_status() {
    if is_running; then
        echo "running: pid $(read_pid)" >&2
        cat "$STATE_DIR/bootstrap"
        return 0
    fi
    echo "not running (state folder $STATE_DIR)" >&2
    if [[ -f "$STATE_DIR/kept" ]]; then
        echo "kept data in $(cat "$STATE_DIR/data_dir"): 'start' resumes it on $(cat "$STATE_DIR/bootstrap")" >&2
    fi
    return 3
}

# Print the whole number $1 without leading zeros (007 -> 7, 000 -> 0), because bash arithmetic
# reads 010 as octal 8. Fail when $1 is not a whole number.
decimal() {
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    local digits="${1#"${1%%[!0]*}"}"
    echo "${digits:-0}"
}

main() {
    STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/.local/kafka}"
    local command="" port="${KAFKA_PORT:-0}" timeout="" lines=50 keep_data=0
    # Options may come before or after the subcommand, which is the first argument that is
    # neither an option nor an option's value.
    while (($#)); do
        case "$1" in
            --state-dir | --port | --timeout | -n)
                (($# >= 2)) && [[ -n "$2" ]] || usage_error "option $1 needs a value: see '$0 --help'"
                case "$1" in
                    --state-dir) STATE_DIR="$2" ;;
                    --port) port="$2" ;;
                    --timeout) timeout="$2" ;;
                    -n) lines="$2" ;;
                esac
                shift 2 ;;
            --keep-data) keep_data=1; shift ;;
            -h | --help) usage; exit 0 ;;
            -*) usage_error "unknown option $1: see '$0 --help'" ;;
            *)
                [[ -z "$command" ]] || usage_error "unexpected argument $1 after the subcommand $command: see '$0 --help'"
                command="$1"
                shift ;;
        esac
    done
    [[ -n "$command" ]] || { usage; exit 2; }
    case "$command" in
        fetch | start | stop | restart | status | logs) ;;
        help) usage; exit 0 ;;
        *) usage_error "unknown subcommand $command: expected fetch, start, stop, restart, status or logs" ;;
    esac
    if ((keep_data)) && [[ "$command" != stop ]]; then
        usage_error "--keep-data is an option of stop only: see '$0 --help'"
    fi
    # Only the subcommands that read a number check it.
    if [[ -n "$timeout" && "$command" =~ ^(start|stop|restart)$ ]]; then
        local seconds
        seconds="$(decimal "$timeout")" && [[ "$seconds" =~ ^[1-9][0-9]{0,5}$ ]] ||
            usage_error "invalid --timeout $timeout: expected whole seconds from 1 to 999999"
        timeout="$seconds"
    fi
    if [[ "$command" == logs ]]; then
        local count
        count="$(decimal "$lines")" && [[ "$count" =~ ^[0-9]{1,9}$ ]] ||
            usage_error "invalid -n $lines: expected a number of lines from 0 to 999999999"
        lines="$count"
    fi
    if [[ "$command" =~ ^(start|restart)$ ]]; then
        local number
        number="$(decimal "$port")" && [[ "$number" =~ ^[0-9]{1,5}$ ]] && ((number <= 65535)) ||
            usage_error "invalid port $port: expected 1 to 65535, or 0 for a free port"
        port="$number"
    fi
    # Only start and restart create the state folder; the other commands only read it, so a
    # mistyped --state-dir leaves no empty folder behind. Every command keeps a symbolic link
    # in the path as given (`pwd`, `realpath -s`), because is_running matches the broker's
    # command line, which contains the path that start wrote.
    case "$command" in
        start | restart) STATE_DIR="$(mkdir -p "$STATE_DIR" && cd "$STATE_DIR" && pwd)" ;;
        *)
            if [[ -d "$STATE_DIR" ]]; then
                STATE_DIR="$(cd "$STATE_DIR" && pwd)"
            else
                STATE_DIR="$(realpath -m -s -- "$STATE_DIR")"
            fi
            ;;
    esac

    case "$command" in
        fetch) cmd_fetch ;;
        start) cmd_start "$port" "${timeout:-90}" ;;
        stop) cmd_stop "${timeout:-30}" "$keep_data" ;;
        restart) cmd_restart "$port" "${timeout:-30}" "${timeout:-90}" ;;
        status) cmd_status ;;
        logs)
            [[ -f "$STATE_DIR/broker.log" ]] ||
                die "no broker log in $STATE_DIR: start a broker there first, or pass its --state-dir"
            tail -n "$lines" "$STATE_DIR/broker.log" ;;
    esac
}

main "$@"
