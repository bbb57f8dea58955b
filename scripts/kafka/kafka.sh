#!/usr/bin/env bash
# A real Apache Kafka broker on 127.0.0.1, without Docker: the broker's jars
# come from Maven Central (pom.xml beside this script; the local Maven cache
# makes later runs fast), and each node runs as a local Java process in KRaft
# mode (combined broker and controller).
#
#   kafka.sh start [-n NODES] [-p PORT] [-d DIR]   format (if new) and start; wait until every node answers
#   kafka.sh stop [-d DIR]                         SIGTERM every node, SIGKILL after 20s
#   kafka.sh node ACTION I [-d DIR]                ACTION: start, stop, kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT)
#   kafka.sh status [-d DIR]                       the nodes and whether they run
#   kafka.sh bootstrap [-d DIR]                    prints host:port,… of the cluster
#   kafka.sh classpath                             fetches the jars and prints the classpath
#   kafka.sh run CLASS [ARGS…]                     runs a Kafka tool class, e.g. org.apache.kafka.tools.consumer.ConsoleConsumer
#
# NODES is 1 (default: internal topics with replication factor 1) or 3
# (replication factor 3, min.insync.replicas=2). Node I listens for clients
# on PORT+2(I-1) and for its controller quorum on PORT+2(I-1)+1; PORT is
# 9092 by default. DIR (default ${TMPDIR:-/tmp}/pseudonymizer-kafka) holds
# each node's configuration, data, log (node-I/server.log) and pid.
#
# Environment: KAFKA_VERSION (default: pom.xml's), KAFKA_HEAP (default
# -Xmx512m -Xms128m per node), JAVA (default java), MVN (default mvn).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${TMPDIR:-/tmp}/pseudonymizer-kafka"
nodes=1
port=9092
java="${JAVA:-java}"
mvn="${MVN:-mvn}"
heap="${KAFKA_HEAP:--Xmx512m -Xms128m}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

# classpath resolves the broker's jars with Maven once per version and
# caches the classpath in the state directory's parent.
classpath() {
	local version args cache
	version="${KAFKA_VERSION:-}"
	args=(-q -B -Dstyle.color=never -f "$here/pom.xml" dependency:build-classpath)
	[[ -n "$version" ]] && args+=("-Dkafka.version=$version")
	cache="${TMPDIR:-/tmp}/pseudonymizer-kafka-classpath-${version:-default}-$(cksum <"$here/pom.xml" | cut -d' ' -f1)"
	if [[ ! -s "$cache" ]]; then
		command -v "$mvn" >/dev/null || die "Maven ($mvn) is not installed; it fetches the broker from Maven Central"
		"$mvn" "${args[@]}" "-Dmdep.outputFile=$cache.tmp" >&2 ||
			die "could not fetch the Kafka broker from Maven Central (see Maven's output above)"
		mv "$cache.tmp" "$cache"
	fi
	cat "$cache"
}

node_dir() { echo "$dir/node-$1"; }
client_port() { echo $((port + 2 * ($1 - 1))); }
controller_port() { echo $((port + 2 * ($1 - 1) + 1)); }

# load reads the cluster's shape written by start.
load() {
	[[ -f "$dir/cluster" ]] || die "no cluster in $dir (run: kafka.sh start -d $dir)"
	# shellcheck disable=SC1091
	source "$dir/cluster"
}

running() {
	local pidfile
	pidfile="$(node_dir "$1")/pid"
	[[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

bootstrap() {
	local i out=""
	for ((i = 1; i <= nodes; i++)); do out+="${out:+,}127.0.0.1:$(client_port "$i")"; done
	echo "$out"
}

write_config() {
	local i=$1 voters="" j rf isr
	for ((j = 1; j <= nodes; j++)); do voters+="${voters:+,}$j@127.0.0.1:$(controller_port "$j")"; done
	rf=$nodes
	isr=$((nodes > 1 ? 2 : 1))
	mkdir -p "$(node_dir "$i")/data"
	cat >"$(node_dir "$i")/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$(node_dir "$i")/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
# Tests use short group sessions and transaction timeouts.
group.min.session.timeout.ms=1000
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# Tests restart brokers; keep restarts quick.
controlled.shutdown.enable=true
log.segment.bytes=104857600
EOF
}

start_node() {
	local i=$1 nd cp
	nd="$(node_dir "$i")"
	if running "$i"; then return; fi
	cp="$(classpath)"
	# shellcheck disable=SC2086
	KAFKA_LOG_DIR="$nd" nohup "$java" $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-Djava.awt.headless=true -Dkafka.logs.dir="$nd" \
		-Dlog4j2.configurationFile="$here/log4j2.properties" \
		-cp "$cp" kafka.Kafka "$nd/server.properties" >"$nd/stdout.log" 2>&1 &
	echo $! >"$nd/pid"
}

# wait_ready waits until node i accepts connections and the cluster's
# metadata lists every node (so topics with replication factor NODES can be
# created).
wait_ready() {
	local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120})) i n
	for ((i = 1; i <= nodes; i++)); do
		until (exec 3<>"/dev/tcp/127.0.0.1/$(client_port "$i")") 2>/dev/null; do
			running "$i" || die "node $i exited during start-up; see $(node_dir "$i")/server.log and stdout.log"
			((SECONDS < deadline)) || die "node $i did not listen within ${KAFKA_START_TIMEOUT:-120}s; see $(node_dir "$i")/server.log"
			sleep 0.3
		done
	done
	while :; do
		n=$("$java" -Xmx128m -cp "$(classpath)" -Dlog4j2.configurationFile="$here/log4j2-tools.properties" \
			org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$(bootstrap)" 2>/dev/null |
			grep -c '^127\.0\.0\.1:[0-9]* (id: [0-9]*' || true)
		((n >= nodes)) && return
		((SECONDS < deadline)) || die "only $n of $nodes nodes answered within ${KAFKA_START_TIMEOUT:-120}s; see $dir/node-*/server.log"
		sleep 0.5
	done
}

