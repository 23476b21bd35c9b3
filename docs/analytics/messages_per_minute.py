#!/usr/bin/env python3
"""Messages per channel per minute from a herald namespace topic.

A batch job a data team can start from: reads every partition of the topic
from its log start to the end offset it has when the job starts, decodes
herald's record envelope (schemas/envelope.v1.json) and prints one JSON line
per (minute, channel), oldest minute first:

    {"minute": "2026-11-22T10:04:00Z", "channel": "chat:lobby", "messages": 17}

Minutes are UTC, from the envelope's `ts` (when the edge accepted the
publish). Records that are not herald envelopes, or carry a newer envelope
version than this script knows, are counted on stderr and skipped.

    pip install confluent-kafka
    python3 messages_per_minute.py --brokers 127.0.0.1:9092 --topic herald.chat
"""

import argparse
import collections
import datetime
import json
import sys
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

KNOWN_VERSION = 1


def minute_of(ts_ms):
    t = datetime.datetime.fromtimestamp(ts_ms // 60000 * 60, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:00Z")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="herald.chat")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    args = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        # Assigned, not subscribed: the group id only has to be unique.
        "group.id": f"herald-analytics-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 10,
    })
    meta = consumer.list_topics(args.topic, timeout=args.timeout)
    topic = meta.topics.get(args.topic)
    if topic is None or topic.error is not None:
        sys.exit(f"topic {args.topic} not found: {topic.error if topic else 'no metadata'}")

    # Read each partition from its start to the end it has now.
    assign, ends = [], {}
    for p in sorted(topic.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=args.timeout)
        if high > low:
            assign.append(TopicPartition(args.topic, p, low))
            ends[p] = high
    counts = collections.Counter()
    skipped = collections.Counter()
    if assign:
        consumer.assign(assign)
    done = set()
    while len(done) < len(ends):
        msg = consumer.poll(args.timeout)
        if msg is None:
            sys.exit(f"no record within {args.timeout}s; partitions left: {sorted(set(ends) - done)}")
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                done.add(msg.partition())
                continue
            sys.exit(f"consume error: {msg.error()}")
        p, offset = msg.partition(), msg.offset()
        if offset >= ends[p]:
            done.add(p)
            continue
        try:
            env = json.loads(msg.value())
            version, channel, ts = env["v"], env["channel"], env["ts"]
        except (TypeError, ValueError, KeyError):
            skipped["not a herald envelope"] += 1
        else:
            if version > KNOWN_VERSION:
                skipped[f"envelope v{version}"] += 1
            else:
                counts[(minute_of(ts), channel)] += 1
        if offset + 1 >= ends[p]:
            done.add(p)
    consumer.close()

    for (minute, channel), n in sorted(counts.items()):
        print(json.dumps({"minute": minute, "channel": channel, "messages": n}))
    for why, n in sorted(skipped.items()):
        print(f"skipped {n} records: {why}", file=sys.stderr)


if __name__ == "__main__":
    main()
