"""Ports for the local brokers, controllers and Spark daemons: distinct within a pick and apart from earlier ones."""

from market_anomaly.kafka.broker import free_ports


def test_a_pick_of_many_ports_never_repeats_one_and_leaves_out_the_excluded():
    first = free_ports(40)
    assert len(set(first)) == 40
    second = free_ports(40, exclude=set(first))
    assert len(set(second)) == 40 and not set(second) & set(first)