cmd_start() {
	local i id cp
	mkdir -p "$dir"
	if [[ -f "$dir/cluster" ]]; then
		local want_nodes=$nodes want_port=$port
		load
		[[ $want_nodes == "$nodes" && $want_port == "$port" ]] ||
			die "$dir holds a cluster of $nodes node(s) on port $port; stop it and remove $dir first"
	else
		printf 'nodes=%s\nport=%s\n' "$nodes" "$port" >"$dir/cluster"
	fi
	cp="$(classpath)"
	for ((i = 1; i <= nodes; i++)); do
		if [[ ! -f "$(node_dir "$i")/data/meta.properties" ]]; then
			write_config "$i"
			id="${id:-$("$java" -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)}"
			"$java" -cp "$cp" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$(node_dir "$i")" \
				kafka.tools.StorageTool format -t "$id" -c "$(node_dir "$i")/server.properties" >/dev/null ||
				die "could not format node $i's storage"
		fi
		start_node "$i"
	done
	wait_ready
	echo "$(bootstrap)"
}

# stop_nodes sends SIGTERM to the given nodes at once (a node that is the
# last of its controller quorum cannot shut down in a controlled way, so
# stopping them one by one can hang) and SIGKILLs those still running after
# KAFKA_STOP_TIMEOUT seconds (default 20).
stop_nodes() {
	local i pids=() pid deadline killed=""
	for i in "$@"; do
		running "$i" || continue
		pid="$(cat "$(node_dir "$i")/pid")"
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	done
	deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-20}))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			if ((SECONDS >= deadline)) && [[ -z $killed ]]; then
				echo "kafka.sh: nodes still running after ${KAFKA_STOP_TIMEOUT:-20}s; killing them" >&2
				killed=1
				kill -KILL "${pids[@]}" 2>/dev/null || true
			fi
			sleep 0.2
		done
	done
	for i in "$@"; do rm -f "$(node_dir "$i")/pid"; done
}

cmd_stop() {
	[[ -f "$dir/cluster" ]] || return 0
	load
	stop_nodes $(seq 1 "$nodes")
}

cmd_node() {
	local action=${1:-} i=${2:-} pid
	[[ -n "$action" && -n "$i" ]] || die "usage: kafka.sh node start|stop|kill|pause|resume I"
	load
	((i >= 1 && i <= nodes)) || die "no node $i (the cluster has $nodes)"
	case "$action" in
	start) start_node "$i" ;;
	stop) stop_nodes "$i" ;;
	kill | pause | resume)
		running "$i" || die "node $i is not running"
		pid="$(cat "$(node_dir "$i")/pid")"
		case "$action" in
		kill)
			kill -KILL "$pid"
			while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
			rm -f "$(node_dir "$i")/pid"
			;;
		pause) kill -STOP "$pid" ;;
		resume) kill -CONT "$pid" ;;
		esac
		;;
	*) die "unknown node action $action" ;;
	esac
}

cmd_status() {
	local i
	load
	for ((i = 1; i <= nodes; i++)); do
		if running "$i"; then
			echo "node $i: running (pid $(cat "$(node_dir "$i")/pid"), 127.0.0.1:$(client_port "$i"))"
		else
			echo "node $i: stopped"
		fi
	done
}

sub=${1:-}
[[ -n "$sub" ]] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
args=()
if [[ $sub == run ]]; then args=("$@"); set --; fi
while (($#)); do
	case "$1" in
	-n) nodes=$2; shift 2 ;;
	-p) port=$2; shift 2 ;;
	-d) dir=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
[[ $nodes == 1 || $nodes == 3 ]] || die "-n must be 1 or 3"

case "$sub" in
start) cmd_start ;;
stop) cmd_stop ;;
node) cmd_node "${args[@]}" ;;
status) cmd_status ;;
bootstrap) load; bootstrap ;;
classpath) classpath ;;
run)
	((${#args[@]})) || die "usage: kafka.sh run CLASS [ARGS…]"
	exec "$java" -Xmx256m -cp "$(classpath)" -Dlog4j2.configurationFile="$here/log4j2-tools.properties" "${args[@]}"
	;;
-h | --help | help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command $sub (see kafka.sh --help)" ;;
esac
