"""`market-anomaly decide`: the low-latency consumer, candles decided within a second of their arrival.

The same detection, checks, dead letters and sinks as `detect`, in a Kafka consumer-group member instead of
Spark micro-batches (a stateful Python micro-batch costs most of a second before any work is done). It
decides whatever each poll brings, keeps each partition's detection states in memory and checkpoints them
with the offset they cover every few seconds (and when it stops or a partition moves), then commits that
offset to the group, so consumer-lag tools see its progress.

Run one for the live edge; run more with the same --group-id, a shared --checkpoint-dir and a --member name
each, and the topic's partitions are spread over them. `detect` stays the runner for Spark clusters and
large replays.
"""

from __future__ import annotations

import argparse
import dataclasses

from market_anomaly.cli import options
from market_anomaly.cli.detect import add_reading_arguments, add_running_arguments, detect_config, enabled


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decide", help="run the low-latency consumer: the detect stream's decisions within a second, without Spark",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_reading_arguments(parser, "decide", "per-partition detection states and the offsets they cover: a "
                          "restarted or reassigned member continues where they stop", "within one poll")
    parser.add_argument("--group-id", default="market-anomaly-decide",
                        help="Kafka consumer group; members of one group share the topic's partitions "
                             "(default: %(default)s)")
    parser.add_argument("--member", default=None, metavar="NAME",
                        help="this member's lasting name in the group (Kafka's group.instance.id): restarted under "
                             "the same name it takes its partitions back at once, and its alert episodes are its own "
                             "file in the checkpoint. Give each member of a group its own; default: none (one member)")
    parser.add_argument("--max-poll-records", type=options.positive_int, default=50_000, metavar="N",
                        help="most records one poll decides, so a backlog is worked off in bounded pieces "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=float, default=5.0, metavar="SECONDS",
                        help="how often the states are checkpointed and the offsets committed, at a moment no "
                             "record waits (under a backlog at twice this); a crash reads about this much again, "
                             "which changes no decision (default: %(default)s)")
    parser.add_argument("--market-topic", default="crypto-market-tally", metavar="TOPIC",
                        help="topic on which the members of the group share each minute's symbols, so each marks "
                             "market-wide events on the whole market, not on its own partitions (a member starting "
                             "reads the last two hours' counts first); 'none' disables (default: %(default)s)")
    add_running_arguments(parser)
    # detect's Spark-only settings, which the shared configuration carries and the decider does not use
    parser.set_defaults(handler=run, trigger="0 seconds", max_offsets_per_trigger=None, source_option=[],
                        master="local[2]", conf=[], state_buckets=1)


def run(args: argparse.Namespace) -> int:
    from market_anomaly.decider.runner import DecideConfig
    from market_anomaly.decider.runner import run as run_decider

    options.serve_metrics("detect", args)
    stream = detect_config(args)
    if args.member:  # members share the checkpoint directory (the partitions' states), not their alert episodes
        alerts = stream.sinks.alert_state.with_name(f"alert-episodes-{args.member}.json")
        stream = dataclasses.replace(stream, sinks=dataclasses.replace(stream.sinks, alert_state=alerts))
    return run_decider(DecideConfig(stream, args.group_id, args.member, args.max_poll_records, args.checkpoint_every,
                                    enabled(args.market_topic)))
