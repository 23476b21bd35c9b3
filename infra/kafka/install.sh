#!/usr/bin/env bash
# Install Apache Kafka's broker from Maven Central into the cache: the jars of
# infra/kafka/pom.xml (the broker, its tools, the log4j2 binding) copied into
# $HERALD_CACHE/kafka-<version>/libs, which is the broker's classpath. No
# tarball, no Docker. Idempotent: when the install is complete (its marker
# file exists) this says so and exits at once. Prints nothing else on stdout
# but the libs directory, last.
#
#   HERALD_CACHE   cache root (default ~/.cache/herald)
#   JAVA_HOME      a Java 17+ runtime (default: the `java` on PATH)
#   KAFKA_INSTALL_QUIET  set: say nothing when already installed
#
# The first install downloads ~100 jars (~60 MB) into $HERALD_CACHE/m2 (Maven's
# local repository for this, so the whole install lives in the cache).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
ROOT="$CACHE/kafka-$VERSION"
LIBS="$ROOT/libs"
# The marker names the pom's hash: a changed pom reinstalls.
POM_SUM="$(sha256sum "$HERE/pom.xml" | cut -c1-16)"
MARKER="$ROOT/installed-$POM_SUM"

say() { echo "install-kafka: $*" >&2; }

if [[ -f "$MARKER" ]]; then
    [[ -n "${KAFKA_INSTALL_QUIET:-}" ]] || say "Apache Kafka $VERSION already installed in $ROOT"
    echo "$LIBS"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/install-kafka.lock"
if ! flock -n 9; then
    say "another install is running; waiting for it"
    flock 9
fi
if [[ -f "$MARKER" ]]; then
    say "Apache Kafka $VERSION installed by the other run in $ROOT"
    echo "$LIBS"
    exit 0
fi

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! "$JAVA" -version >/dev/null 2>&1; then
    say "no Java runtime ($JAVA); Kafka $VERSION needs Java 17 or newer"
    exit 1
fi
if ! command -v mvn >/dev/null; then
    say "Maven (mvn) is needed to fetch Kafka from Maven Central"
    exit 1
fi

start=$(date +%s)
say "fetching Apache Kafka $VERSION and its dependencies from Maven Central into $ROOT"
rm -rf "$LIBS.tmp"
mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" \
    -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies \
    -DincludeScope=runtime \
    -DoutputDirectory="$LIBS.tmp" >&2
# Check the classpath before declaring the install done: the broker's main
# class and the storage tool must load.
"$JAVA" -cp "$LIBS.tmp/*" kafka.tools.StorageTool version >/dev/null 2>&1 \
    || { say "the fetched jars do not run kafka.tools.StorageTool; see $LIBS.tmp"; exit 1; }
rm -rf "$LIBS"
mv "$LIBS.tmp" "$LIBS"
rm -f "$ROOT"/installed-*
touch "$MARKER"
say "installed $(ls "$LIBS" | wc -l) jars in $(( $(date +%s) - start )) s"
echo "$LIBS"
