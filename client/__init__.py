"""cms load client: open-loop or fixed-concurrency HTTP/1.1 load against the guest replicas.

The entry point is client.loadgen (console script ``cms-loadgen``); the engine in
client.engine can also be driven as a library (see client.loadgen.run).
"""
