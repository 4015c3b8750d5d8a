"""The Valkey cluster harness (tests/support/valkey_cluster.py) against redis-py's
asyncio cluster client: keys and shard channels go to the primary owning their slot,
and a killed primary's replica takes over while the same client keeps working."""

from __future__ import annotations

import asyncio
import string
import time

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from tests.support.valkey_cluster import HOST, ValkeyCluster


async def test_keys_and_shard_channels_go_to_the_primary_owning_their_slot(valkey_cluster: ValkeyCluster) -> None:
    primaries = {node.port for node in valkey_cluster.nodes if node.role == "primary"}
    # One {hash tag} per primary.
    keys: dict[int, str] = {}
    for tag in string.ascii_lowercase:
        keys.setdefault(valkey_cluster.primary_for(f"{{{tag}}}:harness").port, f"{{{tag}}}:harness")
    assert set(keys) == primaries

    channel = "{lounge-42}:events"
    owner = valkey_cluster.primary_for(channel)

    client = RedisCluster.from_url(valkey_cluster.startup_urls[0])
    raw = {node.port: Redis(host=HOST, port=node.port) for node in valkey_cluster.nodes}
    subscriber = Connection(host=HOST, port=owner.port)  # a raw connection to the channel's primary
    try:
        for port, key in keys.items():
            await client.set(key, str(port))
            assert await raw[port].get(key) == str(port).encode()  # stored on that primary itself

        await subscriber.connect()
        await subscriber.send_command("SSUBSCRIBE", channel)
        assert await subscriber.read_response() == [b"ssubscribe", channel.encode(), 1]
        for connection in raw.values():
            await connection.config_resetstat()

        # redis-py 5.2.1's asyncio RedisCluster has no spublish()/publish() methods (its
        # command mixins leave PubSubCommands out): the raw command is routed by its slot.
        assert await client.execute_command("SPUBLISH", channel, "hello") == 1
        message = await asyncio.wait_for(subscriber.read_response(), timeout=5)
        assert message == [b"smessage", channel.encode(), b"hello"]

        # Routed by slot: the owner ran SPUBLISH once, no other node was asked (a
        # misrouted one would count a rejected call there and answer MOVED).
        for port, connection in raw.items():
            stats = (await connection.info("commandstats")).get("cmdstat_spublish", {})
            if port == owner.port:
                assert stats.get("calls") == 1 and stats.get("rejected_calls") == 0, stats
            else:
                assert stats == {}, (port, stats)
    finally:
        await subscriber.disconnect()
        for connection in raw.values():
            await connection.aclose()
        await client.aclose()


async def test_a_killed_primarys_replica_takes_over_and_the_node_rejoins_as_a_replica() -> None:
    cluster = ValkeyCluster()  # of its own: the shared fixture is not disturbed
    await asyncio.to_thread(cluster.start)
    client = RedisCluster.from_url(cluster.startup_urls[0])
    try:
        key = "{failover}:counter"
        await client.set(key, "before")
        killed = cluster.primary_for(key)
        replica = next(node for node in cluster.nodes if node.primary_id == killed.node_id)

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, killed)
        promoted = await asyncio.to_thread(cluster.wait_failover, killed)
        failover_seconds = time.monotonic() - killed_at
        assert promoted == replica and promoted.role == "primary"
        assert cluster.primary_for(key) == promoted

        # The same client object, used before the kill, finds the new primary.
        failures = 0
        while True:
            try:
                await client.set(key, "after")
                value = await client.get(key)
                break
            except RedisError:
                failures += 1
                assert time.monotonic() - killed_at < 30, "the cluster client never reached the new primary"
                await asyncio.sleep(0.1)
        assert value == b"after"
        client_seconds = time.monotonic() - killed_at
        print(
            f"\nValkey cluster: started in {cluster.startup_seconds:.2f} s; failover {failover_seconds:.2f} s;"
            f" client working again {client_seconds:.2f} s after the kill ({failures} failed attempts)"
        )

        await asyncio.to_thread(cluster.restart, killed)
        assert killed.role == "replica" and killed.primary_id == promoted.node_id
        async with Redis(host=HOST, port=killed.port) as rejoined:
            role = await rejoined.execute_command("ROLE")
            assert role[0] == b"slave" and role[2] == promoted.port and role[3] == b"connected", role
            await rejoined.execute_command("READONLY")  # reads on this replica connection
            assert await rejoined.get(key) == b"after"  # replicated from the new primary
    finally:
        await client.aclose()
        await asyncio.to_thread(cluster.close)
